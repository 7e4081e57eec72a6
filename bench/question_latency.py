"""End-to-end question latency vs the bare prefill of the same tokens, same run.

    streamvid bench qa [--questions 5] [--dtype float32]

The memory holds an hour of 1 fps video (225 segments of 16 frames x 196 tokens,
D = 896, compressed at 15%) under a cap of 1% of the raw tokens; the LM has the
Qwen2-0.5B shape with random weights. Per question: retrieve + fetch + assemble +
prefill + 16 decoded tokens, and, on the very same Prefill, the bare prefill.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.qa import VideoQA
from bench.memory_speed import synthetic_segment, unit_keys
from bench.parts import Part
from bench.random_models import build_llava_with_lm
from memory import TokenMemory


class _KeyEmbedder:
    """Text queries drawn from the same key distribution as the stored segments."""

    dim = 768
    recency_only = False

    def __init__(self, seed: int = 11) -> None:
        self.rng = np.random.default_rng(seed)

    def embed_frames(self, frames: Any) -> torch.Tensor:
        raise NotImplementedError("keys are made by the benchmark")

    def embed_text(self, texts: Any) -> torch.Tensor:
        return torch.from_numpy(unit_keys(len(texts), int(self.rng.integers(1 << 30))))


def run_question_latency(
    questions: int = 5, dtype: str = "float32", k: int = 4, root: Path | None = None
) -> dict[str, Any]:
    root = root or Path(tempfile.mkdtemp(prefix="streamvid-qabench-"))
    dim, seg_frames, segments = 896, 16, 225
    cap = int(0.01 * 3600 * 196)
    keys = unit_keys(segments, seed=2)
    memory = TokenMemory(root / "mem", cap_tokens=cap)
    for i in range(segments):
        memory.add(synthetic_segment(i, round(0.15 * seg_frames * 196), seg_frames, dim), keys[i])
    llm = build_llava_with_lm("0.5b", torch.device("cpu"), getattr(torch, dtype))
    qa = VideoQA(llm, memory, _KeyEmbedder(), k=k, max_new_tokens=16, history_turns=0)
    qa.ask("warm up", remember=False)
    rows = []
    for i in range(questions):
        t0 = time.perf_counter()
        answer = qa.ask(f"What happens in scene {i}?", remember=False)
        total = time.perf_counter() - t0
        # the bare prefill of exactly the same tokens, nothing else
        segs = memory.get([u.id for u in answer.segments])
        prefill = llm.build_prefill(answer.question, segs)
        t1 = time.perf_counter()
        llm.run_prefill(prefill)
        bare = time.perf_counter() - t1
        t = answer.timings
        overhead = t["retrieve"] + t["assemble"]
        rows.append(
            {
                "prompt_tokens": answer.prompt_tokens,
                "segments": len(answer.segments),
                **t,
                "total_measured": total,
                "bare_prefill": bare,
                "overhead": overhead,
                "overhead_vs_bare_prefill": overhead / bare,
                "prefill_plus_overhead_vs_bare": (t["prefill"] + overhead) / bare,
            }
        )
    memory.close()
    med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    return {
        "lm": "Qwen2-0.5B shape, random weights",
        "dtype": dtype,
        "cap_tokens": cap,
        "segments": segments,
        "k": k,
        "questions": rows,
        "median": med,
    }


def run(profile: Any, progress: Any = None) -> dict[str, Any]:
    return run_question_latency(questions=profile.qa_questions)


def summary(report: dict[str, Any]) -> str:
    m = report["median"]
    return (
        f"median over {len(report['questions'])} questions ({m['prompt_tokens']:.0f} prompt tokens, "
        f"{report['dtype']}): retrieve {m['retrieve'] * 1e3:.1f} ms + assemble {m['assemble'] * 1e3:.1f} ms + "
        f"prefill {m['prefill'] * 1e3:.0f} ms + 16-token decode {m['decode'] * 1e3:.0f} ms = "
        f"{m['total'] * 1e3:.0f} ms; bare prefill {m['bare_prefill'] * 1e3:.0f} ms; memory overhead "
        f"{m['overhead_vs_bare_prefill']:.1%} of the bare prefill"
    )


def markdown(result: dict[str, Any], images: str) -> str:
    q = result["median"]
    return (
        "## Question latency\n\n"
        f"Median over {len(result['questions'])} questions, {q['prompt_tokens']:.0f} prompt tokens: "
        f"retrieve {q['retrieve'] * 1e3:.1f} ms, assemble {q['assemble'] * 1e3:.1f} ms, prefill "
        f"{q['prefill'] * 1e3:.0f} ms, 16-token decode {q['decode'] * 1e3:.0f} ms; bare prefill "
        f"{q['bare_prefill'] * 1e3:.0f} ms. The memory adds {q['overhead_vs_bare_prefill']:.1%} "
        "to the bare prefill.\n"
    )


def ratios(result: dict[str, Any]) -> dict[str, float]:
    return {"memory overhead /\nbare prefill %": 100 * result["median"]["overhead_vs_bare_prefill"]}


PART = Part("qa", run, markdown, ratios=ratios)
