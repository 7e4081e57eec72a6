"""Needle-in-frame: small real objects planted into a real video, at known places and times.

Material: 16 s of vtest.avi (a fixed camera over a plaza) at 2 fps, 448 x 448, through
EfficientNet-Lite0 to the head grid [32, 14, 14, 1280]. Three scikit-image photos
(cat, coffee cup, astronaut), cropped to the object and shrunk to 80 x 80 px (3.2% of
the frame), are pasted for 2 s (4 frames) each at a known place and time.

Per method and ratio (seeded methods over several seeds):

- represented: whether some kept token stands for the patch. Provenance: among the
  owners of the original tokens covering the patch (cells at least half inside it),
  one whose representative is a patch token and at least half of whose originals are
  patch tokens; otherwise the patch was dropped or diluted into background;
- the class-query readout there: window top-5 agreement and needle recall (see
  bench/readout.py) over the windows that contain a planted frame.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.parts import Part
from bench.readout import SIZE, WINDOW, agreement, grid_readout, segments_readout
from bench.report import machine, method_runs, seeded_compressor, table
from streamvid.types import CompressedSegment, TokenGrid

__all__ = [
    "Plant",
    "PLANTS",
    "clip_owner",
    "needle_report",
    "plant",
    "planted_mask",
    "representatives",
    "represented",
    "run_planted",
]

PATCH = 80  # px at 448: 3.2% of the frame
CELL = SIZE // 14  # px per head token


@dataclass(frozen=True)
class Plant:
    """A scikit-image photo cropped to ``box`` (top, bottom, left, right), pasted at (top, left) px of
    frames [start, stop)."""

    image: str
    box: tuple[int, int, int, int]
    start: int
    stop: int
    top: int
    left: int


PLANTS = (
    Plant("chelsea", (20, 280, 90, 350), 4, 8, 40, 300),
    Plant("coffee", (20, 330, 90, 480), 14, 18, 250, 60),
    Plant("astronaut", (0, 300, 100, 400), 22, 26, 300, 330),
)


def _patch(p: Plant) -> np.ndarray:
    from skimage import data

    img = getattr(data, p.image)()
    img = img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
    t, b, left, r = p.box
    x = torch.from_numpy(np.ascontiguousarray(img[t:b, left:r])).permute(2, 0, 1)[None].float()  # (1, 3, h, w)
    x = torch.nn.functional.interpolate(x, size=(PATCH, PATCH), mode="bilinear", antialias=True)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def plant(frames: np.ndarray, plants: tuple[Plant, ...] = PLANTS) -> np.ndarray:
    """uint8 frames [T, 448, 448, 3] -> a copy with every patch pasted in its frames."""
    out = frames.copy()
    for p in plants:
        out[p.start : p.stop, p.top : p.top + PATCH, p.left : p.left + PATCH] = _patch(p)
    return out


def planted_mask(p: Plant, frames: int, grid: int = 14, cell: int = CELL) -> torch.Tensor:
    """bool [frames, grid, grid]: head cells at least half covered by the patch, in its frames."""
    edges = torch.arange(grid) * cell
    rows = (torch.minimum(edges + cell, torch.tensor(p.top + PATCH)) - torch.maximum(edges, torch.tensor(p.top))).clamp(
        min=0
    )
    cols = (
        torch.minimum(edges + cell, torch.tensor(p.left + PATCH)) - torch.maximum(edges, torch.tensor(p.left))
    ).clamp(min=0)
    cover = rows[:, None] * cols[None, :] >= cell * cell / 2  # (grid, grid)
    mask = torch.zeros(frames, grid, grid, dtype=torch.bool)
    mask[p.start : p.stop] = cover
    return mask


def clip_owner(grid: TokenGrid, segments: list[CompressedSegment]) -> torch.Tensor:
    """int64 [T * h * w]: the index (into the concatenated kept tokens) of each original's owner.

    Segments' own ``owner`` where given; otherwise the most similar kept token of its segment.
    """
    owners, offset = [], 0
    for s in segments:
        own = s.owner
        if own is None:
            x = grid.tokens[s.frame_offset : s.frame_offset + s.frame_count].reshape(-1, grid.dim)  # (V*N, D)
            sims = (
                torch.nn.functional.normalize(x.float(), dim=-1)
                @ torch.nn.functional.normalize(s.tokens.float(), dim=-1).T
            )
            own = sims.argmax(dim=1)
        owners.append(own.cpu() + offset)
        offset += s.budget
    return torch.cat(owners)


def representatives(grid: TokenGrid, segments: list[CompressedSegment]) -> torch.Tensor:
    """int64 [n]: the clip-level raster index t * h * w + i * w + j of each kept token's representative."""
    h, w = grid.grid_size
    reps = []
    for s in segments:
        t = s.positions[:, 0] + s.frame_offset
        reps.append(t * h * w + s.positions[:, 1] * w + s.positions[:, 2])
    return torch.cat(reps).cpu()


