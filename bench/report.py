"""Shared pieces of benchmark runs and reports: the method x ratio x seed plan, markdown tables, the machine."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from streamvid.compress import Compressor, create_compressor, list_compressors

__all__ = ["machine", "method_runs", "plot_mean_range", "seeded_compressor", "table", "takes_seed"]


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """Processor, cores, memory, torch and GPU of this machine."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/meminfo") as fh:
            info["memory_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def plot_mean_range(ax: Any, pts: list[tuple[float, dict[str, float]]], label: str, style: str = "-") -> None:
    """One line of ``{"mean", "min", "max"}`` summaries against retention ratios (in %), with the
    min-max range shaded where seeds or clips disagree. pts: [(ratio, summary)], sorted."""
    xs = [p[0] * 100 for p in pts]
    (line,) = ax.plot(xs, [p[1]["mean"] for p in pts], style, marker="o", label=label)
    if any(p[1]["max"] > p[1]["min"] for p in pts):
        ax.fill_between(xs, [p[1]["min"] for p in pts], [p[1]["max"] for p in pts], alpha=0.2, color=line.get_color())


def takes_seed(method: str) -> bool:
    """Whether a registered compressor draws random numbers (its config has a ``seed``)."""
    return "seed" in type(create_compressor(method)).config_class.model_fields


def seeded_compressor(method: str, ratio: float, seed: int = 0) -> Compressor:
    """A registered compressor at ``ratio``, with ``seed`` when it takes one."""
    return create_compressor(method, ratio=ratio, **({"seed": seed} if takes_seed(method) else {}))


def method_runs(ratios: tuple[float, ...], seeds: int) -> list[tuple[float, str, float, list[int]]]:
    """Every registered compressor at every ratio: (ratio asked, method, ratio run, seeds to run).

    keep_all runs once (at ratio 1.0, with the first ratio); seeded methods get ``seeds`` seeds.
    """
    plan = []
    for ratio in ratios:
        for method in list_compressors():
            if method == "keep_all" and ratio != ratios[0]:
                continue
            r = 1.0 if method == "keep_all" else ratio
            plan.append((ratio, method, r, list(range(seeds)) if takes_seed(method) else [0]))
    return plan
