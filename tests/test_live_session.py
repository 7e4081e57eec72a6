"""A live session on loopback streams: questions answered while ingest runs; clean stop."""

import threading

import pytest
import torch
from media import server_script
from test_ingest_live import free_port, start_server

from agents import LiveSession
from bench.random_models import tiny_llava
from memory import TokenMemory
from streamvid import create_compressor
from streamvid.embedders import NoEmbedder
from streamvid.ingest import NetworkSource
from streamvid.models import load_adapter


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return load_adapter(str(tiny_llava(tmp_path_factory.mktemp("llava"))), device="cpu", dtype=torch.float32)


def test_two_cameras_questions_while_ingesting(llm, tmp_path):
    script = server_script(tmp_path)
    ports = [free_port(), free_port()]
    servers = [start_server(script, p) for p in ports]
    stored: dict[str, int] = {"cam1": 0, "cam2": 0}
    ready = threading.Event()

    def on_segment(stream, _sid):
        stored[stream] += 1
        if min(stored.values()) >= 2:
            ready.set()

    memory = TokenMemory(tmp_path / "mem", cap_tokens=400)
    sources = {
        f"cam{i + 1}": NetworkSource(f"tcp://127.0.0.1:{p}", open_timeout=2, read_timeout=2)
        for i, p in enumerate(ports)
    }
    session = LiveSession(
        sources,
        llm,
        memory,
        NoEmbedder(),
        create_compressor("infomerge", ratio=0.25),
        fps=4,
        max_len=4,
        max_new_tokens=2,
        on_segment=on_segment,
    )
    try:
        session.start()
        assert ready.wait(60), f"too few segments: {stored}"
        answer = session.ask("What is happening right now?")  # ingest keeps running meanwhile
        assert {u.stream for u in answer.segments} == {"cam1", "cam2"}  # newest of each stream
        status = session.status()
        assert all(s.running for s in status.streams) and status.tokens_held <= 400
        assert {s.stream for s in status.streams} == {"cam1", "cam2"}
    finally:
        final = session.stop(timeout=30)
        for server in servers:
            server.kill()
            server.wait(10)
    assert not any(s.running for s in final.streams)
    assert all(s.segments >= 2 for s in final.streams)
    assert not any(t.name.startswith("streamvid-") and t.is_alive() for t in threading.enumerate())
    memory.close()
