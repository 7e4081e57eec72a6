"""Tiny videos written with PyAV for the ingest tests."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def scene_frame(scene: int, t: float, width: int = 128, height: int = 96) -> np.ndarray:
    """A blocky texture per scene with a small square drifting across it."""
    rng = np.random.default_rng(1000 + scene)
    blocks = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    img = np.kron(blocks, np.ones((16, 16, 1), dtype=np.uint8))
    x = int(t * 8) % (width - 8)
    img[40:48, x : x + 8] = 255
    return img


def write_video(
    path: Path,
    times: list[float],
    frame_at,
    *,
    container_options=None,
    time_base: Fraction = Fraction(1, 1000),
    size=(128, 96),
) -> Path:
    """Encode frames at the given timestamps (exact pts, so variable rates work)."""
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.codec_context.time_base = time_base
        stream.bit_rate = 2_000_000
        for t in times:
            frame = av.VideoFrame.from_ndarray(frame_at(t), format="rgb24")
            frame.pts = round(t / time_base)
            frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def cuts_video(path: Path, cuts=(2.0, 5.0, 6.5), duration=8.0, fps=10) -> Path:
    times = [i / fps for i in range(round(duration * fps))]
    return write_video(path, times, lambda t: scene_frame(sum(t >= c for c in cuts), t))


def corrupt_copy(src: Path, dst: Path, *, truncate: bool) -> Path:
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    if truncate:
        data = data[:mid]
    else:
        data[mid : mid + 20000] = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("pcm_s16le", rate=8000)
        samples = np.zeros((1, 800), dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        out.mux(stream.encode(None))
    return path


SERVER = r"""
import sys, time
import av, numpy as np
sys.path.insert(0, {tests!r})
from media import scene_frame
port, fps = int(sys.argv[1]), 20
print("listening", flush=True)
with av.open(f"tcp://127.0.0.1:{{port}}?listen=1", "w", format="mpegts") as out:
    stream = out.add_stream("mpeg4", rate=fps)
    stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
    start = time.monotonic()
    for i in range(fps * 120):
        t = i / fps
        frame = av.VideoFrame.from_ndarray(scene_frame((i // 30) % 5, t), format="rgb24")
        frame.pts = i
        out.mux(stream.encode(frame))
        time.sleep(max(0.0, start + t - time.monotonic()))  # real-time pacing of a live feed
"""


def server_script(tmp: Path) -> Path:
    path = tmp / "mpegts_server.py"
    path.write_text(SERVER.format(tests=os.path.dirname(os.path.abspath(__file__))))
    return path


RTSP_PUBLISHER = r"""
import sys, time
import av
sys.path.insert(0, {tests!r})
from media import scene_frame
fps = 20
with av.open(sys.argv[1], "w", format="rtsp", options={{"rtsp_transport": "udp"}}) as out:
    stream = out.add_stream("mpeg4", rate=fps)
    stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
    start = time.monotonic()
    for i in range(fps * 120):
        frame = av.VideoFrame.from_ndarray(scene_frame((i // 30) % 5, i / fps), format="rgb24")
        frame.pts = i
        out.mux(stream.encode(frame))
        time.sleep(max(0.0, start + i / fps - time.monotonic()))  # real-time pacing of a live feed
"""


def rtsp_publisher_script(tmp: Path) -> Path:
    path = tmp / "rtsp_publisher.py"
    path.write_text(RTSP_PUBLISHER.format(tests=os.path.dirname(os.path.abspath(__file__))))
    return path