def represented(owner: torch.Tensor, mask: torch.Tensor, reps: torch.Tensor) -> tuple[bool, int]:
    """Whether a kept token stands for the planted region, and how many do.

    owner: int64 [M] (kept index of each original); mask: bool [M] (planted originals);
    reps: int64 [n] (representative of each kept token). A kept token stands for the
    region when its representative is planted and at least half the originals it owns are.
    """
    kept = reps.shape[0]
    members = torch.bincount(owner, minlength=kept)  # (n,) originals per kept token
    planted = torch.bincount(owner[mask], minlength=kept)  # (n,) of them planted
    mostly = mask[reps] & (2 * planted >= members)
    return bool(mostly.any()), int(mostly.sum())


def needle_report(
    grid: TokenGrid,
    segments: list[CompressedSegment],
    masks: list[torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor,
    full_readout: Any = None,
) -> dict[str, Any]:
    """Provenance and readout of the planted regions for one compression.

    grid: [T, h, w, D] (with the plants); masks: bool [T, h, w] per plant.
    -> represented (per plant), kept_patch_tokens (per plant), and window_top5,
    needle_hits, needle_total over the windows holding a planted frame.
    """
    owner = clip_owner(grid, segments)
    reps = representatives(grid, segments)
    rep = [represented(owner, m.flatten(), reps) for m in masks]
    windows = sorted({int(t) // WINDOW for m in masks for t in torch.nonzero(m.flatten(1).any(dim=1)).flatten()})
    full = full_readout if full_readout is not None else grid_readout(grid, weight, bias)
    agree = agreement(full, segments_readout(segments, grid.timestamps, weight, bias), windows=windows)
    return {
        "represented": [r[0] for r in rep],
        "kept_patch_tokens": [r[1] for r in rep],
        "window_top5": agree["window_top5"],
        "needle_hits": agree["needle_hits"],
        "needle_total": agree["needle_total"],
        "windows": windows,
    }


def planted_clip(
    path: Path, start: float = 10.0, seconds: float = 16.0, fps: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """A contiguous stretch of a video at ``fps``: frames uint8 [T, 448, 448, 3], times float64 [T]."""
    from streamvid.ingest import FileSource, Sampler

    sampler = Sampler(fps=fps, max_size=None)
    frames, times = [], []
    for frame in FileSource(path).frames():
        if frame.time >= start + seconds:
            break
        if sampler.accept(frame.time) and frame.time >= start:
            frames.append(frame.rgb(SIZE, SIZE))
            times.append(frame.time)
    return np.stack(frames), np.array(times, dtype=np.float64)


def run_planted(
    path: Path, ratios: tuple[float, ...] = (0.25, 0.15, 0.10, 0.05), seeds: int = 3, progress: Any = None
) -> dict[str, Any]:
    from bench.efficientnet import load_pretrained
    from bench.readout import head_features

    say = progress.log if progress is not None else (lambda *_: None)
    frames, times = planted_clip(path)
    model = load_pretrained()
    clip = head_features(model, plant(frames), times)
    grid = clip.grid
    weight, bias = model._fc.weight.detach().float(), model._fc.bias.detach().float()
    masks = [planted_mask(p, grid.num_frames) for p in PLANTS]
    full = grid_readout(grid, weight, bias)
    say(f"planted clip: {tuple(grid.tokens.shape)}, {len(PLANTS)} plants")
    rows = []
    for ratio, plan in groupby(method_runs(ratios, seeds), key=lambda run: run[0]):
        for _, method, r, seed_list in plan:
            runs = [
                needle_report(grid, seeded_compressor(method, r, seed).compress(grid), masks, weight, bias, full)
                for seed in seed_list
            ]
            rows.append({"method": method, "ratio": r, "seeds": seed_list, "runs": runs})
        say(f"planted needles at {ratio:.0%}: done")
    return {
        "clip": f"{path.name} {times[0]:.1f}-{times[-1]:.1f} s",
        "shape": list(grid.tokens.shape),
        "plants": [
            {
                "image": p.image,
                "frames": [p.start, p.stop],
                "seconds": [float(times[p.start]), float(times[p.stop - 1])],
                "top_left_px": [p.top, p.left],
                "tokens": int(m.sum()),
            }
            for p, m in zip(PLANTS, masks)
        ],
        "ratios": list(ratios),
        "seeds": seeds,
        "machine": machine(),
        "rows": rows,
    }


def run(profile: Any, progress: Any = None) -> dict[str, Any]:
    from bench.media import fetch_vtest

    return run_planted(fetch_vtest(), profile.planted_ratios, profile.planted_seeds, progress)


def _stat(values: list[float], digits: int = 3) -> str:
    mean = statistics.mean(values)
    text = f"{mean:.{digits}f}"
    if max(values) > min(values):
        text += f" [{min(values):.{digits}f}-{max(values):.{digits}f}]"
    return text


def markdown(result: dict[str, Any], images: str) -> str:
    m = result["machine"]
    plants = result["plants"]
    parts = [
        "## Needle-in-frame: planted objects",
        "",
        f"{result['clip']} at 2 fps, head grid {result['shape']} (448 px). Planted for 2 s each (80 x 80 px, "
        "3.2% of the frame): "
        + ", ".join(
            f"{p['image']} at {p['seconds'][0]:.1f}-{p['seconds'][1]:.1f} s ({p['tokens']} tokens)" for p in plants
        )
        + f". Seeded methods over {result['seeds']} seeds, mean [min-max]. Machine: {m['processor']}, "
        f"{m['cpus']} CPUs, torch {m['torch']}, GPU: {m['cuda'] or 'none'}.",
        "",
        "How to read this: *represented* counts the planted objects for which some kept token stands for the "
        "patch (by provenance: its representative is a patch token and at least half of what it owns is patch); "
        "per object the share of seeds. *Window top-5* and *needle recall* are the class-query readout over the "
        "windows that hold a planted frame. A method can keep the object and still lose its class when the kept "
        "token's value is diluted.",
        "",
    ]
    keep = [r for r in result["rows"] if r["method"] == "keep_all"]
    for ratio in result["ratios"]:
        rows = [r for r in result["rows"] if r["ratio"] == ratio] + keep
        body = []
        for r in rows:
            runs = r["runs"]
            per_plant = [statistics.mean(float(x["represented"][i]) for x in runs) for i in range(len(plants))]
            recall = [x["needle_hits"] / x["needle_total"] if x["needle_total"] else float("nan") for x in runs]
            body.append(
                [
                    r["method"],
                    _stat([float(sum(x["represented"])) for x in runs], 2) + f" of {len(plants)}",
                    ", ".join(f"{p['image']} {v:.0%}" for p, v in zip(plants, per_plant)),
                    _stat([x["window_top5"] for x in runs]),
                    "n/a" if recall[0] != recall[0] else _stat(recall) + f" (of {int(runs[0]['needle_total'])})",
                ]
            )
        parts += [
            f"**{ratio:.0%} retention**",
            "",
            table(["method", "represented", "per object", "window top-5 (needle windows)", "needle recall"], body),
            "",
        ]
    return "\n".join(parts)


PART = Part("planted", run, markdown, needs_video=True)
