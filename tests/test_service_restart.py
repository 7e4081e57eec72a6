"""kill -9 of a real `streamvid serve` process during ingest, then a restart: the file stream
resumes after its last stored segment and ends with exactly the clean run's segments (none
twice), the live stream comes back from now with its timeline and numbering continued."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx
from agent_helpers import color_video
from fastapi.testclient import TestClient
from service_helpers import AUTH, KEY, load_llm, make_service, wait_for
from test_ingest_live import free_port, start_server

from agents.service.app import create_app
from bench.random_models import tiny_llava
from memory import TokenMemory

ROOT = Path(__file__).resolve().parents[1]

# a loopback camera that takes a new viewer after the last one went away (a killed service)
CAMERA = r"""
import sys, time
import av
sys.path.insert(0, {tests!r})
from media import scene_frame
port, fps, i = int(sys.argv[1]), 20, 0
print("listening", flush=True)
while True:
    try:
        with av.open(f"tcp://127.0.0.1:{{port}}?listen=1", "w", format="mpegts") as out:
            stream = out.add_stream("mpeg4", rate=fps)
            stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
            start, first = time.monotonic(), i
            while True:
                frame = av.VideoFrame.from_ndarray(scene_frame((i // 30) % 5, i / fps), format="rgb24")
                frame.pts = i - first
                out.mux(stream.encode(frame))
                i += 1
                time.sleep(max(0.0, start + (i - first) / fps - time.monotonic()))
    except av.error.FFmpegError:
        continue
"""


def camera_script(tmp: Path) -> Path:
    path = tmp / "camera.py"
    path.write_text(CAMERA.format(tests=str(Path(__file__).resolve().parent)))
    return path


def timeline(memory_dir, stream):
    with TokenMemory(memory_dir, read_only=True) as reader:
        return [(s.segment_index, s.start, s.end, s.frame_count) for s in reader.timeline(stream)]


def serve(memory, model, media, port, log):
    cmd = [sys.executable, "-m", "cli", "serve", "--memory", str(memory), "--model", str(model)]
    cmd += ["--embedder", "none", "--fps", "2", "--device", "cpu", "--port", str(port), "--media-root", str(media)]
    env = {**os.environ, "STREAMVID_API_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def get(url, path):
    try:
        return httpx.get(url + path, headers=AUTH, timeout=5).json()
    except httpx.HTTPError:
        return None


def test_kill_9_during_ingest_then_restart(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    color_video(media / "long.mp4", [("red", 10.0), ("green", 10.0), ("blue", 10.0), ("red", 10.0)])
    model = tiny_llava(tmp_path / "llava")
    # the clean run's segments, in process, same sampling and cut rule
    clean = make_service(load_llm(tmp_path / "llava2"), tmp_path / "clean", media, max_len=4)
    with TestClient(create_app(clean)) as c:
        c.post("/v1/streams", json={"id": "cam", "source": "long.mp4"}, headers=AUTH)
        wait_for(lambda: c.get("/v1/streams/cam", headers=AUTH).json()["state"] == "done", what="clean run")
    clean.memory.close()
    expected = timeline(tmp_path / "clean", "cam")
    camera_port, port = free_port(), free_port()
    camera = start_server(camera_script(tmp_path), camera_port)
    url = f"http://127.0.0.1:{port}"
    mem = tmp_path / "mem"
    log = open(tmp_path / "serve.log", "w")
    proc = serve(mem, model, media, port, log)
    try:
        wait_for(lambda: get(url, "/healthz"), 60, 0.2, "the service to start")
        file_stream = {"id": "cam", "source": "long.mp4", "options": {"pace": 4, "max_len": 4}}
        assert httpx.post(url + "/v1/streams", json=file_stream, headers=AUTH).status_code == 201
        live = {"id": "door", "source": f"tcp://127.0.0.1:{camera_port}", "options": {"max_len": 4}}
        assert httpx.post(url + "/v1/streams", json=live, headers=AUTH).status_code == 201

        def stored():
            segs = get(url, "/v1/segments")
            if segs is None:
                return None
            by = [s["stream"] for s in segs["segments"]]
            return by.count("cam") >= 3 and by.count("door") >= 2

        wait_for(stored, 60, 0.1, "segments of both streams")
        proc.send_signal(signal.SIGKILL)  # kill -9 mid-ingest
        assert proc.wait(30) == -signal.SIGKILL
        before_cam, before_door = timeline(mem, "cam"), timeline(mem, "door")
        assert 3 <= len(before_cam) < len(expected) and before_cam == expected[: len(before_cam)]
        proc = serve(mem, model, media, port, log)  # the same command again
        wait_for(lambda: get(url, "/healthz"), 60, 0.2, "the restarted service")
        done = wait_for(
            lambda: (s := get(url, "/v1/streams/cam")) and s["state"] in ("done", "error") and s, 60, 0.2, "resume"
        )
        assert done["state"] == "done" and done["resumed_from"] == before_cam[-1][2], done
        wait_for(lambda: len(timeline(mem, "door")) >= len(before_door) + 2, 60, 0.2, "new live segments")
        door = get(url, "/v1/streams/door")
        assert door["state"] == "running" and door["time_offset"] > before_door[-1][2]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        camera.kill()
        camera.wait(10)
        log.close()
    assert timeline(mem, "cam") == expected, (tmp_path / "serve.log").read_text()[-3000:]  # none twice
    after = timeline(mem, "door")
    assert after[: len(before_door)] == before_door
    assert [r[0] for r in after] == list(range(len(after)))  # numbering continued
    assert all(a[2] < b[1] for a, b in zip(after, after[1:]))  # the timeline went on from "now"
