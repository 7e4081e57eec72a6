"""Cluster speed (agents/cluster on Ray): ingest throughput with 1, 2 and 4 encoder actors on the same
input, with the scaling efficiency, and the latency of a question's fan-out over 1, 4 and 16 shards.

Ingest: ``streams`` copies of the sample clip (streamvid.sample) as file streams, ingested by a
fresh cluster of N encoder actors (tiny random checkpoint; actors are up before the clock starts);
frames/s = sampled frames stored / wall seconds from the first ``add_stream`` to the last stream
finished (control plane included). Efficiency(N) = fps(N) / (N fps(1)). Before the timed runs, one
untimed run (one actor, one stream) pays Ray's first-use costs (worker start, imports, object
store), which would otherwise fall on whichever size runs first; each size then runs ``repeats``
times on fresh clusters and reports its median.

Fan-out: N shards of ``segments`` random segments each, written directly (``add_many``); a
question's read side is timed as a :class:`~agents.cluster.shards.ShardedMemory` does it: the
shards' facts (one task per shard) then a top-k search on every shard (one task per shard) and
the global merge; p50/p95 over ``queries`` warm questions, beside the same calls run in-process
one shard after another (no Ray), so the Ray overhead shows.

``streamvid bench cluster`` runs the small sizes and prints :func:`summary`. Numbers are from
whatever machine runs it: label them (CPU here).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["measure_fan_out", "measure_ingest", "run", "summary"]


def _pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def measure_ingest(
    root: Path,
    encoders: Sequence[int] = (1, 2, 4),
    streams: int = 4,
    fps: float = 2.0,
    max_len: int = 8,
    model: str | None = None,
    device: str = "cpu",
    gpus_per_encoder: float = 0.0,
    repeats: int = 1,
) -> list[dict[str, Any]]:
    """Frames/s through clusters of 1, 2, 4 encoder actors on the same ``streams`` file streams
    (``model``: a checkpoint directory every node reads; default: a tiny random LLaVA-OV), after
    one untimed warm-up run; the median of ``repeats`` runs per size."""
    from agents.cluster import Cluster, ClusterConfig, StreamSpec
    from bench.random_models import tiny_llava
    from streamvid.sample import write_sample_video

    model = model or str(tiny_llava(root / "llava"))
    video = root / "sample.mp4"
    write_sample_video(video)

    def once(name: str, n: int, count: int) -> tuple[int, int, float]:
        """(frames, segments, wall seconds) of ``count`` streams through a fresh cluster of ``n`` actors."""
        config = ClusterConfig(
            root=str(root / name), model=model, embedder="none", ratio=0.5, fps=fps, max_len=max_len,
            dtype="float32" if device == "cpu" else None, encoders=n, cpus_per_encoder=1, answer_cpus=0,
            search_cpus=0.25, cap_tokens=1_000_000, device=device, gpus_per_encoder=gpus_per_encoder,
            rebalance_every=0,
        )  # fmt: skip
        cluster = Cluster(config)
        try:
            cluster.encoder_info()  # every actor constructed (models loaded) before the clock starts
            t0 = time.perf_counter()
            cluster.add_streams([StreamSpec(f"cam{i}", str(video)) for i in range(count)])
            done = cluster.wait(timeout=1800)
            wall = time.perf_counter() - t0
        finally:
            cluster.shutdown(stop_ray=False)
        frames = sum(int(s.get("frames") or 0) for s in done)
        return frames, sum(int(s.get("segments") or 0) for s in done), wall

    once("warm-up", 1, 1)  # Ray's first-use costs, not counted
    rows = []
    for n in encoders:
        runs = [once(f"ingest-{n}-{r}", n, streams) for r in range(repeats)]
        frames, segments, wall = sorted(runs, key=lambda run: run[0] / run[2])[len(runs) // 2]  # the median
        rows.append({"encoders": n, "streams": streams, "frames": frames, "segments": segments, "seconds": wall,
                     "fps": frames / wall if wall > 0 else 0.0, "runs": len(runs)})  # fmt: skip
    base = rows[0]["fps"] / rows[0]["encoders"] if rows and rows[0]["fps"] else 0.0
    for r in rows:
        r["efficiency"] = r["fps"] / (r["encoders"] * base) if base else 0.0
    return rows


def _write_shards(root: Path, count: int, segments: int, dim: int, key_dim: int, seed: int) -> list[Any]:
    from agents.cluster import ShardRef, shard_dir
    from memory import TokenMemory
    from streamvid.compress import create_compressor
    from streamvid.types import TokenGrid

    comp = create_compressor("uniform", ratio=0.5)
    gen = torch.Generator().manual_seed(seed)
    refs = []
    for i in range(count):
        name = f"cam{i}"
        path = shard_dir(root, name)
        segs, keys = [], []
        for j in range(segments):
            grid = TokenGrid(torch.randn(4, 2, 2, dim, generator=gen), torch.arange(4, dtype=torch.float64) + 4 * j,
                             stream_id=name, segment_index=j)  # fmt: skip
            segs += comp.compress(grid, boundaries=[0, 4])
            key = torch.randn(key_dim, generator=gen)
            keys.append((key / key.norm()).numpy())
        with TokenMemory(path, cap_tokens=10**7) as mem:
            mem.add_many(segs, np.stack(keys))
        refs.append(ShardRef(name, i, str(path)))
    return refs


def measure_fan_out(
    root: Path,
    shards: Sequence[int] = (1, 4, 16),
    segments: int = 200,
    queries: int = 20,
    k: int = 8,
    dim: int = 64,
    key_dim: int = 32,
    cpus: float = 0.25,
    warmup: int = 3,
) -> list[dict[str, Any]]:
    """A question's read side (facts + search + merge) over N shards: Ray tasks vs in-process,
    after ``warmup`` untimed questions (which start Ray's worker processes and open the shard
    readers in them: seconds each on a small machine, a cost paid once, not per question)."""
    from agents.cluster.actors import ray_fan_out
    from agents.cluster.shards import ShardedMemory, local_fan_out

    rows = []
    gen = torch.Generator().manual_seed(7)
    for n in shards:
        refs = _write_shards(root / f"fanout-{n}", n, segments, dim, key_dim, seed=n)
        row: dict[str, Any] = {"shards": n, "segments": n * segments}
        for label, fan in (("ray", lambda fn, calls: ray_fan_out(fn, calls, cpus=cpus)), ("local", local_fan_out)):
            times = []
            for q in range(queries + warmup):  # the first ones start Ray's workers and open the readers
                query = torch.randn(key_dim, generator=gen)
                t0 = time.perf_counter()
                memory = ShardedMemory(refs, fan)
                (hits,) = memory.search(query / query.norm(), k=k)
                elapsed = time.perf_counter() - t0
                assert len(hits) == min(k, n * segments) and not memory.unavailable
                if q >= warmup:
                    times.append(elapsed)
            row[f"{label}_p50_ms"] = 1e3 * statistics.median(times)
            row[f"{label}_p95_ms"] = 1e3 * _pct(times, 0.95)
        rows.append(row)
    return rows


def run(
    root: Path | None = None,
    encoders: Sequence[int] = (1, 2, 4),
    streams: int = 4,
    shards: Sequence[int] = (1, 4, 16),
    segments: int = 200,
    queries: int = 20,
    model: str | None = None,
    device: str = "cpu",
    gpus_per_encoder: float = 0.0,
    repeats: int = 1,
) -> dict[str, Any]:
    """Both measurements on a local Ray (started here unless this process is connected already;
    to measure a real cluster, ``ray.init(address="auto")`` first and pass a shared ``root``)."""
    import ray

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    own = not ray.is_initialized()
    if own:
        ray.init(num_cpus=max(encoders) + 2, num_gpus=None if gpus_per_encoder else 0, include_dashboard=False,
                 log_to_driver=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})  # fmt: skip
    tmp = None
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="streamvid-cluster-bench-")
        root = Path(tmp.name)
    try:
        machine = f"{platform.machine()} {os.cpu_count()} CPUs, {'CUDA' if torch.cuda.is_available() else 'CPU'}"
        return {
            "machine": machine,
            "ray": ray.__version__,
            "ingest": measure_ingest(
                root,
                encoders,
                streams,
                model=model,
                device=device,
                gpus_per_encoder=gpus_per_encoder,
                repeats=repeats,
            ),  # fmt: skip
            "fan_out": measure_fan_out(root, shards, segments, queries),
        }
    finally:
        if own:
            ray.shutdown()
        if tmp is not None:
            tmp.cleanup()


def summary(report: dict[str, Any]) -> list[str]:
    """The report as printed lines."""
    lines = [f"cluster speed on {report['machine']} (Ray {report['ray']}); tiny random model, CPU numbers"]
    for r in report["ingest"]:
        lines.append(
            f"ingest {r['encoders']} encoder actor(s), {r['streams']} streams: {r['frames']} frames, "
            f"{r['segments']} segments in {r['seconds']:.1f} s = {r['fps']:.1f} frames/s, "
            f"scaling efficiency {r['efficiency']:.2f} (median of {r.get('runs', 1)})"
        )
    for r in report["fan_out"]:
        lines.append(
            f"fan-out {r['shards']:>2} shard(s), {r['segments']} segments: Ray tasks p50 {r['ray_p50_ms']:.1f} ms "
            f"p95 {r['ray_p95_ms']:.1f} ms; in-process p50 {r['local_p50_ms']:.1f} ms p95 {r['local_p95_ms']:.1f} ms"
        )
    return lines
