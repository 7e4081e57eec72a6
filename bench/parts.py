"""The registry of benchmark parts, like the compressor registry: by name, lazily imported.

A part is a module with a ``PART`` (:class:`Part`): ``run(profile, progress) -> result``
(a JSON-able dict), ``markdown(result, images) -> str`` (its section of
docs/benchmarks.md, ``images`` the plots' folder name), ``plot(result, out) -> [paths]``
and, for speed parts, ``ratios(result) -> {label: value}`` for the suite's speed plot.
Importing this module imports no part (they pull in torch, transformers, videos).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamvid.errors import UnknownNameError

__all__ = ["PARTS", "Part", "get_part", "list_parts"]


def _no_plot(result: dict[str, Any], out: Path) -> list[Path]:
    return []


@dataclass(frozen=True)
class Part:
    name: str
    run: Callable[[Any, Any], dict[str, Any]]
    markdown: Callable[[dict[str, Any], str], str]
    plot: Callable[[dict[str, Any], Path], list[Path]] = _no_plot
    ratios: Callable[[dict[str, Any]], dict[str, float]] | None = None
    needs_video: bool = False  # fetches real videos (once, into the cache)


# name -> module holding its PART, in the order the suite runs them
PARTS: dict[str, str] = {
    "fidelity": "bench.fidelity",
    "needles": "bench.needles",
    "readout": "bench.readout",
    "planted": "bench.needle_frame",
    "compression": "bench.compression_speed",
    "prefill": "bench.prefill_speed",
    "ingest": "bench.ingest_speed",
    "memory": "bench.memory_speed",
    "quantized": "bench.quantized",
    "qa": "bench.question_latency",
    "live": "bench.live_latency",
}


def list_parts() -> list[str]:
    """Part names in the order the suite runs them."""
    return list(PARTS)


def get_part(name: str) -> Part:
    try:
        module = PARTS[name]
    except KeyError:
        raise UnknownNameError("benchmark part", name, PARTS) from None
    return importlib.import_module(module).PART
