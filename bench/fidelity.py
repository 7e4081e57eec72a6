"""Fidelity of every compressor on real video features: attention outputs and coverage.

Clips: real videos (vtest.avi, bikes.mp4, bigbuckbunny.mp4), 2 x 32 frames spread
over each through EfficientNet-Lite0 to 14 x 14 x 112 grids: the even frames are the
clip that is compressed, the odd ones (each between two clip frames) are held out and
give the attention queries, so no query can be a token a compressor kept.

Every registered compressor at every ratio, side by side (seeded ones with several
seeds: mean and range). Attention-output fidelity (see bench/metrics.py): queries and
keys RMS-normalised, the temperature solved on the full tokens for 1 (hard max), 100
and 5000 effective keys; compressed tokens as values with no size bias, and with the
size bias at 100 keys. Coverage by one rule for all methods (nearest kept token of the
same segment) with the provenance rule beside it.
"""

from __future__ import annotations

import statistics
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.metrics import attention_fidelity, inverse_temperature, rms_normalise, sample_queries, segment_coverage
from bench.parts import Part
from bench.report import machine, method_runs, plot_mean_range, seeded_compressor, table
from streamvid.ingest import read_frames
from streamvid.types import TokenGrid

__all__ = ["clip_frames", "feature_grid", "fidelity_rows", "run_fidelity", "TARGET_KEYS"]

TARGET_KEYS = (1.0, 100.0, 5000.0)  # effective number of attended keys; 1 is the hard max


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


def temperatures(grid: TokenGrid, queries: torch.Tensor) -> dict[float, float]:
    """Inverse temperature per target number of keys, solved once on the full tokens of a clip."""
    q, keys = rms_normalise(queries), rms_normalise(grid.tokens.reshape(-1, grid.dim))
    return {target: inverse_temperature(q, keys, target) for target in TARGET_KEYS}


def fidelity_rows(
    grid: TokenGrid, queries: torch.Tensor, segments: list, temps: dict[float, float] | None = None
) -> dict[str, float]:
    """Fidelity and coverage of one compression. grid: [T, h, w, D]; queries: [q, D] (raw, not normalised)."""
    full = grid.tokens.reshape(-1, grid.dim).float()
    kept = torch.cat([s.tokens.float() for s in segments])
    sizes = torch.cat([s.sizes for s in segments])
    temps = temps if temps is not None else temperatures(grid, queries)
    row: dict[str, float] = {"tokens": float(kept.shape[0])}
    for target in TARGET_KEYS:
        b = temps[target]
        row[f"fidelity_k{target:g}"] = attention_fidelity(full, kept, queries=queries, inv_temperature=b)
        if target == 100.0:
            row["fidelity_bias_k100"] = attention_fidelity(
                full, kept, sizes, queries=queries, inv_temperature=b, size_bias=True
            )
    cov = segment_coverage(grid.tokens, segments)
    row.update({f"coverage_{k}": v for k, v in cov.items()})
    return row


def _stat(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values)}


def run_fidelity(
    videos: dict[str, Path],
    ratios: tuple[float, ...] = (0.25, 0.15, 0.10, 0.05),
    frames: int = 32,
    seeds: int = 3,
    progress: Any = None,
) -> dict[str, Any]:
    from bench.efficientnet import load_pretrained

    say = progress.log if progress is not None else (lambda *_: None)
    model = load_pretrained()
    clips, queries, temps = {}, {}, {}
    for name, path in videos.items():
        f, t = clip_frames(path, 2 * frames)
        grid = feature_grid(model, f[0::2], t[0::2])[0]  # the clip: even frames
        held = feature_grid(model, f[1::2], t[1::2])[0]  # held out: the frames in between
        clips[name] = grid
        queries[name] = sample_queries(held.tokens.reshape(-1, held.dim))
        temps[name] = temperatures(grid, queries[name])
        say(f"features of {name}: {tuple(grid.tokens.shape)}, {queries[name].shape[0]} held-out queries")
    rows = []
    for ratio, plan in groupby(method_runs(ratios, seeds), key=lambda run: run[0]):
        for _, method, r, seed_list in plan:
            per_clip: dict[str, list[dict[str, float]]] = {}
            for clip, grid in clips.items():
                per_clip[clip] = []
                for seed in seed_list:
                    comp = seeded_compressor(method, r, seed)
                    per_clip[clip].append(fidelity_rows(grid, queries[clip], comp.compress(grid), temps[clip]))
            keys = next(iter(per_clip.values()))[0].keys()
            # mean over clips for each seed, then mean and range over the seeds
            summary = {
                k: _stat([statistics.mean(v[i][k] for v in per_clip.values()) for i in range(len(seed_list))])
                for k in keys
            }
            rows.append({"method": method, "ratio": r, "seeds": seed_list, **summary, "per_clip": per_clip})
        say(f"fidelity at {ratio:.0%}: done")
    return {
        "clips": {k: list(v.tokens.shape) for k, v in clips.items()},
        "target_keys": list(TARGET_KEYS),
        "inverse_temperatures": {
            k: {f"{t:g}": (b if b != float("inf") else "inf (hard max)") for t, b in v.items()}
            for k, v in temps.items()
        },
        "ratios": list(ratios),
        "seeds": seeds,
        "machine": machine(),
        "rows": rows,
    }


