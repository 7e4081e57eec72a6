"""The MCP tools through the SDK's own client: mounted at /mcp behind the API key (streamable
HTTP on a real loopback server) and `streamvid mcp` over stdio in a subprocess."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("mcp")

import anyio
import httpx
from agent_helpers import color_video
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from service_helpers import AUTH, LiveServer, load_llm, make_service, sse_events, wait_for
from test_ingest_live import free_port

from bench.random_models import tiny_llava

ROOT = Path(__file__).resolve().parents[1]
TOOLS = {"ask", "search_moments", "list_streams", "add_stream"}


def payload(result):
    assert not result.is_error, result.content
    return json.loads(result.content[0].text)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return load_llm(tmp_path_factory.mktemp("llava"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    color_video(root / "colors.mp4", [("red", 3.0), ("green", 3.0), ("blue", 3.0)])
    return root


def test_mcp_over_http_behind_the_key(llm, media, tmp_path):
    service = make_service(llm, tmp_path / "mem", media)
    with LiveServer(service, free_port()) as server:
        assert httpx.post(server.url + "/mcp", json={}).status_code == 401  # the same key as /v1

        async def session():
            async with create_mcp_http_client(headers=AUTH) as http:
                async with Client(streamable_http_client(server.url + "/mcp", http_client=http)) as client:
                    names = {t.name for t in (await client.list_tools()).tools}
                    added = payload(await client.call_tool("add_stream", {"id": "cam", "source": "colors.mp4"}))
                    refused = await client.call_tool("add_stream", {"id": "x", "source": "../../etc/passwd"})
                    await anyio.to_thread.run_sync(
                        lambda: wait_for(
                            lambda: service.streams.status("cam")[0]["state"] == "done", what="the stream to finish"
                        )
                    )
                    streams = payload(await client.call_tool("list_streams", {}))
                    moments = payload(await client.call_tool("search_moments", {"query": "red", "k": 2}))
                    answer = payload(await client.call_tool("ask", {"question": "What is red?", "start": 0, "end": 4}))
                    unknown = await client.call_tool("ask", {"question": "hi", "streams": ["nosuch"]})
                    return names, added, refused, streams, moments, answer, unknown

        names, added, refused, streams, moments, answer, unknown = anyio.run(session)
    service.memory.close()
    assert TOOLS <= names
    assert added["id"] == "cam" and added["kind"] == "file"
    assert refused.is_error and "'..' is not allowed" in refused.content[0].text
    assert [s["id"] for s in streams["streams"]] == ["cam"] and streams["streams"][0]["segments"] >= 3
    assert len(moments["moments"]) == 2 and all(m["stream"] == "cam" for m in moments["moments"])
    assert answer["segments"] and all(u["end"] >= 0 and u["start"] <= 4 for u in answer["segments"])
    assert unknown.is_error and "no stream 'nosuch'" in unknown.content[0].text


def test_events_stream_segment_and_status_events_over_sse(llm, media, tmp_path):
    service = make_service(llm, tmp_path / "mem", media)
    seen: list[tuple[str, dict]] = []
    connected = threading.Event()
    with LiveServer(service, free_port()) as server:

        def read() -> None:
            with httpx.stream("GET", server.url + "/v1/events", headers=AUTH, timeout=60) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                connected.set()
                for kind, data in sse_events(r.iter_lines()):
                    seen.append((kind, data))
                    if kind == "status" and data.get("state") == "done":
                        return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert connected.wait(30)
        r = httpx.post(server.url + "/v1/streams", json={"id": "cam", "source": "colors.mp4"}, headers=AUTH)
        assert r.status_code == 201
        reader.join(60)
        stored = httpx.get(server.url + "/v1/segments", headers=AUTH).json()["segments"]
    service.memory.close()
    kinds = [k for k, _ in seen]
    assert kinds[0] == "status" and seen[0][1]["state"] == "running" and kinds[-1] == "status"
    segs = [d for k, d in seen if k == "segment"]
    assert [d["id"] for d in segs] == [s["id"] for s in stored]  # every stored segment, in order, once
    assert all(d["stream"] == "cam" and d["thumbnail"].endswith(".jpg") for d in segs)


def test_streamvid_mcp_over_stdio(media, tmp_path):
    model = tiny_llava(tmp_path / "llava")
    args = ["-m", "cli", "mcp", "--memory", str(tmp_path / "mem"), "--model", str(model), "--embedder", "none"]
    args += ["--fps", "2", "--device", "cpu", "--media-root", str(media)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    params = StdioServerParameters(command=sys.executable, args=args, env=env, cwd=str(ROOT))

    async def session():
        async with Client(params, read_timeout_seconds=120) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            added = payload(await client.call_tool("add_stream", {"id": "cam", "source": "colors.mp4"}))
            listed = payload(await client.call_tool("list_streams", {}))
            return names, added, listed

    names, added, listed = anyio.run(session)
    assert TOOLS <= names
    assert added["id"] == "cam" and [s["id"] for s in listed["streams"]] == ["cam"]
