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

from bench.metrics import attention_fidelity, coverage
from bench.parts import Part
from bench.report import table
from streamvid.compress import create_compressor, list_compressors
from streamvid.ingest import read_frames
from streamvid.types import TokenGrid

__all__ = ["clip_frames", "feature_grid", "run_fidelity", "SHARPNESS"]

SHARPNESS = (1.0, 4.0, 16.0)


def clip_frames(path: Path, frames: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``frames`` frames spread evenly over the whole video (timestamps from pts), 224 x 224 RGB."""
    return read_frames(path, frames, size=(224, 224))


def feature_grid(model: Any, frames: np.ndarray, times: np.ndarray, batch: int = 8) -> tuple[TokenGrid, torch.Tensor]:
    """Stage-5 grid [T, 14, 14, 112] and head embeddings [T, 1280] (mean-pooled, unit norm)."""
    from bench.efficientnet import preprocess

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
    from bench.efficientnet import load_pretrained

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


def run(profile: Any, progress: Any = None) -> dict[str, Any]:
    from bench.media import benchmark_videos

    return run_fidelity(benchmark_videos(), profile.fidelity_ratios, profile.fidelity_frames, progress)


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    """fidelity.png: fidelity and coverage vs retention, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (
        ("fidelity_s4", "attention fidelity (sharpness 4)"),
        ("fidelity_bias_s4", "... with size bias"),
        ("coverage_p5", "coverage, 5th percentile"),
    )
    for ax, (key, title) in zip(axes, panels):
        for method in sorted({r["method"] for r in rows}):
            pts = sorted((r["ratio"], r[key]) for r in rows if r["method"] == method)
            ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xlabel("retention (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "fidelity.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def markdown(result: dict[str, Any], images: str) -> str:
    f = result
    parts = [
        "## Fidelity on real video features",
        "",
        "Clips: "
        + ", ".join(f"{k} {v}" for k, v in f["clips"].items())
        + " (EfficientNet-Lite0 stage-5 grids, 32 frames each). Mean over the clips.",
        "",
    ]
    for ratio in sorted({r["ratio"] for r in f["rows"]}, reverse=True):
        rows = [r for r in f["rows"] if r["ratio"] == ratio]
        parts += [
            f"**{ratio:.0%} retention**",
            "",
            table(
                ["method", "tokens", "fidelity s1", "s4", "s16", "with size bias s4", "coverage mean", "coverage p5"],
                [
                    [
                        r["method"],
                        int(r["tokens"]),
                        f"{r['fidelity_s1']:.4f}",
                        f"{r['fidelity_s4']:.4f}",
                        f"{r['fidelity_s16']:.4f}",
                        f"{r['fidelity_bias_s4']:.4f}",
                        f"{r['coverage_mean']:.4f}",
                        f"{r['coverage_p5']:.4f}",
                    ]
                    for r in rows
                ],
            ),
            "",
        ]
    parts += [f"![fidelity]({images}/fidelity.png)", ""]
    return "\n".join(parts)


PART = Part("fidelity", run, markdown, plot, needs_video=True)
