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

from bench.metrics import attention_fidelity
from streamvid.compress import create_compressor, list_compressors
from streamvid.errors import SourceError
from streamvid.ingest import read_frames
from streamvid.types import TokenGrid

__all__ = ["DemoRow", "clip_of", "patch_tokens", "run_demo", "synthetic_frames"]

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


def clip_of(path: Path, num_frames: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``num_frames`` frames spread evenly over a video file, 224 x 224, timestamps from pts."""
    try:
        return read_frames(path, num_frames, size=(GRID * PATCH, GRID * PATCH))
    except SourceError as err:
        raise SourceError(f"cannot open {path} for the demo: {err}") from None


def patch_tokens(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, 224, 224, 3] -> fp32 [T, 14, 14, 768] centred patch vectors."""
    x = torch.from_numpy(frames).float() / 255.0 - 0.5  # (T, H, W, 3)
    t = x.shape[0]
    x = x.reshape(t, GRID, PATCH, GRID, PATCH, 3).permute(0, 1, 3, 2, 4, 5)  # (T, gh, gw, p, p, 3)
    return x.reshape(t, GRID, GRID, PATCH * PATCH * 3)


def run_demo(ratio: float = 0.15, video: Path | None = None) -> tuple[TokenGrid, list[DemoRow]]:
    frames, times = synthetic_frames() if video is None else clip_of(video)
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
