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


def noise_frame(t: float, width: int = 128, height: int = 96) -> np.ndarray:
    """Random pixels, seeded by time: every frame costs about the same bytes, and none compresses."""
    return np.random.default_rng(int(round(t * 100))).integers(0, 256, (height, width, 3), dtype=np.uint8)


def overwrite_bytes(src: Path, dst: Path, start: float, end: float, seed: int = 0) -> tuple[int, int]:
    """Copy ``src`` with bytes [start, end) (fractions of its size) replaced by noise; the byte range."""
    data = bytearray(src.read_bytes())
    a, b = int(len(data) * start), int(len(data) * end)
    data[a:b] = np.random.default_rng(seed).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return a, b


def cut_at(src: Path, dst: Path, fraction: float) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes (a truncated download or recording)."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def packets_in(path: Path, start: int, end: int) -> tuple[float, float]:
    """(first, last) time in seconds of the video packets whose bytes overlap [start, end) in ``path``."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        times = [
            float(p.pts * stream.time_base)
            for p in c.demux(stream)
            if p.size and p.pos is not None and p.pos < end and p.pos + p.size > start
        ]
    return min(times), max(times)


# -- a tiny Theora writer: no Theora encoder ships in PyAV's wheels ------------------------------


class _Bits:
    """MSB-first bit writer."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def put(self, value: int, n: int) -> _Bits:
        self.bits.extend((value >> (n - 1 - i)) & 1 for i in range(n))
        return self

    def tag(self, kind: int) -> _Bits:
        self.put(kind, 8)
        for c in b"theora":
            self.put(c, 8)
        return self

    def bytes(self) -> bytes:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


def _theora_headers(width: int, height: int, fps: int, shift: int) -> list[bytes]:
    """The three Theora 3.2.1 headers: identification, comment, setup (flat quantisers, and
    Huffman trees in which every token has the 5-bit code of its number)."""
    ident = _Bits().tag(0x80).put(3, 8).put(2, 8).put(1, 8)
    ident.put(width // 16, 16).put(height // 16, 16).put(width, 24).put(height, 24).put(0, 8).put(0, 8)
    ident.put(fps, 32).put(1, 32).put(1, 24).put(1, 24)  # frame rate, pixel aspect
    ident.put(0, 8).put(0, 24).put(32, 6).put(shift, 5).put(0, 2).put(0, 3)  # 4:2:0
    vendor = b"streamvid tests"
    comment = b"\x81theora" + len(vendor).to_bytes(4, "little") + vendor + (0).to_bytes(4, "little")
    setup = _Bits().tag(0x82).put(0, 3)  # no loop filter limits
    for _ in range(2):  # AC then DC scale tables, 8-bit values
        setup.put(7, 4)
        for _ in range(64):
            setup.put(40, 8)
    setup.put(0, 9)  # one base matrix
    for _ in range(64):
        setup.put(16, 8)
    for index in range(6):  # (inter, plane): base matrix 0 over all 63 quality steps
        if index:
            setup.put(1, 1)
        setup.put(0, 1).put(62, 6).put(0, 1)

    def tree(depth: int, next_token: list[int]) -> None:
        if depth == 5:
            setup.put(1, 1).put(next_token[0], 5)
            next_token[0] += 1
            return
        setup.put(0, 1)
        tree(depth + 1, next_token)
        tree(depth + 1, next_token)

    for _ in range(80):
        tree(0, [0])
    return [ident.bytes(), comment, setup.bytes()]


def _grey_intra_frame() -> bytes:
    """A key frame whose blocks all end at once (one EOB run over the frame): mid grey."""
    frame = _Bits().put(0, 1).put(0, 1).put(0, 6).put(0, 1).put(0, 3)  # data, intra, qi 0, one qi
    return frame.put(0, 8).put(6, 5).put(0, 12).put(0, 8).bytes()  # DC tables, EOB run "to the end", AC tables


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def _ogg_page(packets: list[bytes], granule: int, sequence: int, flags: int) -> bytes:
    lacing = b"".join(b"\xff" * (len(p) // 255) + bytes([len(p) % 255]) for p in packets)
    header = b"OggS" + bytes([0, flags]) + granule.to_bytes(8, "little", signed=True)
    header += (1).to_bytes(4, "little") + sequence.to_bytes(4, "little") + bytes(4) + bytes([len(lacing)])
    page = header + lacing + b"".join(packets)
    return page[:22] + _ogg_crc(page).to_bytes(4, "little") + page[26:]


def write_theora(path: Path, frames: int = 20, empty=(5, 6, 12), fps: int = 10, size=(64, 48)) -> Path:
    """An Ogg/Theora file of grey key frames; the frames in ``empty`` are zero-byte packets,
    which is how libtheora writes a frame its rate control dropped (shown as the previous one)."""
    shift = 6
    ident, comment, setup = _theora_headers(size[0], size[1], fps, shift)
    pages = [_ogg_page([ident], 0, 0, 0x02), _ogg_page([comment, setup], 0, 1, 0)]  # 0x02: first page
    key = 0
    for i in range(frames):
        data = b"" if i in empty else _grey_intra_frame()
        key = key if i in empty else i + 1
        granule = (key << shift) | (i + 1 - key)  # last key frame, frames since; counted from 1
        pages.append(_ogg_page([data], granule, len(pages), 0x04 if i == frames - 1 else 0))  # 0x04: last page
    path.write_bytes(b"".join(pages))
    return path
