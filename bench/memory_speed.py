"""Token memory benchmark: search latency, rebalance time, bytes per hour, RSS over time.

    streamvid bench memory [--quick] [--out bench-out/memory.json]

Segments are synthetic (random tokens with exact provenance); the memory does not
look inside them beyond CABA statistics, so this measures the memory itself.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.parts import Part
from bench.report import table
from memory import TokenMemory
from memory.shards import _sizes
from streamvid.types import CompressedSegment

KEY_DIM = 768


def synthetic_segment(
    i: int, n: int, frames: int, dim: int, grid: tuple[int, int] = (14, 14), stream: str = "cam"
) -> CompressedSegment:
    gen = torch.Generator().manual_seed(i)
    h, w = grid
    original = frames * h * w
    n = min(n, original)
    scene = torch.randn(dim, generator=gen)
    tokens = scene + torch.randn(n, dim, generator=gen)
    sizes = torch.full((n,), original // n, dtype=torch.long)
    sizes[: original - int(sizes.sum())] += 1
    t = torch.arange(n) * frames // n
    positions = torch.stack([t, (torch.arange(n) * 7) % h, (torch.arange(n) * 3) % w], 1)
    start = float(i * frames)
    return CompressedSegment(
        tokens=tokens.half(),
        sizes=sizes,
        positions=positions,
        times=start + t.double(),
        grid_size=grid,
        frame_count=frames,
        start_time=start,
        end_time=start + frames - 1,
        mean_token=tokens.mean(0),
        richness=float(torch.rand(1, generator=gen)),
        stream_id=stream,
        segment_index=i,
        method="synthetic",
    )


def unit_keys(count: int, seed: int) -> np.ndarray:
    """Isotropic keys: 64 random centres plus isotropic noise (each seed its own centres). The
    worst case for a graph index: every direction matters equally, so near neighbours are near-ties."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, KEY_DIM))
    keys = centers[rng.integers(0, 64, count)] + 0.5 * rng.normal(size=(count, KEY_DIM))
    return (keys / np.linalg.norm(keys, axis=1, keepdims=True)).astype(np.float32)


def embedding_keys(count: int, seed: int, *, scenes: int = 64, alpha: float = 1.0, chunk: int = 50_000) -> np.ndarray:
    """Keys shaped like image embeddings: around ``scenes`` scene centres, with the variance of the
    i-th principal direction falling as ``i^-alpha`` (image embeddings have such a decaying
    spectrum; ``alpha = 1`` is a mild decay). The centres and directions are fixed, so keys drawn
    with another ``seed`` are new moments like the stored ones: that is how queries are drawn."""
    basis_rng = np.random.default_rng(12345)
    basis = np.linalg.qr(basis_rng.normal(size=(KEY_DIM, KEY_DIM)))[0].astype(np.float32)  # (d, d)
    scale = np.arange(1, KEY_DIM + 1, dtype=np.float64) ** (-alpha)
    scale = np.sqrt(scale / scale.sum()).astype(np.float32)  # (d,)
    centres = (basis_rng.normal(size=(scenes, KEY_DIM)) / np.sqrt(KEY_DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((count, KEY_DIM), dtype=np.float32)
    for a in range(0, count, chunk):
        n = min(chunk, count - a)
        z = rng.standard_normal((n, KEY_DIM), dtype=np.float32) * scale
        keys = centres[rng.integers(0, scenes, n)] + z @ basis.T
        out[a : a + n] = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    return out


def exact_top(keys: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact top-k row indices by inner product (batched FAISS Flat scan): (q, k)."""
    import faiss

    flat = faiss.IndexFlatIP(keys.shape[1])
    flat.add(keys)
    return flat.search(queries, k)[1]


def _single_query_latency(index: Any, queries: np.ndarray, k: int = 10) -> dict[str, float]:
    index.search(queries[:1], k)
    lat = []
    for vec in queries:
        t0 = time.perf_counter()
        index.search(vec[None], k)
        lat.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": statistics.median(lat), "p99_ms": float(np.percentile(lat, 99))}


def bench_index(count: int, queries: int = 1000, kinds: tuple[str, ...] = ("embedding", "isotropic")) -> dict[str, Any]:
    """The memory's HNSW key index alone (the same :class:`~memory.index.KeyIndex`, factory and
    efSearch the memory switches to), filled in bulk: for sizes whose adds through the writer
    (a shard file each) would take too long here (10^6). Recall@10 on embedding-shaped keys and,
    in ``kinds``, on isotropic keys."""
    from memory.index import HNSW, KeyIndex

    out: dict[str, Any] = {"segments": count, "factory": HNSW, "key_dim": KEY_DIM}
    draws = {
        "embedding": lambda: (embedding_keys(count, seed=1), embedding_keys(queries, seed=2)),
        "isotropic": lambda: (unit_keys(count, seed=count), unit_keys(queries, seed=1)),
    }
    for label in kinds:
        keys, q = draws[label]()
        index = KeyIndex(KEY_DIM, HNSW, use_gpu=False)
        t0 = time.perf_counter()
        index.add(keys, np.arange(count, dtype=np.int64))
        build = time.perf_counter() - t0
        found = index.search(q, 10)[1]
        out[label] = {
            "build_seconds": build,
            **_single_query_latency(index, q),
            "recall_at_10": recall_at(found, exact_top(keys, q)),
        }
        del index
    return out


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _live_segments(path: Path) -> int:
    with TokenMemory(path, read_only=True) as mem:
        return mem.stats().segments_live


def recall_at(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k ids found: found, exact (q, k) -> recall@k."""
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found.tolist(), exact.tolist())]))


