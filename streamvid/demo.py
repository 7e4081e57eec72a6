"""The compression demo: a clip (synthetic, or your own video) through every compressor.

Tokens here are pixel patches (a 14 x 14 grid of 16 x 16 RGB patches per frame),
so the demo needs no model weights; with a Video-LLM the same compressors take the
model's visual tokens instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamvid.compress import create_compressor, list_compressors
from streamvid.errors import EmptyInputError, StreamvidError
from streamvid.eval.metrics import attention_fidelity
from streamvid.types import TokenGrid

__all__ = ["DemoRow", "synthetic_frames", "read_frames", "patch_tokens", "run_demo", "write_sample_video"]

GRID = 14
PATCH = 16


@dataclass(frozen=True)
class DemoRow:
    method: str
    tokens: int
    segments: int
    milliseconds: float
    fidelity: float
    fidelity_size_bias: float


def synthetic_frames(num_frames: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Four scenes of textured noise with a bright square crossing each one.

    Returns frames uint8 [T, 224, 224, 3] and timestamps float64 [T] (2 fps).
    """
    rng = np.random.default_rng(seed)
    size = GRID * PATCH
    scenes = [rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8) for _ in range(4)]
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        scene = scenes[(4 * t) // num_frames]
        frame = np.kron(scene, np.ones((8, 8, 1), dtype=np.uint8))
        x = (t * 11) % (size - 40)
        frame[90:130, x : x + 40] = (255, 240, 0)
        frames[t] = frame
    return frames, np.arange(num_frames, dtype=np.float64) * 0.5


def read_frames(path: Path, num_frames: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``num_frames`` frames spread evenly over a video file (PyAV), timestamps from pts."""
    import av

    try:
        container = av.open(str(path))
    except (FileNotFoundError, av.error.FFmpegError) as err:
        raise StreamvidError(f"cannot open {path}: {err}; pass a readable video file") from None
    with container:
        if not container.streams.video:
            raise StreamvidError(f"{path} has no video stream; pass a video file")
        decoded = [
            (float(f.pts * f.time_base), f.to_ndarray(format="rgb24", width=GRID * PATCH, height=GRID * PATCH))
            for f in container.decode(video=0)
            if f.pts is not None
        ]
    if not decoded:
        raise EmptyInputError(f"no frames could be decoded from {path}")
    pick = np.linspace(0, len(decoded) - 1, min(num_frames, len(decoded))).round().astype(int)
    times = np.array([decoded[i][0] for i in pick])
    return np.stack([decoded[i][1] for i in pick]), times


def patch_tokens(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, 224, 224, 3] -> fp32 [T, 14, 14, 768] centred patch vectors."""
    x = torch.from_numpy(frames).float() / 255.0 - 0.5  # (T, H, W, 3)
    t = x.shape[0]
    x = x.reshape(t, GRID, PATCH, GRID, PATCH, 3).permute(0, 1, 3, 2, 4, 5)  # (T, gh, gw, p, p, 3)
    return x.reshape(t, GRID, GRID, PATCH * PATCH * 3)


def run_demo(ratio: float = 0.15, video: Path | None = None) -> tuple[TokenGrid, list[DemoRow]]:
    frames, times = synthetic_frames() if video is None else read_frames(video)
    grid = TokenGrid(patch_tokens(frames), torch.from_numpy(times))
    full = grid.tokens.reshape(-1, grid.dim)
    rows = []
    for name in list_compressors():
        compressor = create_compressor(name, ratio=ratio)
        start = time.perf_counter()
        segments = compressor.compress(grid)
        elapsed = (time.perf_counter() - start) * 1e3
        tokens = torch.cat([s.tokens for s in segments])
        sizes = torch.cat([s.sizes for s in segments])
        rows.append(
            DemoRow(
                method=name,
                tokens=tokens.shape[0],
                segments=len(segments),
                milliseconds=elapsed,
                fidelity=attention_fidelity(full, tokens, sharpness=4.0),
                fidelity_size_bias=attention_fidelity(full, tokens, sizes, sharpness=4.0, size_bias=True),
            )
        )
    return grid, rows


SAMPLE_SCENES = [  # (background RGB, square RGB, caption)
    ((30, 90, 200), (250, 220, 0), "a yellow square on a blue background"),
    ((20, 140, 40), (230, 30, 30), "a red square on a green background"),
    ((240, 240, 240), (10, 10, 10), "a black square on a white background"),
    ((120, 30, 120), (255, 140, 0), "an orange square on a purple background"),
]


def write_sample_video(
    path: Path, seconds_per_scene: float = 6.0, fps: int = 8, size: tuple[int, int] = (320, 240)
) -> list[tuple[float, float, str]]:
    """A short video of four scenes, each a coloured square moving across a plain background.

    Returns (start, end, caption) per scene, so answers can be checked by eye.
    """
    import av

    width, height = size
    scenes = []
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 1_500_000
        frame_index = 0
        for background, square, caption in SAMPLE_SCENES:
            start = frame_index / fps
            for i in range(round(seconds_per_scene * fps)):
                img = np.empty((height, width, 3), dtype=np.uint8)
                img[:] = background
                x = int((width - 60) * i / max(1, seconds_per_scene * fps - 1))
                img[height // 2 - 30 : height // 2 + 30, x : x + 60] = square
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = frame_index
                out.mux(stream.encode(frame))
                frame_index += 1
            scenes.append((start, frame_index / fps, caption))
        out.mux(stream.encode(None))
    return scenes
