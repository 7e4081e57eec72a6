"""The evaluation suite: every registered part, one command, JSON + PNG + markdown.

    streamvid bench run --profile quick   # minutes on 2 CPU cores
    streamvid bench run --profile full --docs docs/benchmarks.md

Parts are run in registry order (``bench.parts``); each writes its result into
``report.json`` as soon as it finishes, so an interrupted run keeps what it measured.
Re-running some parts (``parts=``) updates an earlier report of the same profile.
Seeds are fixed; the machine is described in the report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bench.parts import get_part, list_parts
from bench.profiles import Profile, get_profile
from bench.report import machine

__all__ = ["run_suite", "write_markdown", "write_plots"]


def run_suite(
    profile: str | Profile = "quick",
    out: Path = Path("bench-out"),
    progress: Any = None,
    parts: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run ``parts`` (default: all) at the sizes of ``profile`` (a name in PROFILES, or a Profile)."""
    sizes = profile if isinstance(profile, Profile) else get_profile(profile)
    profile = sizes.name
    chosen = [get_part(name) for name in (parts or list_parts())]  # unknown names fail before any work
    torch.manual_seed(0)
    say = progress.log if progress is not None else print
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    report: dict[str, Any] = {"profile": profile, "machine": machine(), "started": time.time()}
    if parts and path.exists():
        earlier = json.loads(path.read_text())
        if earlier.get("profile") == profile:
            report = {**earlier, "machine": machine()}
    for part in chosen:
        t0 = time.perf_counter()
        say(f"[{part.name}] ...")
        report[part.name] = part.run(sizes, progress)
        report[part.name + "_seconds"] = time.perf_counter() - t0
        path.write_text(json.dumps(report, indent=2, default=str))
    report["finished"] = time.time()
    path.write_text(json.dumps(report, indent=2, default=str))
    write_plots(report, out)
    return report


def _present(report: dict[str, Any]) -> list[Any]:
    return [get_part(name) for name in list_parts() if name in report]


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    """Each part's own plots, and speed.png: the headline ratios of every speed part."""
    written: list[Path] = []
    bars: dict[str, float] = {}
    for part in _present(report):
        written += part.plot(report[part.name], out)
        if part.ratios is not None:
            bars.update(part.ratios(report[part.name]))
    if bars:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(8, len(bars) * 1.3), 4))
        ax.bar(range(len(bars)), list(bars.values()), color="tab:blue")
        ax.set_xticks(range(len(bars)), list(bars), fontsize=7)
        for i, v in enumerate(bars.values()):
            ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_title("speed ratios (same run, same device)")
        fig.tight_layout()
        path = out / "speed.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_markdown(report: dict[str, Any], path: Path, images: Path, command: str) -> None:
    """docs/benchmarks.md from a report: each part's section, the machine, the command."""
    m = report["machine"]
    sections = [
        "# Benchmarks",
        "",
        f"Generated from one `{report['profile']}` run of `{command}` on {m['processor']}, {m['cpus']} CPUs, "
        f"{m.get('memory_gib', '?')} GiB, torch {m['torch']} ({m['torch_threads']} threads), "
        f"GPU: {m['cuda'] or 'none'}. Every number below comes from that run; ratios are measured side by side.",
        "",
    ]
    for part in _present(report):
        sections.append(part.markdown(report[part.name], images.name))
    sections += ["![speed](" + images.name + "/speed.png)", "", "Reproduce:", "", "```bash", command, "```", ""]
    path.write_text("\n".join(sections))
