"""Prefill time with all visual tokens vs InfoMerge-compressed, same model, same run.

Families (random weights; the cost is the real shape's cost):

- ``llava_onevision``: the Qwen2-0.5B shape (LLaVA-OneVision-0.5B's LM), every layer.
- ``qwen3_vl``: Qwen3-VL-8B's LM shape at 4 layers, with 3 DeepStack levels carried through
  compression and added at the visual positions (see :func:`bench.random_models.qwen3_shape`).
- ``qwen3_5``: the Qwen3.5 hybrid shape at 4 layers (3 Gated-DeltaNet + 1 full attention).

Every family gets the same 32 x 14 x 14 visual tokens (the Qwen3 family lays them out one
``<t seconds>`` group per temporal token). The compressed timings include compression and
prefill assembly; the full timing includes assembly.
"""

from __future__ import annotations

import statistics
import time
from functools import partial
from typing import Any

import torch

from bench.parts import Part
from bench.random_models import build_llava_with_lm, build_qwen3_with_lm
from bench.report import table
from streamvid.compress import create_compressor
from streamvid.errors import ConfigError
from streamvid.types import TokenGrid

__all__ = ["run_prefill_benchmark"]


def _prefill(llm: Any, question: str, segments: list) -> int:
    """Assemble and run the prefill (logits for the last position only). Returns its length."""
    pre = llm.build_prefill(question, segments)
    llm.run_prefill(pre)
    return pre.length


def _compress_and_prefill(llm: Any, question: str, compressor: Any, grid: TokenGrid) -> int:
    return _prefill(llm, question, compressor.compress(grid))


def _timed(fn, device: torch.device, repeats: int) -> tuple[float, Any]:
    out = None
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


FAMILIES = ("llava_onevision", "qwen3_vl", "qwen3_5")
_LM = {
    "qwen3_vl": "Qwen3-VL-8B LM shape, 4 layers, 3 DeepStack levels",
    "qwen3_5": "Qwen3.5 hybrid shape, 4 layers (3 linear + 1 full)",
}


def _build(family: str, size: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, str]:
    if family == "llava_onevision":
        return build_llava_with_lm(size, device, dtype), f"Qwen2-{size} shape"
    if family in _LM:
        return build_qwen3_with_lm(family, device, dtype), _LM[family]
    raise ConfigError(f"unknown prefill benchmark family {family!r}; choose from {', '.join(FAMILIES)}")


def _grid(llm: Any, frames: int, device: torch.device, dtype: torch.dtype) -> TokenGrid:
    """The temporal coherence of real video: 4 scenes, each frame its scene plus 10% variation;
    DeepStack levels (when the model has them) built the same way."""
    hidden = llm.hidden_size
    gen = torch.Generator().manual_seed(0)
    levels = getattr(llm, "deepstack_levels", 0)

    def clip() -> torch.Tensor:
        scenes = torch.randn(4, 1, 14, 14, hidden, generator=gen) * 0.02
        tokens = scenes.repeat_interleave(frames // 4, dim=0).reshape(frames, 14, 14, hidden)
        return (tokens + 0.002 * torch.randn(frames, 14, 14, hidden, generator=gen)).to(device, dtype)

    tokens = clip()
    deep = torch.stack([clip() for _ in range(levels)]) if levels else None
    return TokenGrid(tokens, torch.arange(frames, dtype=torch.float64) * 0.5, deepstack=deep)


def run_prefill_benchmark(
    size: str = "0.5b",
    device: str = "cpu",
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    frames: int = 32,
    ratios: tuple[float, ...] = (0.25, 0.15, 0.10),
    repeats: int = 1,
    progress: Any = None,
    families: tuple[str, ...] = FAMILIES,
) -> dict[str, Any]:
    """Full vs InfoMerge prefill for each family and dtype; ``size`` is the LLaVA-OneVision LM's."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for but no CUDA device is visible")
    say = progress.log if progress is not None else (lambda *_: None)
    report: dict[str, Any] = {
        "lm": f"Qwen2-{size} shape, random weights",
        "device": str(dev),
        "frames": frames,
        "tokens_per_frame": 196,
        "rows": [],
    }
    question = "What happens in the video?"
    for family in families:
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            llm, lm = _build(family, size, dev, dtype)
            grid = _grid(llm, frames, dev, dtype)
            base = {"family": family, "lm": f"{lm}, random weights", "dtype": dtype_name}
            keep = create_compressor("keep_all").compress(grid, boundaries=[0, frames])
            _prefill(llm, question, keep)  # warm-up
            full_s, full_len = _timed(partial(_prefill, llm, question, keep), dev, repeats)
            say(f"{family} {dtype_name}: full prefill {full_len} tokens {full_s:.2f} s")
            report["rows"].append(
                {**base, "method": "keep_all", "ratio": 1.0, "tokens": full_len, "seconds": full_s, "speedup": 1.0}
            )
            for ratio in ratios:
                comp = create_compressor("infomerge", ratio=ratio)
                secs, length = _timed(partial(_compress_and_prefill, llm, question, comp, grid), dev, repeats)
                c_secs, _ = _timed(partial(comp.compress, grid), dev, repeats)
                say(
                    f"{family} {dtype_name}: infomerge {ratio:.0%} {length} tokens {secs:.2f} s "
                    f"(compression {c_secs:.3f} s)"
                )
                report["rows"].append(
                    {
                        **base,
                        "method": "infomerge",
                        "ratio": ratio,
                        "tokens": length,
                        "seconds": secs,
                        "compression_seconds": c_secs,
                        "speedup": full_s / secs,
                    }
                )
            del llm, grid, keep
    return report


def run(profile: Any, progress: Any = None) -> dict[str, Any]:
    return run_prefill_benchmark(dtypes=profile.prefill_dtypes, repeats=profile.prefill_repeats, progress=progress)


def markdown(result: dict[str, Any], images: str) -> str:
    rows = [
        [
            r.get("lm", result["lm"]),
            r["dtype"],
            r["method"],
            f"{r['ratio']:.0%}",
            r["tokens"],
            f"{r['seconds']:.2f}",
            f"{r['speedup']:.2f}x",
        ]
        for r in result["rows"]
    ]
    return "\n".join(
        [
            "## Prefill, all tokens vs InfoMerge",
            "",
            table(["LM", "dtype", "method", "ratio", "tokens", "seconds", "speed-up"], rows),
            "",
        ]
    )


def ratios(result: dict[str, Any]) -> dict[str, float]:
    return {
        f"prefill speed-up\n{r.get('family', 'llava_onevision')} {r['dtype']} {r['ratio']:.0%}": r["speedup"]
        for r in result["rows"]
        if r["method"] == "infomerge"
    }


PART = Part("prefill", run, markdown, ratios=ratios)
