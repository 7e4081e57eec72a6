"""Fidelity of every compressor on real video features (evaluation spec, section 2).

Clips: real videos (vtest.avi, bikes.mp4, bigbuckbunny.mp4), 32 frames spread over
each, through EfficientNet-Lite0 to 14 x 14 x 112 grids. Every registered
compressor at every ratio, side by side: attention-output fidelity with and without
the size bias at several sharpness values, and coverage (mean, 5th percentile)
through exact provenance.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamvid.compress import create_compressor, list_compressors
from streamvid.eval.metrics import attention_fidelity, coverage
from streamvid.ingest import FileSource
from streamvid.types import TokenGrid

__all__ = ["clip_frames", "feature_grid", "run_fidelity", "SHARPNESS"]

SHARPNESS = (1.0, 4.0, 16.0)


def clip_frames(path: Path, frames: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``frames`` frames spread evenly over the whole video (timestamps from pts), 224 x 224 RGB."""
    decoded = list(FileSource(path).frames())
    pick = np.linspace(0, len(decoded) - 1, min(frames, len(decoded))).round().astype(int)
    return (np.stack([decoded[i].rgb(224, 224) for i in pick]), np.array([decoded[i].time for i in pick]))


def feature_grid(model: Any, frames: np.ndarray, times: np.ndarray, batch: int = 8) -> tuple[TokenGrid, torch.Tensor]:
    """Stage-5 grid [T, 14, 14, 112] and head embeddings [T, 1280] (mean-pooled, unit norm)."""
    from streamvid.eval.efficientnet import preprocess

    grids, heads = [], []
    with torch.inference_mode():
        for i in range(0, len(frames), batch):
            s5, head = model.features(preprocess(torch.from_numpy(frames[i : i + batch])))
            grids.append(s5)
            heads.append(torch.nn.functional.normalize(head.mean(dim=(1, 2)), dim=-1))
    return TokenGrid(torch.cat(grids), torch.from_numpy(times).double()), torch.cat(heads)


def _metrics(grid: TokenGrid, name: str, ratio: float) -> dict[str, float]:
    segments = create_compressor(name, ratio=ratio).compress(grid)
    full = grid.tokens.reshape(-1, grid.dim)
    kept = torch.cat([s.tokens.float() for s in segments])
    sizes = torch.cat([s.sizes for s in segments])
    # owners are per segment; shift them into the clip's token and kept-token numbering
    owners, offset = [], 0
    for s in segments:
        owners.append(s.owner + offset)
        offset += s.budget
    owner = torch.cat(owners)
    cov_mean, cov_p5 = coverage(full, kept, owner)
    row = {"tokens": float(kept.shape[0]), "coverage_mean": cov_mean, "coverage_p5": cov_p5}
    for sharp in SHARPNESS:
        row[f"fidelity_s{sharp:g}"] = attention_fidelity(full, kept, sharpness=sharp)
        row[f"fidelity_bias_s{sharp:g}"] = attention_fidelity(full, kept, sizes, sharpness=sharp, size_bias=True)
    return row


def run_fidelity(
    videos: dict[str, Path], ratios: tuple[float, ...] = (0.15, 0.10, 0.05), frames: int = 32, progress: Any = None
) -> dict[str, Any]:
    from streamvid.eval.efficientnet import load_pretrained

    say = progress.log if progress is not None else (lambda *_: None)
    model = load_pretrained()
    clips = {}
    for name, path in videos.items():
        f, t = clip_frames(path, frames)
        clips[name] = feature_grid(model, f, t)[0]
        say(f"features of {name}: {tuple(clips[name].tokens.shape)}")
    rows = []
    for ratio in ratios:
        for method in list_compressors():
            if method == "keep_all":
                continue
            per_clip = {clip: _metrics(grid, method, ratio) for clip, grid in clips.items()}
            keys = next(iter(per_clip.values())).keys()
            mean = {k: statistics.mean(v[k] for v in per_clip.values()) for k in keys}
            rows.append({"method": method, "ratio": ratio, **mean, "per_clip": per_clip})
        say(f"fidelity at {ratio:.0%}: done")
    return {"clips": {k: list(v.tokens.shape) for k, v in clips.items()}, "sharpness": list(SHARPNESS), "rows": rows}
