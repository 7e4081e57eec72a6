"""Shared pieces of benchmark reports: markdown tables and the machine a run ran on."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

__all__ = ["machine", "plot_mean_range", "table"]


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
