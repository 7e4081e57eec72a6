"""Compression time per clip next to a vision encoder's time on the same frames.

The encoder is a SigLIP-so400m-shaped vision tower (random weights, built from its
config: its cost is the real model's cost) plus LLaVA-OneVision's two-layer
projector into the LLM width D and 2x2 pooling to 14 x 14 tokens per frame.
Compression runs on [32, 14, 14, D] grids for D = 896 (Qwen2-0.5B) and
D = 3584 (Qwen2-7B). Everything runs in one process on one device.
"""

from __future__ import annotations

import platform
import statistics
import time
from functools import partial
from typing import Any

import torch

from bench.parts import Part
from bench.random_models import siglip_so400m_encoder
from bench.report import table
from streamvid.compress import create_compressor, list_compressors
from streamvid.errors import ConfigError
from streamvid.types import TokenGrid

__all__ = ["run_compression_benchmark", "print_report"]

RATIOS = (0.25, 0.15, 0.10, 0.05)
DIMS = (896, 3584)


def _encode_all(encode, pixels: torch.Tensor, batch: int = 4) -> torch.Tensor:
    """Every frame through the encoder in batches. pixels: [F, 3, 384, 384] -> [F, 14, 14, D]."""
    return torch.cat([encode(pixels[i : i + batch]) for i in range(0, pixels.shape[0], batch)])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds (one warm-up run first)."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def run_compression_benchmark(
    frames: int = 32,
    encoder_frames: int = 32,
    repeats: int = 3,
    device: str = "cpu",
    dims: tuple[int, ...] = DIMS,
    ratios: tuple[float, ...] = RATIOS,
    progress: Any = None,
) -> dict[str, Any]:
    """Time every registered compressor at every ratio and D, and the encoder on the same frames.

    The encoder runs on ``encoder_frames`` frames (batch of 4); its per-clip time is
    scaled to ``frames`` when fewer are used, and the report says so.
    """
    if not 1 <= encoder_frames <= frames:
        raise ConfigError(f"encoder_frames must be in [1, {frames}], got {encoder_frames}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for but no CUDA device is visible; use --device cpu")
    enc_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    report: dict[str, Any] = {
        "machine": machine_description(dev),
        "device": str(dev),
        "torch": torch.__version__,
        "frames": frames,
        "tokens_per_frame": 196,
        "encoder": {},
        "compression": [],
    }
    for dim in dims:
        say = progress.log if progress is not None else (lambda *_: None)
        say(f"encoder (SigLIP-so400m + projector to D={dim}) on {encoder_frames} frames ...")
        encode = siglip_so400m_encoder(dim, dev, enc_dtype)
        pixels = torch.randn(encoder_frames, 3, 384, 384, generator=gen).to(dev, enc_dtype)
        run_encoder = partial(_encode_all, encode, pixels)
        tokens = run_encoder()
        enc_ms = _time(run_encoder, dev, repeats=1) * frames / encoder_frames
        report["encoder"][str(dim)] = {
            "ms_per_clip": enc_ms,
            "measured_frames": encoder_frames,
            "dtype": str(enc_dtype),
        }
        # a clip of `frames` frames built from the encoder's own outputs
        reps = -(-frames // encoder_frames)
        grid_tokens = tokens.float().repeat(reps, 1, 1, 1)[:frames]
        grid_tokens = grid_tokens + 0.05 * torch.randn(grid_tokens.shape, generator=gen).to(dev)
        grid = TokenGrid(grid_tokens.to(enc_dtype), torch.arange(frames, dtype=torch.float64) * 0.5)
        for ratio in ratios:
            for name in list_compressors():
                if name == "keep_all" and ratio != ratios[0]:
                    continue
                compressor = create_compressor(name, ratio=ratio)
                ms = _time(partial(compressor.compress, grid), dev, repeats)
                report["compression"].append(
                    {
                        "method": name,
                        "ratio": 1.0 if name == "keep_all" else ratio,
                        "dim": dim,
                        "ms_per_clip": ms,
                        "fraction_of_encoder": ms / enc_ms,
                    }
                )
            say(f"  D={dim} ratio={ratio}: done")
    return report


def print_report(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    for dim, enc in report["encoder"].items():
        table = Table(
            title=(
                f"D={dim}: compression of {report['frames']} frames x 196 tokens vs the encoder "
                f"({enc['ms_per_clip']:.0f} ms per clip, {enc['dtype']}) on {report['machine']}"
            )
        )
        table.add_column("method", no_wrap=True)
        ratios = sorted({r["ratio"] for r in report["compression"] if r["method"] != "keep_all"}, reverse=True)
        for ratio in ratios:
            table.add_column(f"{ratio:.0%} ms", justify="right")
            table.add_column(f"{ratio:.0%} / enc", justify="right")
        for method in sorted({r["method"] for r in report["compression"]}):
            cells = []
            for ratio in ratios:
                row = next(
                    (
                        r
                        for r in report["compression"]
                        if r["method"] == method
                        and r["dim"] == int(dim)
                        and (r["ratio"] == ratio or method == "keep_all")
                    ),
                    None,
                )
                cells += (
                    ["-", "-"] if row is None else [f"{row['ms_per_clip']:.1f}", f"{row['fraction_of_encoder']:.2%}"]
                )
            table.add_row(method, *cells)
        console.print(table)


def run(profile: Any, progress: Any = None) -> dict[str, Any]:
    return run_compression_benchmark(
        encoder_frames=profile.compression_encoder_frames, repeats=profile.compression_repeats, progress=progress
    )


def markdown(result: dict[str, Any], images: str) -> str:
    parts = ["## Compression time vs the vision encoder", ""]
    for dim, enc in result["encoder"].items():
        rows = [r for r in result["compression"] if r["dim"] == int(dim)]
        parts += [
            f"D={dim}: encoder (SigLIP-so400m shape + projector) {enc['ms_per_clip']:.0f} ms per "
            f"32-frame clip (measured on {enc['measured_frames']} frames).",
            "",
            table(
                ["method", "ratio", "ms per clip", "% of encoder"],
                [
                    [
                        r["method"],
                        f"{r['ratio']:.0%}",
                        f"{r['ms_per_clip']:.1f}",
                        f"{100 * r['fraction_of_encoder']:.2f}",
                    ]
                    for r in rows
                ],
            ),
            "",
        ]
    return "\n".join(parts)


def ratios(result: dict[str, Any]) -> dict[str, float]:
    return {
        f"compression / encoder\n(D={r['dim']}, 15%) %": 100 * r["fraction_of_encoder"]
        for r in result["compression"]
        if r["method"] == "infomerge" and r["ratio"] == 0.15
    }


PART = Part("compression", run, markdown, ratios=ratios)
