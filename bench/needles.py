"""Needle survival under a memory cap: planted needles in hours of real features, a 1% cap, retrieval rank.

A long stream (real video features looped to an hour or more of 1 fps timeline,
with long static stretches) carries short needles: about 2 s of a distinctive
real image at known times. The stream is cut with the streaming segmentation rule,
compressed with InfoMerge, and stored in a TokenMemory under a global cap (1% of
the raw tokens by default); keys are the mean head embedding of each segment.
Reported per needle: did its segment survive, the coverage of the needle's tokens
by what its segment kept, and the retrieval rank of its segment when the query is
the needle image's own embedding (recall@1, @5).

The memory stores its tokens as ``token_dtype`` (memory/quant.py); :func:`run_dtypes`
runs the same stream for several dtypes side by side, under the same token cap and
under the same byte cap (the bytes float16 needs for that many tokens, so a quantized
memory holds more tokens there).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.metrics import coverage
from bench.parts import Part
from bench.report import table
from memory import TokenMemory
from memory.config import MemoryConfig
from streamvid.compress import create_compressor
from streamvid.compress.dyseg import CutRule, streaming_boundaries
from streamvid.errors import ConfigError
from streamvid.types import TokenGrid

__all__ = [
    "build_stream",
    "dtype_markdown",
    "dtype_table",
    "needle_material",
    "run_dtypes",
    "run_needles",
    "run_needles_dtypes",
]

CAP_UNITS = ("tokens", "bytes")


def needle_material(progress: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Real features: vtest.avi at 1 fps (the base stream) and scikit-image photos (the needles)."""
    import numpy as np
    from skimage import data

    from bench.efficientnet import load_pretrained
    from bench.fidelity import feature_grid
    from bench.media import fetch_vtest
    from streamvid.ingest import FileSource, Sampler

    model = load_pretrained()
    sampler = Sampler(fps=1, max_size=None)
    frames = [(t, img) for t, img in sampler(FileSource(fetch_vtest()).frames())]
    base = np.stack(
        [
            torch.nn.functional.interpolate(
                torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=(224, 224), mode="bilinear", antialias=True
            )[0]
            .permute(1, 2, 0)
            .round()
            .clamp(0, 255)
            .byte()
            .numpy()
            for _, img in frames
        ]
    )
    grid, heads = feature_grid(model, base, np.array([t for t, _ in frames]))
    needles = {}
    for name in ("chelsea", "coffee", "rocket", "astronaut", "camera"):
        img = getattr(data, name)()
        img = img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        x = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float(),
            size=(224, 224),
            mode="bilinear",
            antialias=True,
        )
        frame = x[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()[None]
        g, h = feature_grid(model, frame, np.zeros(1))
        needles[name] = (g.tokens[0], h[0])
    if progress is not None:
        progress.log(f"needle material: {grid.tokens.shape[0]} vtest frames, {len(needles)} needles")
    return grid.tokens, heads, needles


def build_stream(
    base: torch.Tensor,
    base_heads: torch.Tensor,
    needles: dict[str, tuple[torch.Tensor, torch.Tensor]],
    hours: float = 1.0,
    needle_seconds: int = 2,
    static_every: int = 600,
    static_seconds: int = 120,
    seed: int = 0,
) -> dict[str, Any]:
    """Frame-level features of a long 1 fps stream.

    base: [B, 14, 14, C] real video features (looped); base_heads: [B, E];
    needles: name -> (grid [14, 14, C], head [E]). Every ``static_every`` seconds a
    frame is held still for ``static_seconds``. Needles land at spread-out times.
    Returns grid [T, 14, 14, C], heads [T, E], and needle times {name: (start, end)}.
    """
    total = int(hours * 3600)
    rng = np.random.default_rng(seed)
    index = np.arange(total) % base.shape[0]
    for start in range(static_every // 2, total - static_seconds, static_every):
        index[start : start + static_seconds] = index[start]  # a long static stretch
    grid, heads = base[index].clone(), base_heads[index].clone()
    slots = np.linspace(0.05, 0.95, len(needles)) * total
    times = {}
    for (name, (needle, head)), slot in zip(needles.items(), slots):
        t0 = int(slot + rng.integers(-60, 60))
        grid[t0 : t0 + needle_seconds] = needle
        heads[t0 : t0 + needle_seconds] = head
        times[name] = (t0, t0 + needle_seconds)
    return {"grid": grid, "heads": heads, "needles": times}


def run_needles(
    stream: dict[str, Any],
    cap_fraction: float = 0.01,
    ratio: float = 0.15,
    root: Path | None = None,
    compressor: str = "infomerge",
    progress: Any = None,
    token_dtype: str = "float16",
    cap_unit: str = "tokens",
) -> dict[str, Any]:
    """Ingest ``stream`` into a TokenMemory storing ``token_dtype`` under a cap of ``cap_fraction``
    of the raw tokens, then score every needle. cap_unit "tokens": that many tokens
    (``cap_tokens``); "bytes": the bytes float16 storage needs for them (``cap_bytes``), so a
    quantized memory holds more tokens under it."""
    say = progress.log if progress is not None else (lambda *_: None)
    if cap_unit not in CAP_UNITS:
        raise ConfigError(f"cap_unit must be one of {CAP_UNITS}, got {cap_unit!r}")
    grid_all, heads = stream["grid"], stream["heads"]
    total, h, w, dim = grid_all.shape
    raw_cap = int(cap_fraction * total * h * w)
    if cap_unit == "tokens":
        limit: dict[str, int] = {"cap_tokens": raw_cap}
    else:
        limit = {"cap_bytes": raw_cap * MemoryConfig(cap_tokens=1, dtype="float16").token_bytes(dim)}
    config = MemoryConfig(**limit, dtype=token_dtype)
    cap = config.token_cap(dim)
    # the streaming segmentation rule (identical to StreamingSegmenter on these features)
    bounds = streaming_boundaries(grid_all.mean(dim=(1, 2)), CutRule(tau_seg=0.9, min_len=2, max_len=16))
    comp = create_compressor(compressor, ratio=ratio)
    root = root or Path(tempfile.mkdtemp(prefix="streamvid-needles-"))
    mem = TokenMemory(root / f"mem-{token_dtype}-{cap_unit}", config)
    t0 = time.perf_counter()
    segment_of: dict[int, tuple[int, int]] = {}
    max_held = 0
    for a, b in zip(bounds, bounds[1:]):
        g = TokenGrid(grid_all[a:b], torch.arange(a, b, dtype=torch.float64), stream_id="stream", segment_index=a)
        (seg,) = comp.compress(g, boundaries=[0, b - a])
        key = F.normalize(heads[a:b].mean(dim=0), dim=0)
        sid = mem.add(seg, key)
        segment_of[sid] = (a, b)
        max_held = max(max_held, mem.tokens_held)
        if max_held > cap:
            raise AssertionError(f"cap exceeded: {max_held} > {cap}")
    ingest_s = time.perf_counter() - t0
    say(
        f"{token_dtype}, cap in {cap_unit}: {len(bounds) - 1} segments ingested in {ingest_s:.1f} s; "
        f"{mem.stats().tokens_held}/{cap} tokens held"
    )
    rows = {}
    for name, (n0, n1) in stream["needles"].items():
        sids = [sid for sid, (a, b) in segment_of.items() if a < n1 and b > n0]
        infos = {s.id: s for s in mem.timeline("stream", n0, n1 - 1)}
        survived = all(not infos[s].evicted for s in sids)
        needle_tokens = grid_all[n0:n1].reshape(-1, grid_all.shape[-1])
        cov = (0.0, 0.0)
        if survived:
            kept = torch.cat([t.tokens.float() for t in mem.get(sids)])
            cov = coverage(needle_tokens, kept)
        (hits,) = mem.search(heads[n0], k=5)
        ranked = [hit.segment.id for hit in hits]
        rank = min((ranked.index(s) + 1 for s in sids if s in ranked), default=None)
        rows[name] = {
            "time": [n0, n1],
            "segments": sids,
            "survived": survived,
            "coverage_mean": cov[0],
            "coverage_p5": cov[1],
            "rank": rank,
            "tokens": sum(infos[s].tokens for s in sids),
        }
    stats = mem.stats()
    shard_bytes = mem.shards.disk_bytes()
    timeline = [{"start": s.start, "end": s.end, "tokens": s.tokens, "evicted": s.evicted} for s in mem.timeline()]
    mem.close()
    n = len(rows)
    return {
        "hours": total / 3600,
        "segments": len(bounds) - 1,
        "token_dtype": token_dtype,
        "cap_unit": cap_unit,
        "cap_tokens": cap,
        "cap_bytes": config.cap_bytes,
        "cap_raw_tokens": raw_cap,
        "max_tokens_held": max_held,
        "tokens_held": stats.tokens_held,
        "bytes_held": stats.bytes_held,
        "disk_bytes": stats.disk_bytes,
        "shard_bytes": shard_bytes,
        "ratio": ratio,
        "compressor": compressor,
        "ingest_seconds": ingest_s,
        "survived": sum(r["survived"] for r in rows.values()) / n,
        "recall_at_1": sum(r["rank"] == 1 for r in rows.values()) / n,
        "recall_at_5": sum(r["rank"] is not None for r in rows.values()) / n,
        "coverage_mean": float(np.mean([r["coverage_mean"] for r in rows.values()])),
        "coverage_p5": float(np.mean([r["coverage_p5"] for r in rows.values()])),
        "segments_live": stats.segments_live,
        "segments_evicted": stats.segments_evicted,
        "needles": rows,
        "timeline": timeline,
    }


def run(profile: Any, progress: Any = None) -> dict[str, Any]:
    base, heads, material = needle_material(progress)
    stream = build_stream(base, heads, material, hours=profile.needles_hours)
    return run_needles(stream, cap_fraction=0.01, progress=progress)


def run_needles_dtypes(
    stream: dict[str, Any],
    dtypes: Sequence[str] = ("float16", "int8"),
    cap_units: Sequence[str] = CAP_UNITS,
    cap_fraction: float = 0.01,
    ratio: float = 0.15,
    compressor: str = "infomerge",
    progress: Any = None,
) -> dict[str, Any]:
    """:func:`run_needles` on one stream for every (cap unit, token_dtype), each in its own memory
    (removed afterwards); -> {"runs": [...]}, each run with its needle rows and ranks, without
    its per-segment timeline."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="streamvid-needles-") as tmp:
        for unit in cap_units:
            for dt in dtypes:
                r = run_needles(stream, cap_fraction, ratio, Path(tmp), compressor, progress, dt, unit)
                r["needle_ranks"] = {k: v["rank"] for k, v in r["needles"].items()}
                r["needles_survived"] = sum(v["survived"] for v in r["needles"].values())
                r["needles_total"] = len(r["needles"])
                r.pop("timeline")
                runs.append(r)
    return {"cap_fraction": cap_fraction, "ratio": ratio, "compressor": compressor, "runs": runs}


def run_dtypes(profile: Any, progress: Any = None) -> dict[str, Any]:
    """:func:`run_needles_dtypes` at the sizes of ``profile`` (``quant_needle_dtypes``, ``quant_needles_hours``)."""
    base, heads, material = needle_material(progress)
    stream = build_stream(base, heads, material, hours=profile.quant_needles_hours)
    return run_needles_dtypes(stream, profile.quant_needle_dtypes, progress=progress)


def dtype_table(result: dict[str, Any]) -> str:
    """One row per (cap, token_dtype): needles survived, recall@1/@5, tokens held / cap, bytes."""
    rows = []
    for r in result["runs"]:
        cap = f"{r['cap_tokens']} tokens" if r["cap_unit"] == "tokens" else f"{r['cap_bytes']:,} bytes"
        rows.append(
            [
                cap,
                r["token_dtype"],
                f"{r['needles_survived']}/{r['needles_total']}",
                f"{r['recall_at_1']:.0%}",
                f"{r['recall_at_5']:.0%}",
                f"{r['tokens_held']}/{r['cap_tokens']}",
                f"{r['bytes_held']:,}",
                f"{r['disk_bytes']:,}",
                f"{r['coverage_mean']:.3f}",
            ]
        )
    return table(
        [
            "cap",
            "stored as",
            "needles survived",
            "recall@1",
            "recall@5",
            "tokens held / cap",
            "payload bytes",
            "bytes on disk",
            "coverage mean",
        ],
        rows,
    )


def dtype_markdown(result: dict[str, Any]) -> str:
    """The needle stream per token_dtype: what was run, the table."""
    first = result["runs"][0]
    return "\n".join(
        [
            f"## Needles under a {result['cap_fraction']:.0%} cap per token_dtype",
            "",
            f"{first['hours']:.1f} h of 1 fps real features, {first['needles_total']} needles, {first['segments']} "
            f"segments, {result['compressor']} at {result['ratio']:.0%}. Cap in tokens: {first['cap_raw_tokens']} "
            "for every dtype; cap in bytes: the bytes float16 storage needs for that many tokens (payload: vectors "
            "with their scales plus 40 bytes of provenance a token). Bytes on disk: every file of the memory.",
            "",
            dtype_table(result),
            "",
        ]
    )


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    """budgets.png: tokens kept per segment over the stream, needles marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = result
    fig, ax = plt.subplots(figsize=(12, 4))
    live = [s for s in n["timeline"] if not s["evicted"]]
    ax.bar(
        [s["start"] / 60 for s in live],
        [s["tokens"] for s in live],
        width=[max(s["end"] - s["start"], 1) / 60 for s in live],
        align="edge",
        label="tokens per segment",
    )
    for name, r in n["needles"].items():
        ax.axvline(r["time"][0] / 60, color="tab:red", alpha=0.6)
        ax.text(r["time"][0] / 60, ax.get_ylim()[1] * 0.9, name, rotation=90, fontsize=7, color="tab:red")
    ax.set_xlabel("stream time (min)")
    ax.set_ylabel("tokens kept")
    ax.set_title(f"budget per segment under a cap of {n['cap_tokens']} tokens (1% of raw); red: needles")
    fig.tight_layout()
    path = out / "budgets.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def markdown(result: dict[str, Any], images: str) -> str:
    n = result
    return "\n".join(
        [
            "## Needles under a 1% cap",
            "",
            f"{n['hours']:.0f} h of 1 fps real features (vtest.avi looped, static stretches), "
            f"{len(n['needles'])} needles of 2 s (scikit-image photos), {n['segments']} segments, cap "
            f"{n['cap_tokens']} tokens, most ever held {n['max_tokens_held']}.",
            "",
            table(
                ["needle", "time (s)", "survived", "tokens", "coverage mean", "coverage p5", "rank"],
                [
                    [
                        k,
                        f"{v['time'][0]}-{v['time'][1]}",
                        v["survived"],
                        v["tokens"],
                        f"{v['coverage_mean']:.3f}",
                        f"{v['coverage_p5']:.3f}",
                        v["rank"],
                    ]
                    for k, v in n["needles"].items()
                ],
            ),
            "",
            f"Survived {n['survived']:.0%}, recall@1 {n['recall_at_1']:.0%}, recall@5 {n['recall_at_5']:.0%}.",
            "",
            f"![budgets]({images}/budgets.png)",
            "",
        ]
    )


PART = Part("needles", run, markdown, plot, needs_video=True)
