"""The live path, measured in one run: frame-to-searchable latency, encoder batching across
streams, question latency against memory length under one prompt budget, budget use.

- latency: a paced live source (frames yielded in real time, ``fps`` per second) into a memory
  through ``build_ingest`` with the tiny LLaVA-OneVision checkpoint: the wall time from a frame's
  arrival to the moment its segment is stored (searchable), p50 / p95, against the target
  max_len / fps + 200 ms;
- batching: 1, 2, 4 streams encoding micro-batches through one shared ``EncoderWorker`` vs each
  stream calling the tower alone, frames per second (gain = shared / alone);
- questions: memories of 1 min, 1 h and 10 h of 1 fps video (16-frame segments at 15%) under a
  cap of 1% of the raw tokens, the same ``max_visual_tokens`` for every question; median
  question latency and the ratio 10 h / 1 min (target <= 1.3), and budget use
  (visual tokens in the prompt / max_visual_tokens, target >= 0.9 where the memory holds more).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.ingest import EncoderWorker, build_ingest
from agents.qa import VideoQA
from bench.memory_speed import KEY_DIM, synthetic_segment, unit_keys
from bench.parts import Part
from bench.random_models import tiny_llava
from memory import TokenMemory
from streamvid import create_compressor
from streamvid.embedders import NoEmbedder
from streamvid.ingest.sources import IterableSource
from streamvid.models import load_adapter

__all__ = ["PART", "run_live_latency"]


class _KeyEmbedder:
    """Text queries drawn from the stored keys' distribution."""

    dim = KEY_DIM
    recency_only = False

    def __init__(self, seed: int = 5) -> None:
        self.rng = np.random.default_rng(seed)

    def embed_frames(self, frames: Any) -> torch.Tensor:
        raise NotImplementedError("keys are made by the benchmark")

    def embed_text(self, texts: Any) -> torch.Tensor:
        return torch.from_numpy(unit_keys(len(texts), int(self.rng.integers(1 << 30))))


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _frames(count: int, size: int = 56, seed: int = 0) -> list[np.ndarray]:
    """Scenes of 12 frames: a textured colour each, so DySeg has cuts to find."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(-20, 20, (size, size, 3))
    colours = rng.integers(40, 215, (count // 12 + 1, 3))
    return [np.clip(colours[i // 12] + texture, 0, 255).astype(np.uint8) for i in range(count)]


def measure_latency(llm: Any, root: Path, *, seconds: float, fps: float, max_len: int) -> dict[str, Any]:
    """Frame arrival -> segment stored, on a paced live source."""
    frames = _frames(int(seconds * fps))
    arrived: dict[float, float] = {}
    latencies: list[float] = []

    def paced():
        start = time.monotonic()
        for i, img in enumerate(frames):
            wait = start + i / fps - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            t = round(i / fps, 6)
            arrived[t] = time.monotonic()
            yield t, img

    def stored(segment, _sid):
        now = time.monotonic()
        latencies.extend(now - arrived[round(float(t), 6)] for t in segment.timestamps)

    memory = TokenMemory(root / "latency", cap_tokens=1_000_000)
    job = build_ingest(
        IterableSource(paced(), live=True),
        memory,
        llm,
        NoEmbedder(),
        create_compressor("infomerge", ratio=0.25),
        stream_id="cam",
        fps=None,
        max_size=None,
        max_len=max_len,
        live=True,
        micro_batch=4,
        on_stored=stored,
    )
    job.run()
    memory.close()
    target = max_len / fps + 0.2
    return {
        "frames": len(latencies),
        "fps": fps,
        "max_len": max_len,
        "p50_s": _pct(latencies, 50),
        "p95_s": _pct(latencies, 95),
        "target_p95_s": target,
        "dropped": job.stats.frames_dropped,
    }


def measure_batching(llm: Any, *, frames_per_stream: int, micro_batch: int) -> dict[str, Any]:
    """Frames per second with 1, 2, 4 streams: shared EncoderWorker vs each stream alone."""
    rows = []
    warm = torch.from_numpy(np.stack(_frames(micro_batch)))
    llm.encode(warm, torch.arange(micro_batch, dtype=torch.float64))  # first-call costs out of the timings
    for streams in (1, 2, 4):
        clips = [torch.from_numpy(np.stack(_frames(frames_per_stream, seed=s))) for s in range(streams)]
        times = torch.arange(frames_per_stream, dtype=torch.float64)
        t0 = time.perf_counter()
        for clip in clips:  # alone: each stream's micro-batches, one tower call each
            for a in range(0, frames_per_stream, micro_batch):
                llm.encode(clip[a : a + micro_batch], times[a : a + micro_batch])
        alone = streams * frames_per_stream / (time.perf_counter() - t0)
        worker = EncoderWorker(llm, max_batch=micro_batch * streams)

        threads = [
            threading.Thread(target=_feed, args=(worker, f"s{s}", clips[s], times, micro_batch)) for s in range(streams)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        shared = streams * frames_per_stream / (time.perf_counter() - t0)
        calls = worker.batches
        worker.close()
        rows.append(
            {"streams": streams, "alone_fps": alone, "shared_fps": shared, "gain": shared / alone, "tower_calls": calls}
        )
    return {"micro_batch": micro_batch, "rows": rows}


def _feed(worker: EncoderWorker, stream: str, clip: torch.Tensor, times: torch.Tensor, micro_batch: int) -> None:
    for a in range(0, clip.shape[0], micro_batch):
        worker.encode(stream, clip[a : a + micro_batch], times[a : a + micro_batch])


def measure_questions(
    llm: Any, root: Path, *, lengths_s: tuple[float, ...], questions: int, max_visual_tokens: int
) -> dict[str, Any]:
    """Question latency over memories of each length (1 fps, 16-frame segments, 1% cap)."""
    dim, seg_frames, per_frame = llm.hidden_size, 16, 196
    rows = []
    for seconds in lengths_s:
        segments = max(1, int(seconds) // seg_frames)
        memory = TokenMemory(root / f"q{int(seconds)}", cap_tokens=max(segments, int(0.01 * seconds * per_frame)))
        keys = unit_keys(segments, seed=3)
        t0 = time.perf_counter()
        for i in range(segments):
            memory.add(synthetic_segment(i, round(0.15 * seg_frames * per_frame), seg_frames, dim), keys[i])
        build_s = time.perf_counter() - t0
        qa = VideoQA(
            llm, memory, _KeyEmbedder(), max_new_tokens=4, history_turns=0, max_visual_tokens=max_visual_tokens
        )
        qa.ask("warm up", remember=False)
        totals, uses, shown = [], [], []
        for _ in range(questions):
            answer = qa.ask("What happened?", remember=False)
            totals.append(answer.timings["total"])
            uses.append(answer.visual_tokens / max_visual_tokens)
            shown.append(len(answer.segments))
        held = memory.tokens_held
        memory.close()
        rows.append(
            {
                "seconds": seconds,
                "segments": segments,
                "tokens_held": held,
                "build_s": build_s,
                "median_total_s": statistics.median(totals),
                "budget_use": statistics.median(uses),
                "segments_shown": statistics.median(shown),
                "holds_more": held > max_visual_tokens,
            }
        )
    first, last = rows[0], rows[-1]
    return {
        "max_visual_tokens": max_visual_tokens,
        "rows": rows,
        "ratio_longest_shortest": last["median_total_s"] / first["median_total_s"],
    }


def run_live_latency(
    *,
    seconds: float = 6.0,
    fps: float = 8.0,
    max_len: int = 8,
    frames_per_stream: int = 32,
    micro_batch: int = 4,
    lengths_s: tuple[float, ...] = (60.0, 3600.0, 36000.0),
    questions: int = 3,
    max_visual_tokens: int = 1024,
    root: Path | None = None,
) -> dict[str, Any]:
    root = root or Path(tempfile.mkdtemp(prefix="streamvid-live-"))
    llm = load_adapter(str(tiny_llava(root / "llava")), device="cpu", dtype=torch.float32)
    return {
        "model": "tiny-llava-onevision (random weights, CPU)",
        "latency": measure_latency(llm, root, seconds=seconds, fps=fps, max_len=max_len),
        "batching": measure_batching(llm, frames_per_stream=frames_per_stream, micro_batch=micro_batch),
        "questions": measure_questions(
            llm, root, lengths_s=lengths_s, questions=questions, max_visual_tokens=max_visual_tokens
        ),
    }


def run(profile: Any, progress: Any = None) -> dict[str, Any]:
    full = getattr(profile, "name", "quick") == "full"
    return run_live_latency(seconds=20.0 if full else 6.0, questions=5 if full else 3)


def summary(result: dict[str, Any]) -> str:
    lat, q = result["latency"], result["questions"]
    gains = ", ".join(f"{r['streams']} streams {r['gain']:.2f}x" for r in result["batching"]["rows"])
    uses = ", ".join(f"{r['seconds'] / 3600:g} h {r['budget_use']:.2f}" for r in q["rows"])
    lats = ", ".join(f"{r['seconds'] / 3600:g} h {r['median_total_s'] * 1e3:.1f} ms" for r in q["rows"])
    return (
        f"frame-to-searchable p50 {lat['p50_s'] * 1e3:.0f} ms, p95 {lat['p95_s'] * 1e3:.0f} ms "
        f"(target {lat['target_p95_s'] * 1e3:.0f} ms; {lat['frames']} frames at {lat['fps']:g} fps, "
        f"max_len {lat['max_len']}, {lat['dropped']} dropped); encoder batching gain: {gains}; "
        f"question latency ({q['max_visual_tokens']} visual tokens): {lats}; "
        f"ratio longest / shortest {q['ratio_longest_shortest']:.2f} (target <= 1.3); budget use: {uses}"
    )


def markdown(result: dict[str, Any], images: str) -> str:
    lat, q = result["latency"], result["questions"]
    lines = [
        "## Live path",
        "",
        f"{result['model']}. Frame arrival to searchable (segment stored) on a paced live source: "
        f"p50 {lat['p50_s'] * 1e3:.0f} ms, p95 {lat['p95_s'] * 1e3:.0f} ms; target p95 <= one max_len "
        f"of frames + 200 ms = {lat['target_p95_s'] * 1e3:.0f} ms.",
        "",
        "| streams | alone (frames/s) | shared encoder (frames/s) | gain | tower calls |",
        "|---|---|---|---|---|",
        *(
            f"| {r['streams']} | {r['alone_fps']:.0f} | {r['shared_fps']:.0f} | {r['gain']:.2f} | {r['tower_calls']} |"
            for r in result["batching"]["rows"]
        ),
        "",
        f"Questions with max_visual_tokens = {q['max_visual_tokens']}, 1% cap:",
        "",
        "| memory | segments | tokens held | median question (ms) | segments shown | budget use |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['seconds'] / 3600:g} h | {r['segments']} | {r['tokens_held']} | {r['median_total_s'] * 1e3:.1f} "
            f"| {r['segments_shown']:g} | {r['budget_use']:.2f} |"
            for r in q["rows"]
        ),
        "",
        f"Ratio longest / shortest memory: {q['ratio_longest_shortest']:.2f} (target <= 1.3).",
        "",
    ]
    return "\n".join(lines)


def ratios(result: dict[str, Any]) -> dict[str, float]:
    lat, q = result["latency"], result["questions"]
    rows = result["batching"]["rows"]
    return {
        "live p95 /\ntarget": lat["p95_s"] / lat["target_p95_s"],
        "encoder gain,\n4 streams": rows[-1]["gain"],
        "question 10 h /\n1 min": q["ratio_longest_shortest"],
        "budget use,\n10 h": q["rows"][-1]["budget_use"],
    }


PART = Part("live", run, markdown, ratios=ratios)


if __name__ == "__main__":
    import json
    import sys

    out = run_live_latency(lengths_s=tuple(float(x) for x in sys.argv[1:]) or (60.0, 3600.0, 36000.0))
    print(summary(out))
    print(json.dumps(out, indent=1, default=float))