def _latency(mem: TokenMemory, q: np.ndarray, **kwargs: Any) -> dict[str, float]:
    mem.search(q[0], k=10, **kwargs)
    lat = []
    for vec in q:
        t0 = time.perf_counter()
        mem.search(vec, k=10, **kwargs)
        lat.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": statistics.median(lat), "p99_ms": float(np.percentile(lat, 99))}


def _index_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("index.*.faiss"))


def bench_search(root: Path, count: int, queries: int = 1000, progress: Any = None) -> dict[str, Any]:
    """Search p50/p99 at ``count`` segments through the memory with its default index ("auto":
    HNSW past 20,000 keys) and with the exact Flat scan; recall@10 of the default against exact
    search, for queries drawn like the keys (:func:`embedding_keys`); RSS and index size at 10%
    and 100%; beside it the same index on isotropic keys (:func:`unit_keys`), the worst case.

    No cap binds here (every segment stays live), so besides the index the writer holds the
    CABA statistics of every segment (the live set; under a cap it holds those of the live
    segments only, at most one per token of the cap); the RSS line gives both."""
    say = progress.log if progress is not None else (lambda *_: None)
    path = root / f"search-{count}"
    keys = embedding_keys(count, seed=1)
    shutil.rmtree(path, ignore_errors=True)
    rss: dict[str, float] = {}
    chunk = max(1, min(10_000, count // 10))
    t0 = time.perf_counter()
    with TokenMemory(path, cap_tokens=10**9, index_save_every=10**9) as mem:
        for a in range(0, count, chunk):
            segs = [synthetic_segment(i, 1, 1, 8, grid=(1, 1)) for i in range(a, min(count, a + chunk))]
            mem.add_many(segs, keys[a : a + len(segs)])
            if a + len(segs) == count // 10:
                mem.wait_for_index()
                mem._save_index()
                rss["tenth"], rss["tenth_index_bytes"] = rss_mb(), _index_bytes(path)
                rss["tenth_live"] = mem.stats().segments_live
            say(f"search bench: {a + len(segs)}/{count} segments added")
        added = time.perf_counter() - t0
        mem.wait_for_index()
        build = time.perf_counter() - t0
        mem._save_index()
        rss["full"], rss["full_index_bytes"] = rss_mb(), _index_bytes(path)
        rss["full_live"] = mem.stats().segments_live
        default_factory = mem.index_factory
    q = embedding_keys(queries, seed=2)
    exact = exact_top(keys, q)  # ids are 0..count-1 in key order
    out: dict[str, Any] = {"segments": count, "add_seconds": added, "build_seconds": build, "key_dim": KEY_DIM}
    out["rss_mb"] = rss
    for label, opts in (("default", {}), ("exact", {"index_factory": "IDMap2,Flat"})):
        t0 = time.perf_counter()
        with TokenMemory(path, read_only=True) if not opts else TokenMemory(path, **opts) as mem:
            row: dict[str, Any] = {"factory": mem.index_factory, "open_seconds": time.perf_counter() - t0}
            row["plain"] = _latency(mem, q)
            row["time_filter"] = _latency(mem, q, time_range=(0.0, count / 10))
            found = np.array([[h.segment.id for h in hits] for hits in mem.search(q, k=10)])
            row["recall_at_10"] = recall_at(found, exact)
        out[label] = row
    out["default"]["factory"] = default_factory
    if default_factory != "IDMap2,Flat":
        iso = bench_index(count, queries)["isotropic"]
        out["isotropic_recall_at_10"], out["isotropic_p50_ms"] = iso["recall_at_10"], iso["p50_ms"]
    return out


def bench_rebalance(root: Path, count: int, tokens: int, dim: int) -> dict[str, Any]:
    path = root / f"rebalance-{count}"
    shutil.rmtree(path, ignore_errors=True)
    keys = unit_keys(count + 2, seed=3)
    cap = count * tokens
    with TokenMemory(path, cap_tokens=cap, index_save_every=1000) as mem:
        t0 = time.perf_counter()
        for i in range(count):
            mem.add(synthetic_segment(i, tokens, 16, dim), keys[i])
        build = time.perf_counter() - t0
        add_times = []
        for j in range(2):  # at the cap: each add plans over every segment and re-merges a few
            t0 = time.perf_counter()
            mem.add(synthetic_segment(count + j, tokens, 16, dim), keys[count + j])
            add_times.append(time.perf_counter() - t0)
        at_cap = mem.stats().last_rebalance
    # the worst case: the cap halved at reopen, so every segment is re-merged
    t0 = time.perf_counter()
    with TokenMemory(path, cap_tokens=cap // 2) as mem:
        full = mem.stats().last_rebalance
    reopen = time.perf_counter() - t0
    shutil.rmtree(path, ignore_errors=True)
    return {
        "segments": count,
        "tokens_per_segment": tokens,
        "dim": dim,
        "build_seconds": build,
        "add_at_cap_seconds": add_times,
        "rebalance_at_cap": at_cap.__dict__ if at_cap else None,
        "full_rebalance": full.__dict__ if full else None,
        "reopen_with_half_cap_seconds": reopen,
    }


def bench_dtypes(
    root: Path, dim: int = 896, ratio: float = 0.15, seg_frames: int = 16, seconds: int = 3600
) -> dict[str, Any]:
    """A camera-hour at 1 fps (196 tokens a frame, segments of 16 frames at 15%) under a byte
    cap of 1% of its raw float16 tokens, for each stored token dtype: bytes on disk and tokens
    held after ``seconds`` of footage (every dtype's cap is full after about 13 minutes, and from
    then on the bytes stay put, so 1200 s gives the bytes of a camera-hour)."""
    raw_tokens = 3600 * 196
    cap_bytes = int(0.01 * raw_tokens * (2 * dim + 40))
    segments = seconds // seg_frames
    keys = unit_keys(segments, seed=7)
    out: dict[str, Any] = {"cap_bytes": cap_bytes, "segments": segments, "seconds": seconds}
    for dtype in ("float16", "int8", "int4"):
        path = root / f"dtype-{dtype}"
        shutil.rmtree(path, ignore_errors=True)
        with TokenMemory(path, cap_bytes=cap_bytes, token_dtype=dtype) as mem:
            for i in range(segments):
                mem.add(synthetic_segment(i, round(ratio * seg_frames * 196), seg_frames, dim), keys[i])
            stats = mem.stats()
        out[dtype] = {
            "tokens_held": stats.tokens_held,
            "token_cap": stats.token_cap,
            "payload_bytes": stats.bytes_held,
            "shard_bytes": _sizes((path / "shards").rglob("*.safetensors")),
            "disk_bytes": stats.disk_bytes,
        }
        shutil.rmtree(path, ignore_errors=True)
    return out


def bench_hours(
    root: Path, hours: float, dim: int = 896, cap_fraction: float = 0.01, ratio: float = 0.15, seg_frames: int = 16
) -> dict[str, Any]:
    """1 fps, 196 tokens per frame; segments of 16 frames compressed at 15% arrive; cap = 1% of raw."""
    path = root / "hours"
    shutil.rmtree(path, ignore_errors=True)
    frames_per_hour = 3600
    cap = int(cap_fraction * frames_per_hour * 196)
    segments = int(hours * frames_per_hour / seg_frames)
    per_hour = int(frames_per_hour / seg_frames)
    keys = unit_keys(segments, seed=5)
    rss, held = [], []
    t0 = time.perf_counter()
    with TokenMemory(path, cap_tokens=cap) as mem:
        for i in range(segments):
            mem.add(synthetic_segment(i, round(ratio * seg_frames * 196), seg_frames, dim), keys[i])
            stats_tokens = mem.tokens_held
            held.append(stats_tokens)
            if stats_tokens > cap:
                raise AssertionError(f"cap exceeded after add {i}: {stats_tokens} > {cap}")
            if i % 25 == 0 or i == segments - 1:
                rss.append({"segments": i + 1, "hours": (i + 1) * seg_frames / 3600, "rss_mb": rss_mb()})
            if i + 1 == min(per_hour, segments):  # (the whole run, when shorter than an hour)
                first_hour = mem.stats()
        final = mem.stats()
    wall = time.perf_counter() - t0
    shutil.rmtree(path, ignore_errors=True)
    return {
        "hours": hours,
        "cap_tokens": cap,
        "segments": segments,
        "max_tokens_held": max(held),
        "disk_bytes_after_1h": first_hour.disk_bytes,
        "payload_bytes_after_1h": first_hour.bytes_held,
        "disk_bytes_final": final.disk_bytes,
        "segments_live": final.segments_live,
        "segments_evicted": final.segments_evicted,
        "rss": rss,
        "seconds": wall,
        "mean_add_ms": wall / segments * 1e3,
    }


def run_memory_benchmark(
    search_sizes: tuple[int, ...] = (10_000, 100_000),
    rebalance_segments: int = 10_000,
    hours: float = 4.0,
    root: Path | None = None,
    progress: Any = None,
    dtype_seconds: int = 1200,
    index_sizes: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Search at each size through the memory (the default index and exact Flat), the key index
    alone at ``index_sizes`` (10^6: adding that many segments one transaction at a time through
    the writer would take hours on this CPU), bytes per camera-hour for each token dtype,
    rebalance at ``rebalance_segments``, ``hours`` of 1 fps."""
    say = progress.log if progress is not None else (lambda *_: None)
    root = root or Path(tempfile.mkdtemp(prefix="streamvid-membench-"))
    root.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cpus", "torch": torch.__version__}
    report["search"] = []
    for n in search_sizes:
        report["search"].append(bench_search(root, n, progress=progress))
        say(f"search at {n} segments: done")
    report["index_only"] = []
    for n in index_sizes:
        report["index_only"].append(bench_index(n, kinds=("embedding",)))
        say(f"index alone at {n} keys: done")
    report["dtypes"] = bench_dtypes(root, seconds=dtype_seconds)
    say("token dtypes: done")
    report["rebalance"] = bench_rebalance(root, rebalance_segments, 20, 896)
    say("rebalance: done")
    report["hours"] = bench_hours(root, hours)
    return report


def run(profile: Any, progress: Any = None) -> dict[str, Any]:
    return run_memory_benchmark(
        profile.memory_search_sizes,
        profile.memory_rebalance_segments,
        profile.memory_hours,
        progress=progress,
        dtype_seconds=getattr(profile, "memory_dtype_seconds", 1200),  # not a profile field (yet)
        index_sizes=getattr(profile, "memory_index_sizes", ()),
    )


def summary(report: dict[str, Any]) -> list[str]:
    """The result as printed lines."""
    lines = []
    for row in report["search"]:
        for label in ("default", "exact"):
            r = row[label]
            lines.append(
                f"search @ {row['segments']:>6} segments, {label} {r['factory']:<18}: "
                f"p50 {r['plain']['p50_ms']:.3f} ms, "
                f"p99 {r['plain']['p99_ms']:.3f} ms; time-filtered p50 {r['time_filter']['p50_ms']:.3f} ms, "
                f"p99 {r['time_filter']['p99_ms']:.3f} ms; recall@10 {r['recall_at_10']:.4f}"
            )
        if "isotropic_recall_at_10" in row:
            lines.append(
                f"search @ {row['segments']:>6} segments, same index on isotropic keys (worst case): "
                f"p50 {row['isotropic_p50_ms']:.3f} ms, recall@10 {row['isotropic_recall_at_10']:.4f}"
            )
        m = row["rss_mb"]
        grew = (m["full_index_bytes"] - m["tenth_index_bytes"]) / 2**20
        live = f"{m.get('tenth_live', '?')} -> {m.get('full_live', '?')}"
        lines.append(
            f"RSS @ {row['segments'] // 10} -> {row['segments']} segments: {m['tenth']:.0f} -> {m['full']:.0f} MB "
            f"(+{m['full'] - m['tenth']:.0f}); index files {m['tenth_index_bytes'] / 2**20:.1f} -> "
            f"{m['full_index_bytes'] / 2**20:.1f} MiB (+{grew:.0f}); live segments {live} "
            f"(no cap binds); adds {row['add_seconds']:.1f} s, "
            f"index ready {row['build_seconds']:.1f} s"
        )
    for row in report.get("index_only", []):
        for label in [k for k in ("embedding", "isotropic") if k in row]:
            r = row[label]
            lines.append(
                f"index alone @ {row['segments']} keys, {row['factory']}, {label} keys: built in "
                f"{r['build_seconds']:.1f} s; p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms; "
                f"recall@10 {r['recall_at_10']:.4f}"
            )
    if "dtypes" in report:
        d = report["dtypes"]
        for dtype in ("float16", "int8", "int4"):
            r = d[dtype]
            lines.append(
                f"{d.get('seconds', 3600)} s of a camera at 1 fps, byte cap {d['cap_bytes'] / 2**20:.2f} MiB "
                f"(1% of a raw hour), {dtype:<7}: "
                f"{r['tokens_held']}/{r['token_cap']} tokens held, shards {r['shard_bytes'] / 2**20:.2f} MiB, "
                f"disk {r['disk_bytes'] / 2**20:.2f} MiB"
            )
    r = report["rebalance"]
    adds = ", ".join(f"{s:.3f}" for s in r["add_at_cap_seconds"])
    touched = r["rebalance_at_cap"]["touched"] if r["rebalance_at_cap"] else 0
    lines.append(
        f"rebalance @ {r['segments']} segments: add at the cap {adds} s ({touched} re-merged); "
        f"full re-merge of every segment {r['full_rebalance']['seconds']:.1f} s"
    )
    h = report["hours"]
    rss = [p["rss_mb"] for p in h["rss"]]
    lines.append(
        f"{h['hours']} h at 1 fps (cap {h['cap_tokens']} tokens = 1% of raw): max held {h['max_tokens_held']}, "
        f"disk after 1 h {h['disk_bytes_after_1h'] / 2**20:.1f} MiB "
        f"(payload {h['payload_bytes_after_1h'] / 2**20:.1f} MiB), "
        f"RSS {rss[0]:.0f} -> {rss[len(rss) // 2]:.0f} -> {rss[-1]:.0f} MB, {h['mean_add_ms']:.1f} ms per add"
    )
    return lines


def markdown(result: dict[str, Any], images: str) -> str:
    rows = []
    for s in result["search"]:
        for label in ("default", "exact"):
            r = s[label]
            rows.append(
                [
                    s["segments"],
                    f"{label} ({r['factory']})",
                    f"{r['plain']['p50_ms']:.3f}",
                    f"{r['plain']['p99_ms']:.3f}",
                    f"{r['time_filter']['p50_ms']:.3f}",
                    f"{r['recall_at_10']:.4f}",
                ]
            )
    for s in result.get("index_only", []):
        for label in [k for k in ("embedding", "isotropic") if k in s]:
            r = s[label]
            rows.append(
                [
                    s["segments"],
                    f"index alone ({s['factory']}), {label} keys",
                    f"{r['p50_ms']:.3f}",
                    f"{r['p99_ms']:.3f}",
                    "",
                    f"{r['recall_at_10']:.4f}",
                ]
            )
    rb, h = result["rebalance"], result["hours"]
    rss = [p["rss_mb"] for p in h["rss"]]
    dtype_rows = []
    if "dtypes" in result:
        d = result["dtypes"]
        dtype_rows = [
            [
                name,
                d[name]["tokens_held"],
                f"{d[name]['shard_bytes'] / 2**20:.2f}",
                f"{d[name]['disk_bytes'] / 2**20:.2f}",
            ]
            for name in ("float16", "int8", "int4")
        ]
    return "\n".join(
        [
            "## Token memory",
            "",
            table(["segments", "index", "p50 ms", "p99 ms", "filtered p50 ms", "recall@10"], rows),
            "",
            "The writer's RSS as each searched memory grew (no cap binds: every segment is live):",
            "",
            *[f"- {line}" for line in summary(result) if line.startswith("RSS @")],
            "",
            f"Rebalance at {rb['segments']} segments: an add at the cap takes "
            f"{', '.join(f'{x:.3f}' for x in rb['add_at_cap_seconds'])} s; re-merging every segment "
            f"(cap halved) {rb['full_rebalance']['seconds']:.1f} s.",
            "",
            f"{h['hours']:.0f} h at 1 fps under a 1% cap ({h['cap_tokens']} tokens): at most "
            f"{h['max_tokens_held']} held; {h['disk_bytes_after_1h'] / 2**20:.1f} MiB on disk after one hour "
            f"({h['payload_bytes_after_1h'] / 2**20:.1f} MiB of tokens); RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB.",
            "",
            "Stored token dtypes, one camera at 1 fps under a byte cap of 1% of a raw float16 hour:",
            "",
            table(["dtype", "tokens held", "shard MiB", "disk MiB"], dtype_rows) if dtype_rows else "",
            "",
        ]
    )


PART = Part("memory", run, markdown)
