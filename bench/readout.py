"""Class-query readout: the headline quality proxy, with its controls in the same table.

Tokens: EfficientNet-Lite0 at 448 px, the head grid [T, 14, 14, 1280] (196 tokens per
frame, like LLaVA-OneVision). Questions: the 1000 ImageNet classifier rows w_c with
their biases b_c, at the classifier's own scale (no free temperature). Over a token
set x_i (all tokens, or what a compressor kept):

    a_c = softmax_i(w_c . x_i),   z_c = w_c . sum_i a_ci x_i + b_c

Compressed tokens enter as their values, with no size bias, the way an LLM sees them.
Agreement with the readout of all tokens (the reference):

- video top-5: overlap of the two top-5 class sets over the whole clip, / 5;
- window top-5: the same per 4-frame window, averaged over windows; a token belongs
  to the window of its representative's frame (``CompressedSegment.times``); a
  window left without tokens scores 0;
- needle recall: the classes in a window's full top-5 that are not in the video's
  full top-20 (window-specific content), and the fraction of them still in that
  window's compressed top-5.

The readout favours large-norm tokens (a large token dominates its softmax), and
FastVID/InfoMerge pick salient tokens by their norm when no saliency is given, so
the controls are part of the result: keep-top-norm-only, the same methods with a
random saliency and with an unrelated one (the stage-3 feature norm), and random
keeping with several seeds (mean and range).

The stored-token check (:func:`run_quantized_readout`) asks what the memory's storage
formats cost on the same readout: InfoMerge's tokens pass through quantize -> dequantize
for each ``token_dtype`` exactly as a TokenMemory shard is written and read
(memory/quant.py), and the readout of each is compared with all tokens and with the
float16-stored tokens.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.parts import Part
from bench.report import machine, plot_mean_range, seeded_compressor, table, takes_seed
from memory.quant import dequantize, quantize, vector_bytes
from streamvid.compress import Compressor, allocate_budgets, list_compressors
from streamvid.compress.base import finish_segment, nearest_kept_owner
from streamvid.types import CompressedSegment, TokenGrid

__all__ = [
    "QUANT_DTYPES",
    "HeadClip",
    "Readout",
    "TopNorm",
    "Variant",
    "agreement",
    "class_readout",
    "evaluate_quantized",
    "evaluate_variants",
    "head_features",
    "quantized_findings",
    "quantized_markdown",
    "quantized_table",
    "readout",
    "run_quantized",
    "run_quantized_readout",
    "run_readout",
    "stored_readout",
    "stored_tokens",
    "summarise",
    "variants",
]

WINDOW = 4  # frames per window
TOP = 5
BACKGROUND = 20  # a window's class is a "needle" when it is not in the video's top-20
SIZE = 448  # input size: 14 x 14 head grid


# ---------------------------------------------------------------- the readout itself


def class_readout(logits: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """logits: [n, C] (w_c . x_i); bias: [C] -> z: [C] = sum_i softmax_i(logits) logits + b."""
    a = torch.softmax(logits, dim=0)  # (n, C): attention of class c over the tokens
    return (a * logits).sum(dim=0) + bias


@dataclass(frozen=True)
class Readout:
    """video: [C]; windows: [W, C] (-inf rows where a window has no token); present: bool [W]."""

    video: torch.Tensor
    windows: torch.Tensor
    present: torch.Tensor


def window_index(times: torch.Tensor, frame_times: torch.Tensor, window: int = WINDOW) -> torch.Tensor:
    """The window of each token: times [n] (its representative's frame time), frame_times [T] -> int64 [n]."""
    frame = torch.searchsorted(frame_times.double(), times.double(), right=True) - 1  # (n,) frame index
    return frame.clamp(0, frame_times.shape[0] - 1) // window


def readout(
    tokens: torch.Tensor,
    times: torch.Tensor,
    frame_times: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    window: int = WINDOW,
) -> Readout:
    """Class-query readout of a token set, for the clip and per window.

    tokens: [n, D]; times: float64 [n]; frame_times: float64 [T]; weight: [C, D]; bias: [C].
    """
    logits = tokens.float() @ weight.float().T  # (n, C)
    bias = bias.float()
    win = window_index(times, frame_times, window)
    count = -(-frame_times.shape[0] // window)
    windows = torch.full((count, weight.shape[0]), -float("inf"))
    present = torch.zeros(count, dtype=torch.bool)
    for j in range(count):
        rows = win == j
        if bool(rows.any()):
            windows[j] = class_readout(logits[rows], bias)
            present[j] = True
    return Readout(class_readout(logits, bias), windows, present)


def _top(z: torch.Tensor, k: int) -> set[int]:
    return set(torch.topk(z, min(k, z.shape[0])).indices.tolist())


def agreement(
    full: Readout, comp: Readout, k: int = TOP, background: int = BACKGROUND, windows: Sequence[int] | None = None
) -> dict[str, float]:
    """Agreement of a compressed readout with the full one.

    -> video_top5, window_top5 (mean over ``windows``, default all), needle_hits and
    needle_total (window-specific classes: in a window's full top-k, not in the video's
    full top-``background``), windows_empty (windows the compressed set left empty).
    """
    chosen = range(full.windows.shape[0]) if windows is None else windows
    video_bg = _top(full.video, background)
    window_scores, hits, total, empty = [], 0, 0, 0
    for j in chosen:
        ref = _top(full.windows[j], k)
        needles = ref - video_bg
        total += len(needles)
        if not bool(comp.present[j]):
            empty += 1
            window_scores.append(0.0)
            continue
        got = _top(comp.windows[j], k)
        window_scores.append(len(ref & got) / k)
        hits += len(needles & got)
    return {
        "video_top5": len(_top(full.video, k) & _top(comp.video, k)) / k,
        "window_top5": float(np.mean(window_scores)) if window_scores else float("nan"),
        "needle_hits": float(hits),
        "needle_total": float(total),
        "windows_empty": float(empty),
    }


def segments_readout(
    segments: list[CompressedSegment], frame_times: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> Readout:
    """The readout of what a compressor kept: the token values, their representatives' times."""
    tokens = torch.cat([s.tokens.float() for s in segments])
    times = torch.cat([s.times for s in segments])
    return readout(tokens, times, frame_times, weight, bias)


def grid_readout(grid: TokenGrid, weight: torch.Tensor, bias: torch.Tensor) -> Readout:
    """The reference: every token of the grid [T, h, w, D], each at its own frame's time."""
    t, h, w, d = grid.tokens.shape
    times = grid.timestamps.double().repeat_interleave(h * w)  # (T*h*w,)
    return readout(grid.tokens.reshape(t * h * w, d), times, grid.timestamps, weight, bias)


# ---------------------------------------------------------------- features


@dataclass(frozen=True)
class HeadClip:
    """grid: head tokens [T, 14, 14, 1280] with frame times; early: [T, 14, 14] stage-3 token norm."""

    grid: TokenGrid
    early: torch.Tensor


def head_features(model: Any, frames: np.ndarray, times: np.ndarray, batch: int = 8) -> HeadClip:
    """uint8 frames [T, H, W, 3] -> the 448 px head grid and the stage-3 norm pooled onto it."""
    from bench.efficientnet import preprocess

    heads, early = [], []
    with torch.inference_mode():
        for i in range(0, len(frames), batch):
            taps = model.taps(preprocess(torch.from_numpy(np.ascontiguousarray(frames[i : i + batch])), size=SIZE))
            head = taps["head"]  # (B, 14, 14, 1280)
            s3 = taps["stage3"].norm(dim=-1)[:, None]  # (B, 1, 56, 56)
            early.append(F.adaptive_avg_pool2d(s3, head.shape[1:3])[:, 0])  # (B, 14, 14)
            heads.append(head)
    grid = TokenGrid(torch.cat(heads).contiguous(), torch.from_numpy(np.asarray(times, dtype=np.float64)))
    return HeadClip(grid, torch.cat(early))


# ---------------------------------------------------------------- controls


class TopNorm(Compressor):
    """Control, not a product method: keep the largest-norm tokens, an equal share per frame."""

    name = "top_norm"

    def _compress(self, grid: TokenGrid, boundaries: list[int] | None) -> list[CompressedSegment]:
        t, n = grid.num_frames, grid.tokens_per_frame
        counts = allocate_budgets(torch.ones(t), self.total_budget(grid), torch.full((t,), n), minimum=0)
        x = grid.tokens.reshape(t, n, grid.dim).float()  # (T, N, D)
        norm = x.norm(dim=-1)  # (T, N)
        flat = torch.cat([f * n + torch.topk(norm[f], int(c)).indices for f, c in enumerate(counts.tolist()) if c])
        flat = torch.sort(flat).values
        tokens = x.reshape(t * n, grid.dim)  # (T*N, D)
        owner = nearest_kept_owner(tokens, flat)
        sizes = torch.bincount(owner, minlength=flat.shape[0])
        seg = finish_segment(
            grid, 0, t, tokens[flat], sizes, flat, self.name, self.out_dtype(grid), grid.segment_index, owner=owner
        )
        return [seg]


@dataclass(frozen=True)
class Variant:
    """One row of the table: a method (or control) run with ``seeds`` and a saliency choice.

    method: a registered compressor name or "top_norm"; saliency: "own" (the grid's
    default), "random" (uniform noise, one draw per seed) or "stage3" (the stage-3 norm).
    """

    label: str
    method: str
    kind: str  # "method" or "control"
    seeds: tuple[int, ...] = (0,)
    saliency: str = "own"


def make_compressor(method: str, ratio: float, seed: int = 0) -> Compressor:
    if method == "top_norm":
        return TopNorm(ratio=ratio)
    return seeded_compressor(method, ratio, seed)


def _saliency(clip: HeadClip, kind: str, seed: int) -> torch.Tensor | None:
    if kind == "own":
        return None
    if kind == "stage3":
        return clip.early
    gen = torch.Generator().manual_seed(10_000 + seed)
    return torch.rand(tuple(clip.early.shape), generator=gen)


def compress_variant(clip: HeadClip, v: Variant, ratio: float, seed: int) -> list[CompressedSegment]:
    return make_compressor(v.method, ratio, seed).compress(clip.grid, saliency=_saliency(clip, v.saliency, seed))


def uses_saliency(method: str, clip: HeadClip, ratio: float, frames: int = 8) -> bool:
    """Whether ``method`` keeps different tokens when its saliency is replaced by noise (on the first frames)."""
    part = HeadClip(clip.grid.slice(0, min(frames, clip.grid.num_frames)), clip.early[:frames])
    a = make_compressor(method, ratio).compress(part.grid)
    b = make_compressor(method, ratio).compress(part.grid, saliency=_saliency(part, "random", 0))
    return len(a) != len(b) or any(
        x.positions.shape != y.positions.shape or not torch.equal(x.positions, y.positions) for x, y in zip(a, b)
    )


def variants(
    methods: Sequence[str], saliency_users: Sequence[str], seeds: int = 3, control_seeds: int | None = None
) -> list[Variant]:
    """Every registered method (seeded ones with ``seeds`` seeds) and the controls.

    The random-saliency controls draw ``control_seeds`` saliency maps (default: ``seeds``).
    """
    many = tuple(range(seeds))
    noise = tuple(range(seeds if control_seeds is None else control_seeds))
    rows = [Variant(m, m, "method", many if takes_seed(m) else (0,)) for m in methods]
    rows.append(Variant("top_norm (control)", "top_norm", "control"))
    for m in saliency_users:
        rows.append(Variant(f"{m} + random saliency", m, "control", noise, "random"))
        rows.append(Variant(f"{m} + stage-3 saliency", m, "control", (0,), "stage3"))
    return rows


def evaluate_variants(
    clips: dict[str, HeadClip],
    weight: torch.Tensor,
    bias: torch.Tensor,
    ratios: Sequence[float],
    rows: Sequence[Variant],
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Per (variant, ratio): per clip and seed, the agreement metrics and the token count."""
    say = progress.log if progress is not None else (lambda *_: None)
    full = {name: grid_readout(c.grid, weight, bias) for name, c in clips.items()}
    out = []
    for ratio in ratios:
        t0 = time.perf_counter()
        for v in rows:
            if v.method == "keep_all" and ratio != ratios[0]:
                continue  # keep_all ignores the ratio: one row
            runs: dict[str, list[dict[str, float]]] = {}
            for name, clip in clips.items():
                runs[name] = []
                for seed in v.seeds:
                    segs = compress_variant(clip, v, ratio, seed)
                    m = agreement(full[name], segments_readout(segs, clip.grid.timestamps, weight, bias))
                    m["tokens"] = float(sum(s.budget for s in segs))
                    runs[name].append(m)
            out.append(
                {
                    "label": v.label,
                    "method": v.method,
                    "kind": v.kind,
                    "saliency": v.saliency,
                    "ratio": 1.0 if v.method == "keep_all" else ratio,
                    "seeds": list(v.seeds),
                    "runs": runs,
                }
            )
        say(f"readout at {ratio:.0%}: {time.perf_counter() - t0:.1f} s")
    return out


def summarise(row: dict[str, Any]) -> dict[str, Any]:
    """Mean over clips per seed, then mean and range over seeds; needle recall pooled over clips."""
    runs = row["runs"]
    seeds = len(row["seeds"])
    per_seed: dict[str, list[float]] = {"video_top5": [], "window_top5": [], "needle_recall": [], "tokens": []}
    for s in range(seeds):
        per_seed["video_top5"].append(statistics.mean(r[s]["video_top5"] for r in runs.values()))
        per_seed["window_top5"].append(statistics.mean(r[s]["window_top5"] for r in runs.values()))
        per_seed["tokens"].append(statistics.mean(r[s]["tokens"] for r in runs.values()))
        hits = sum(r[s]["needle_hits"] for r in runs.values())
        total = sum(r[s]["needle_total"] for r in runs.values())
        per_seed["needle_recall"].append(hits / total if total else float("nan"))
    out = {k: {"mean": statistics.mean(v), "min": min(v), "max": max(v)} for k, v in per_seed.items()}
    out["needle_total"] = sum(r[0]["needle_total"] for r in runs.values())
    out["windows_empty"] = statistics.mean(r[s]["windows_empty"] for r in runs.values() for s in range(seeds))
    return out


# ---------------------------------------------------------------- the benchmark part


def _cache_file(path: Path, frames: int) -> Path:
    """Where the head features of ``frames`` frames of ``path`` are cached: named by the file's
    identity (path, size, mtime), the frame count, the input size and the checkpoint."""
    from bench.efficientnet import weights_path
    from streamvid.cache import cache_root

    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{frames}|{SIZE}|{weights_path().name}"
    tag = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return cache_root() / "features" / f"readout-{path.stem}-{frames}-{tag}.pt"


def _load_cached(path: Path) -> HeadClip | None:
    if not path.is_file():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return HeadClip(TokenGrid(d["tokens"], d["times"]), d["early"])
    except (OSError, RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError):
        return None  # a damaged cache entry is recomputed and rewritten


def _save_cached(path: Path, clip: HeadClip) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"tokens": clip.grid.tokens, "times": clip.grid.timestamps, "early": clip.early}, tmp)
    os.replace(tmp, path)


def load_clips(
    videos: dict[str, Path], frames: int, progress: Any = None, cache: bool = False
) -> tuple[dict[str, HeadClip], Any]:
    """Head features of ``frames`` frames of each video, and the model. ``cache``: keep the
    features under ``<streamvid cache>/features`` and reuse them (EfficientNet at 448 px is
    the slow step on a small CPU)."""
    from bench.efficientnet import load_pretrained
    from streamvid.ingest import read_frames

    say = progress.log if progress is not None else (lambda *_: None)
    model = load_pretrained()
    clips = {}
    for name, path in videos.items():
        where = _cache_file(Path(path), frames) if cache else None
        clip = _load_cached(where) if where is not None else None
        hit = clip is not None
        if clip is None:
            f, t = read_frames(path, frames, size=(SIZE, SIZE))
            clip = head_features(model, f, t)
            if where is not None:
                _save_cached(where, clip)
        clips[name] = clip
        say(f"head grid of {name}: {tuple(clip.grid.tokens.shape)}" + (" (cached)" if hit else ""))
    return clips, model


def run_readout(
    videos: dict[str, Path],
    ratios: Sequence[float] = (0.25, 0.15, 0.10, 0.05),
    frames: int = 32,
    seeds: int = 3,
    control_seeds: int | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    say = progress.log if progress is not None else (lambda *_: None)
    t0 = time.perf_counter()
    clips, model = load_clips(videos, frames, progress)
    weight, bias = model._fc.weight.detach().float(), model._fc.bias.detach().float()
    encode_s = time.perf_counter() - t0
    methods = list_compressors()
    probe = next(iter(clips.values()))
    users = [m for m in methods if m != "keep_all" and uses_saliency(m, probe, min(ratios))]
    say(f"methods that use a saliency signal: {', '.join(users) or 'none'}")
    rows = evaluate_variants(clips, weight, bias, ratios, variants(methods, users, seeds, control_seeds), progress)
    for r in rows:
        r["summary"] = summarise(r)
    return {
        "clips": {k: list(c.grid.tokens.shape) for k, c in clips.items()},
        "ratios": list(ratios),
        "seeds": seeds,
        "control_seeds": seeds if control_seeds is None else control_seeds,
        "saliency_users": users,
        "encode_seconds": encode_s,
        "machine": machine(),
        "rows": rows,
    }


def run(profile: Any, progress: Any = None) -> dict[str, Any]:
    from bench.media import benchmark_videos

    return run_readout(
        benchmark_videos(),
        profile.readout_ratios,
        profile.readout_frames,
        profile.readout_seeds,
        profile.readout_control_seeds,
        progress,
    )


# ---------------------------------------------------------------- reporting


def fmt(stat: dict[str, float], digits: int = 3) -> str:
    """mean, with [min-max] when there were several seeds that differ."""
    if stat["mean"] != stat["mean"]:  # NaN: no needle classes
        return "n/a"
    text = f"{stat['mean']:.{digits}f}"
    if stat["max"] - stat["min"] > 0:
        text += f" [{stat['min']:.{digits}f}-{stat['max']:.{digits}f}]"
    return text


def _by(rows: list[dict[str, Any]], ratio: float, label: str) -> dict[str, Any] | None:
    return next((r["summary"] for r in rows if r["ratio"] == ratio and r["label"] == label), None)


def control_findings(result: dict[str, Any]) -> list[str]:
    """What the controls show, one line per (saliency-using method, ratio), computed from the numbers."""
    rows = result["rows"]
    lines = []
    for ratio in result["ratios"]:
        rnd = _by(rows, ratio, "random")
        top = _by(rows, ratio, "top_norm (control)")
        for m in result["saliency_users"]:
            own = _by(rows, ratio, m)
            noise = _by(rows, ratio, f"{m} + random saliency")
            early = _by(rows, ratio, f"{m} + stage-3 saliency")
            if own is None or noise is None or early is None:
                continue
            parts = []
            for key, what in (("window_top5", "window top-5"), ("needle_recall", "needle recall")):
                s, r, u = own[key]["mean"], noise[key]["mean"], early[key]["mean"]
                if s != s:  # NaN: no needle classes
                    continue
                text = (
                    f"{what} {s:.3f}; with random saliency {r:.3f} ({r - s:+.3f}), "
                    f"with the stage-3 norm {u:.3f} ({u - s:+.3f})"
                )
                if rnd is not None and rnd[key]["mean"] == rnd[key]["mean"]:
                    text += f"; random keeping {rnd[key]['mean']:.3f}"
                if top is not None:
                    n = top[key]["mean"]
                    text += f"; top-norm-only {n:.3f} ({'at or above' if n >= s else 'below'} {m})"
                parts.append(text)
            if parts:
                lines.append(f"- {m} at {ratio:.0%}: " + "; ".join(parts) + ".")
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in ("keep_all", "top_norm")]
    for key, what in (("window_top5", "window top-5"), ("needle_recall", "needle recall")):
        cases = beaten = 0
        for ratio in result["ratios"]:
            top = _by(rows, ratio, "top_norm (control)")
            for m in methods:
                own = _by(rows, ratio, m)
                if top is None or own is None or own[key]["mean"] != own[key]["mean"]:
                    continue
                cases += 1
                beaten += top[key]["mean"] >= own[key]["mean"]
        if cases:
            lines.append(
                f"- Keeping only the largest-norm tokens scores at or above the method in {beaten} of {cases} "
                f"(method, ratio) cases on {what}: where that is most cases, this readout mostly rewards token norm."
            )
    return lines


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    """readout.png: window top-5 and needle recall vs retention; controls dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["method"] != "keep_all"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax in axes:
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # more lines than tab10 has colours
    for ax, key, title in (
        (axes[0], "window_top5", "window top-5 agreement"),
        (axes[1], "needle_recall", "needle recall"),
    ):
        for label in dict.fromkeys(r["label"] for r in rows):
            pts = sorted((r["ratio"], r["summary"][key]) for r in rows if r["label"] == label)
            style = "--" if any(r["kind"] == "control" for r in rows if r["label"] == label) else "-"
            plot_mean_range(ax, pts, label, style)
        ax.set_xlabel("retention (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    path = out / "readout.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


PROXY_LIMITS = (
    "What these proxies can and cannot tell: they measure how much of what a frozen ImageNet network "
    "reads from all tokens survives compression (which classes win, per clip and per 4-frame window), "
    "on real video features. They cannot tell Video-LLM accuracy: the tokens are not a Video-LLM's "
    "tokens, the questions are 1000 fixed class probes rather than language, and an LLM attends with "
    "learned, layered queries. A method that scores well here keeps what a linear class probe needs; "
    "only the harness (docs: `streamvid bench harness`) with real weights and data measures accuracy."
)


def markdown(result: dict[str, Any], images: str) -> str:
    m = result["machine"]
    rows = result["rows"]
    parts = [
        "## Class-query readout (headline quality proxy)",
        "",
        "Clips: "
        + ", ".join(f"{k} {v}" for k, v in result["clips"].items())
        + " (EfficientNet-Lite0 head grids at 448 px). Questions: the 1000 ImageNet classifier rows at the "
        "classifier's own scale; compressed tokens enter as their values (no size bias). "
        f"Random keeping: {result['seeds']} seeds; random-saliency controls: "
        f"{result.get('control_seeds', result['seeds'])} saliency draws; mean [min-max]. "
        f"Machine: {m['processor']}, {m['cpus']} CPUs, torch {m['torch']}, GPU: {m['cuda'] or 'none'}.",
        "",
        "How to read this: *video top-5* and *window top-5* are the share of the full-token top-5 classes "
        "(whole clip; each 4-frame window, by the representative's time) that the compressed tokens also "
        "rank top-5; *needle recall* is the share of window-specific classes (in a window's top-5, not in "
        "the clip's top-20) kept in that window's top-5. 1.0 everywhere is keep_all. Rows marked control "
        "are not methods: they show how much a score owes to the saliency signal and to token norm.",
        "",
    ]
    keep = next((r for r in rows if r["method"] == "keep_all"), None)
    for ratio in result["ratios"]:
        chosen = [r for r in rows if r["ratio"] == ratio] + ([keep] if keep is not None else [])
        parts += [
            f"**{ratio:.0%} retention**",
            "",
            table(
                ["method", "kind", "tokens", "video top-5", "window top-5", "needle recall"],
                [
                    [
                        r["label"],
                        r["kind"],
                        int(r["summary"]["tokens"]["mean"]),
                        fmt(r["summary"]["video_top5"]),
                        fmt(r["summary"]["window_top5"]),
                        fmt(r["summary"]["needle_recall"]) + f" (of {int(r['summary']['needle_total'])})",
                    ]
                    for r in chosen
                ],
            ),
            "",
        ]
    findings = control_findings(result)
    parts += ["What the controls show (computed from the rows above):", "", *findings, ""]
    parts += [PROXY_LIMITS, "", f"![readout]({images}/readout.png)", ""]
    return "\n".join(parts)


# ---------------------------------------------------------------- stored (quantized) tokens

QUANT_DTYPES = ("float16", "int8", "int4")
QUANT_TOLERANCE = 0.005  # the target: int8 within this of float16 on window top-5 and needle recall
QUANT_LABELS = {"window_top5": "window top-5", "needle_recall": "needle recall"}


def stored_tokens(tokens: torch.Tensor, token_dtype: str) -> torch.Tensor:
    """What a TokenMemory storing ``token_dtype`` returns for ``tokens`` [n, D]: quantized as a
    shard is written, dequantized as it is read -> float16 [n, D] (memory/quant.py)."""
    return dequantize(quantize(tokens, token_dtype), tokens.shape[-1])


def stored_readout(
    segments: list[CompressedSegment],
    token_dtype: str,
    frame_times: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
) -> Readout:
    """The readout of ``segments`` as a memory storing ``token_dtype`` gives them back."""
    tokens = torch.cat([stored_tokens(s.tokens, token_dtype).float() for s in segments])
    times = torch.cat([s.times for s in segments])
    return readout(tokens, times, frame_times, weight, bias)


def evaluate_quantized(
    clips: dict[str, HeadClip],
    weight: torch.Tensor,
    bias: torch.Tensor,
    ratios: Sequence[float],
    dtypes: Sequence[str] = QUANT_DTYPES,
    method: str = "infomerge",
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Per (ratio, token_dtype): ``method``'s tokens stored as ``token_dtype``, their readout's
    agreement with all tokens (``vs_all``) and with the same tokens stored as float16
    (``vs_float16``), each summarised over clips as :func:`summarise` does."""
    say = progress.log if progress is not None else (lambda *_: None)
    full = {name: grid_readout(c.grid, weight, bias) for name, c in clips.items()}
    out = []
    for ratio in ratios:
        t0 = time.perf_counter()
        vs_all: dict[str, dict[str, list[dict[str, float]]]] = {dt: {} for dt in dtypes}
        vs_f16: dict[str, dict[str, list[dict[str, float]]]] = {dt: {} for dt in dtypes}
        for name, clip in clips.items():
            segs = seeded_compressor(method, ratio).compress(clip.grid)
            kept = float(sum(s.budget for s in segs))
            ref = stored_readout(segs, "float16", clip.grid.timestamps, weight, bias)
            for dt in dtypes:
                got = stored_readout(segs, dt, clip.grid.timestamps, weight, bias)
                vs_all[dt][name] = [{**agreement(full[name], got), "tokens": kept}]
                vs_f16[dt][name] = [{**agreement(ref, got), "tokens": kept}]
        dim = next(iter(clips.values())).grid.dim
        for dt in dtypes:
            out.append(
                {
                    "ratio": ratio,
                    "token_dtype": dt,
                    "method": method,
                    "vector_bytes": vector_bytes(dim, dt),
                    "vs_all": summarise({"runs": vs_all[dt], "seeds": [0]}),
                    "vs_float16": summarise({"runs": vs_f16[dt], "seeds": [0]}),
                }
            )
        say(f"stored-token readout at {ratio:.0%}: {time.perf_counter() - t0:.1f} s")
    return out


def run_quantized_readout(
    videos: dict[str, Path],
    ratios: Sequence[float] = (0.25, 0.15, 0.10),
    frames: int = 32,
    dtypes: Sequence[str] = QUANT_DTYPES,
    method: str = "infomerge",
    cache: bool = True,
    progress: Any = None,
) -> dict[str, Any]:
    """The readout of the stored tokens for each ``token_dtype`` (see :func:`evaluate_quantized`),
    on the head features of ``frames`` frames of each video (cached when ``cache``)."""
    t0 = time.perf_counter()
    clips, model = load_clips(videos, frames, progress, cache=cache)
    weight, bias = model._fc.weight.detach().float(), model._fc.bias.detach().float()
    encode_s = time.perf_counter() - t0
    rows = evaluate_quantized(clips, weight, bias, ratios, dtypes, method, progress)
    return {
        "clips": {k: list(c.grid.tokens.shape) for k, c in clips.items()},
        "ratios": list(ratios),
        "dtypes": list(dtypes),
        "method": method,
        "encode_seconds": encode_s,
        "machine": machine(),
        "rows": rows,
    }


def run_quantized(profile: Any, progress: Any = None) -> dict[str, Any]:
    """:func:`run_quantized_readout` at the sizes of ``profile`` (``quant_*`` fields)."""
    from bench.media import benchmark_videos

    return run_quantized_readout(
        benchmark_videos(), profile.quant_ratios, profile.quant_frames, profile.quant_dtypes, progress=progress
    )


def _quant_row(result: dict[str, Any], ratio: float, dtype: str) -> dict[str, Any] | None:
    return next((r for r in result["rows"] if r["ratio"] == ratio and r["token_dtype"] == dtype), None)


def quantized_table(result: dict[str, Any]) -> str:
    """One row per (retention, token_dtype): agreement with all tokens (with the change from
    float16 storage) and with the float16-stored tokens."""
    keys = ("window_top5", "video_top5", "needle_recall")
    rows = []
    for ratio in result["ratios"]:
        base = _quant_row(result, ratio, "float16")
        for dt in result["dtypes"]:
            r = _quant_row(result, ratio, dt)
            if r is None:
                continue
            cells = [f"{ratio:.0%}", dt, r["vector_bytes"], int(r["vs_all"]["tokens"]["mean"])]
            for key in keys:
                v = r["vs_all"][key]["mean"]
                text = "n/a" if v != v else f"{v:.3f}"
                if base is not None and dt != "float16" and v == v:
                    text += f" ({v - base['vs_all'][key]['mean']:+.3f})"
                cells.append(text)
            for key in keys:
                v = r["vs_float16"][key]["mean"]
                cells.append("n/a" if v != v else f"{v:.3f}")
            cells[-1] += f" (of {int(r['vs_all']['needle_total'])}/{int(r['vs_float16']['needle_total'])})"
            rows.append(cells)
    return table(
        [
            "retention",
            "stored as",
            "bytes/vector",
            "tokens",
            "window top-5",
            "video top-5",
            "needle recall",
            "window top-5 vs f16",
            "video top-5 vs f16",
            "needle recall vs f16 (needles: all/f16)",
        ],
        rows,
    )


def quantized_findings(result: dict[str, Any], tolerance: float = QUANT_TOLERANCE) -> list[str]:
    """Per (retention, quantized dtype): the change from float16 storage on window top-5 and
    needle recall (against all tokens), and for int8 whether it is within ``tolerance``."""
    lines = []
    for ratio in result["ratios"]:
        base = _quant_row(result, ratio, "float16")
        if base is None:
            continue
        for dt in result["dtypes"]:
            r = _quant_row(result, ratio, dt)
            if dt == "float16" or r is None:
                continue
            diffs = {
                key: r["vs_all"][key]["mean"] - base["vs_all"][key]["mean"] for key in ("window_top5", "needle_recall")
            }
            text = ", ".join(f"{QUANT_LABELS[k]} {d:+.3f}" for k, d in diffs.items() if d == d)
            line = f"- {dt} at {ratio:.0%}: {text} against float16 storage"
            if dt == "int8":
                met = all(abs(d) <= tolerance for d in diffs.values() if d == d)
                line += f"; target |change| <= {tolerance}: {'met' if met else 'NOT met'}"
            lines.append(line + ".")
    return lines


def quantized_markdown(result: dict[str, Any]) -> str:
    """The stored-token readout section: what was run, the table, the target lines."""
    clips = ", ".join(f"{k} {v}" for k, v in result["clips"].items())
    return "\n".join(
        [
            "## Class-query readout of the stored tokens (token_dtype)",
            "",
            f"{result['method']} at {', '.join(f'{r:.0%}' for r in result['ratios'])} on {clips}; the kept tokens "
            "pass through quantize -> dequantize as a TokenMemory shard stores them (memory/quant.py: int8 one "
            "scale per token, int4 groups of 32 with a float16 min and scale). Columns 5-7: agreement with all "
            "tokens (change from float16 storage in brackets); last three: agreement with the float16-stored "
            "tokens' readout.",
            "",
            quantized_table(result),
            "",
            *quantized_findings(result),
            "",
        ]
    )


PART = Part("readout", run, markdown, plot, needs_video=True)