def run(profile: Any, progress: Any = None) -> dict[str, Any]:
    from bench.media import benchmark_videos

    return run_fidelity(
        benchmark_videos(), profile.fidelity_ratios, profile.fidelity_frames, profile.fidelity_seeds, progress
    )


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    """fidelity.png: fidelity (100 keys), hard-max fidelity and coverage p5 vs retention, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["method"] != "keep_all"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (
        ("fidelity_k100", "attention fidelity, 100 effective keys"),
        ("fidelity_k1", "attention fidelity, hard max (1 key)"),
        ("coverage_nearest_p5", "coverage (nearest in segment), 5th percentile"),
    )
    for ax, (key, title) in zip(axes, panels):
        for method in sorted({r["method"] for r in rows}):
            pts = sorted((r["ratio"], r[key]) for r in rows if r["method"] == method)
            plot_mean_range(ax, pts, method)
        ax.set_xlabel("retention (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "fidelity.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def _fmt(stat: dict[str, float]) -> str:
    text = f"{stat['mean']:.4f}"
    if stat["max"] > stat["min"]:
        text += f" [{stat['min']:.4f}-{stat['max']:.4f}]"
    return text


def markdown(result: dict[str, Any], images: str) -> str:
    f = result
    m = f.get("machine", {})
    parts = [
        "## Attention-output fidelity and coverage (secondary)",
        "",
        "Clips: "
        + ", ".join(f"{k} {v}" for k, v in f["clips"].items())
        + " (EfficientNet-Lite0 stage-5 grids at 224 px). Queries: 256 tokens of held-out frames (between the "
        "clip's frames) plus the clip mean. Mean over the clips; seeded methods over "
        f"{f['seeds']} seeds, mean [min-max]. Machine: {m.get('processor', '?')}, {m.get('cpus', '?')} CPUs, "
        f"torch {m.get('torch', '?')}, GPU: {m.get('cuda') or 'none'}.",
        "",
        "How to read this: *fidelity kN* is the mean cosine between attention outputs over all tokens and over "
        "the kept ones, with queries and keys RMS-normalised and the temperature set so that a query attends to "
        "about N tokens of the full clip (k1: the single best key). Kept tokens enter as they are; *+bias* adds "
        "log(size) to their logits. *Coverage nearest* scores every original token by its most similar kept token "
        "of the same segment (one rule for every method); *provenance* by the kept token it was merged into "
        "(identical for pruning methods). p5 is the 5th percentile: rare content shows there first.",
        "",
    ]
    keep = [r for r in f["rows"] if r["method"] == "keep_all"]
    for ratio in f["ratios"]:
        rows = [r for r in f["rows"] if r["ratio"] == ratio] + keep
        parts += [
            f"**{ratio:.0%} retention**",
            "",
            table(
                [
                    "method",
                    "tokens",
                    "fidelity k1",
                    "k100",
                    "k5000",
                    "k100 +bias",
                    "coverage nearest mean",
                    "p5",
                    "provenance mean",
                    "p5",
                ],
                [
                    [
                        r["method"],
                        int(r["tokens"]["mean"]),
                        _fmt(r["fidelity_k1"]),
                        _fmt(r["fidelity_k100"]),
                        _fmt(r["fidelity_k5000"]),
                        _fmt(r["fidelity_bias_k100"]),
                        _fmt(r["coverage_nearest_mean"]),
                        _fmt(r["coverage_nearest_p5"]),
                        _fmt(r["coverage_provenance_mean"]),
                        _fmt(r["coverage_provenance_p5"]),
                    ]
                    for r in rows
                ],
            ),
            "",
        ]
    parts += [
        "These are feature-space proxies: they say how well the kept tokens reproduce what generic attention "
        "over all tokens returns, not how a Video-LLM answers.",
        "",
        f"![fidelity]({images}/fidelity.png)",
        "",
    ]
    return "\n".join(parts)


PART = Part("fidelity", run, markdown, plot, needs_video=True)
