"""``streamvid bench ...``: the evaluation suite and its parts, each a function call into ``bench``.

Errors are raised; cli.main prints them as one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import CHECKS, console

app = typer.Typer(help="Benchmarks that print ratios measured side by side.", no_args_is_help=True)

__all__ = ["app"]


def _write_json(report: dict[str, Any], out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str))
        console.print(f"wrote {out}")


@app.command("run")
def run(
    profile: Annotated[str, typer.Option(help="quick (minutes) or full")] = "quick",
    out: Annotated[Path, typer.Option(help="output directory (report.json, PNG plots)")] = Path("bench-out"),
    docs: Annotated[Path | None, typer.Option(help="also write this markdown page (e.g. docs/benchmarks.md)")] = None,
    parts: Annotated[str | None, typer.Option(help="comma-separated subset of the parts")] = None,
) -> None:
    """The evaluation suite: every part, every compressor side by side; JSON, PNG plots, markdown."""
    import shutil

    from bench.suite import run_suite, write_markdown

    report = run_suite(profile, out, progress=console, parts=parts.split(",") if parts else None)
    if docs is not None:
        images = docs.parent / "benchmarks"
        images.mkdir(parents=True, exist_ok=True)
        for png in out.glob("*.png"):
            shutil.copy(png, images / png.name)
        write_markdown(report, docs, images, f"streamvid bench run --profile {profile} --docs {docs}")
        console.print(f"wrote {docs}")
    console.print(f"wrote {out / 'report.json'}")


@app.command("compression")
def compression(
    frames: Annotated[int, typer.Option(help="frames per clip (>= 1)", callback=CHECKS["positive_int"])] = 32,
    encoder_frames: Annotated[
        int, typer.Option(help="frames run through the encoder (1..frames)", callback=CHECKS["positive_int"])
    ] = 32,
    repeats: Annotated[
        int, typer.Option(help="timed runs per method (median; >= 1)", callback=CHECKS["positive_int"])
    ] = 3,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps", callback=CHECKS["device"])] = "cpu",
    out: Annotated[Path | None, typer.Option(help="write the results as JSON here")] = None,
) -> None:
    """Compression time per clip vs a SigLIP-so400m-shaped vision tower, same run, same device."""
    from bench.compression_speed import print_report, run_compression_benchmark

    report = run_compression_benchmark(
        frames=frames, encoder_frames=encoder_frames, repeats=repeats, device=device, progress=console
    )
    print_report(report, console)
    _write_json(report, out)


@app.command("ingest")
def ingest(
    video: Annotated[Path | None, typer.Argument(help="a video; default: vtest.avi (fetched once)")] = None,
    fps: Annotated[
        float, typer.Option(help="sampling rate in frames per second (> 0)", callback=CHECKS["positive_float"])
    ] = 2.0,
    repeats: Annotated[int, typer.Option(help="runs (best is reported; >= 1)", callback=CHECKS["positive_int"])] = 3,
) -> None:
    """Decode + sample + segment throughput as a multiple of real time."""
    from bench.ingest_speed import run_ingest_benchmark
    from bench.media import fetch_vtest

    report = run_ingest_benchmark(video or fetch_vtest(), fps=fps, repeats=repeats)
    console.print(
        f"{report['video']}: {report['media_seconds']:.1f} s of video, {report['frames_decoded']} frames "
        f"decoded, {report['frames_sampled']} sampled at {fps:g} fps, {report['segments']} segments in "
        f"{report['wall_seconds']:.2f} s = [bold]{report['realtime_factor']:.1f}x real time[/] "
        f"(runs: {', '.join(f'{r:.1f}x' for r in report['all_realtime_factors'])})"
    )


@app.command("prefill")
def prefill(
    size: Annotated[str, typer.Option(help="LM shape: 0.5b or 7b")] = "0.5b",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps", callback=CHECKS["device"])] = "cpu",
    dtypes: Annotated[str, typer.Option(help="comma-separated dtypes")] = "float32,bfloat16",
    repeats: Annotated[int, typer.Option(help="timed runs (median; >= 1)", callback=CHECKS["positive_int"])] = 1,
    out: Annotated[Path | None, typer.Option(help="write the results as JSON here")] = None,
) -> None:
    """Prefill time, all 32 x 196 visual tokens vs InfoMerge at 25/15/10% (compression included)."""
    from rich.table import Table

    from bench.prefill_speed import run_prefill_benchmark

    report = run_prefill_benchmark(
        size=size, device=device, dtypes=tuple(dtypes.split(",")), repeats=repeats, progress=console
    )
    table = Table(title=f"prefill, {report['lm']}, {report['device']}")
    for col in ("dtype", "method", "ratio", "tokens", "seconds", "speedup"):
        table.add_column(col, justify="left" if col in ("dtype", "method") else "right")
    for r in report["rows"]:
        table.add_row(
            r["dtype"],
            r["method"],
            f"{r['ratio']:.0%}",
            str(r["tokens"]),
            f"{r['seconds']:.2f}",
            f"{r['speedup']:.2f}x",
        )
    console.print(table)
    _write_json(report, out)


@app.command("memory")
def memory(
    out: Annotated[Path, typer.Option(help="JSON output")] = Path("bench-out/memory.json"),
    quick: Annotated[bool, typer.Option(help="10^3/10^4 segments and 1 hour")] = False,
) -> None:
    """Search latency, rebalance time, bytes per hour, RSS over time."""
    from bench.memory_speed import run, summary
    from bench.profiles import get_profile

    report = run(get_profile("quick" if quick else "full"), progress=console)
    for line in summary(report):
        console.print(line)
    _write_json(report, out)


@app.command("live")
def live(
    out: Annotated[Path, typer.Option(help="JSON output")] = Path("bench-out/live.json"),
    quick: Annotated[bool, typer.Option(help="short streams and few questions")] = False,
) -> None:
    """The live path: frame-to-searchable latency, encoder batching, question latency vs memory length."""
    from bench.live_latency import run, summary
    from bench.profiles import get_profile

    report = run(get_profile("quick" if quick else "full"), progress=console)
    lines = summary(report)
    for line in [lines] if isinstance(lines, str) else lines:
        console.print(line)
    _write_json(report, out)


@app.command("cluster")
def cluster(
    encoders: Annotated[str, typer.Option(help="comma-separated encoder actor counts")] = "1,2,4",
    streams: Annotated[
        int, typer.Option(help="file streams per ingest run (>= 1)", callback=CHECKS["positive_int"])
    ] = 4,
    repeats: Annotated[
        int, typer.Option(help="ingest runs per actor count (median; >= 1)", callback=CHECKS["positive_int"])
    ] = 1,
    shards: Annotated[str, typer.Option(help="comma-separated shard counts of the fan-out part")] = "1,4,16",
    segments: Annotated[
        int, typer.Option(help="segments per shard in the fan-out part (>= 1)", callback=CHECKS["positive_int"])
    ] = 200,
    queries: Annotated[
        int, typer.Option(help="timed questions per shard count (>= 1)", callback=CHECKS["positive_int"])
    ] = 20,
    model: Annotated[
        str | None, typer.Option(help="checkpoint directory for the encoder actors (default: a tiny random one)")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps", callback=CHECKS["device"])] = "cpu",
    gpus_per_encoder: Annotated[float, typer.Option(help="GPUs per encoder actor", min=0)] = 0.0,
    out: Annotated[Path, typer.Option(help="JSON output")] = Path("bench-out/cluster.json"),
) -> None:
    """Ray: ingest frames/s with 1, 2, 4 encoder actors (scaling efficiency) and query fan-out over 1, 4, 16 shards."""
    from agents.cluster.cluster import require_ray
    from bench.cluster_speed import run, summary

    require_ray()
    report = run(
        encoders=_counts(encoders, "--encoders"), streams=streams, shards=_counts(shards, "--shards"),
        segments=segments, queries=queries, model=model, device=device, gpus_per_encoder=gpus_per_encoder,
        repeats=repeats,
    )  # fmt: skip
    for line in summary(report):
        console.print(line, soft_wrap=True)
    _write_json(report, out)


def _counts(text: str, option: str) -> list[int]:
    """'1,2,4' -> [1, 2, 4]; anything else is a one-line ConfigError."""
    from streamvid.errors import ConfigError

    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ConfigError(f"{option} takes positive whole numbers separated by commas, e.g. 1,2,4; got {text!r}")
    return counts


@app.command("quantized")
def quantized(
    out: Annotated[Path, typer.Option(help="JSON output")] = Path("bench-out/quantized.json"),
    quick: Annotated[bool, typer.Option(help="few frames per clip and a 1 h needle stream")] = False,
) -> None:
    """Stored token formats (float16, int8, int4): class-query readout and needles under one cap."""
    from bench.profiles import get_profile
    from bench.quantized import run, summary

    report = run(get_profile("quick" if quick else "full"), progress=console)
    for line in summary(report):
        console.print(line, soft_wrap=True)
    _write_json(report, out)


@app.command("qa")
def qa(
    questions: Annotated[
        int, typer.Option(help="questions asked (median reported; >= 1)", callback=CHECKS["positive_int"])
    ] = 5,
    dtype: Annotated[str, typer.Option(help="LM dtype")] = "float32",
    out: Annotated[Path | None, typer.Option(help="write the results as JSON here")] = None,
) -> None:
    """Question latency through the memory vs the bare prefill of the same tokens, same run."""
    from bench.question_latency import run_question_latency, summary

    report = run_question_latency(questions, dtype)
    console.print(summary(report))
    _write_json(report, out)


@app.command("harness")
def harness(
    questions: Annotated[Path, typer.Argument(help="multiple-choice JSON (video, question, options, answer, time)")],
    model: Annotated[str, typer.Option(help="Video-LLM (hub name or dir)")],
    modes: Annotated[
        str, typer.Option(help="comma-separated: full, <compressor>@R, streaming@R")
    ] = "full,infomerge@0.15",
    frames: Annotated[
        int, typer.Option(help="frames per video (full and compressor modes; >= 1)", callback=CHECKS["positive_int"])
    ] = 32,
    device: Annotated[
        str | None,
        typer.Option(help="cpu, cuda, cuda:N or mps (default: cuda when available)", callback=CHECKS["device"]),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write the results as JSON here")] = None,
) -> None:
    """Accuracy on a multiple-choice video benchmark, with and without compression, as % of full."""
    from bench.harness import load_questions, run_harness
    from streamvid.models import load_adapter

    items = load_questions(questions)
    llm = load_adapter(model, device=device)
    report = run_harness(llm, items, modes=tuple(modes.split(",")), frames=frames, progress=console)
    for mode, accuracy in report["accuracy"].items():
        rel = report["percent_of_full"][mode]
        console.print(f"{mode}: {accuracy:.1%}" + (f" ({rel:.1f}% of full)" if rel is not None else ""))
    _write_json(report, out)
