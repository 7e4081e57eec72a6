"""The ``streamvid`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from streamvid.errors import StreamvidError

app = typer.Typer(help="Ask questions about live camera feeds and very long videos.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print ratios measured side by side.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
console = Console()


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}", soft_wrap=True)
    raise typer.Exit(code=1)


@app.command()
def demo(
    video: Annotated[Path | None, typer.Argument(help="a video file; default: a synthetic clip")] = None,
    ratio: Annotated[float, typer.Option(help="fraction of tokens to keep, in (0, 1]")] = 0.15,
) -> None:
    """Compress a 32-frame clip with every compressor and compare fidelity side by side."""
    from streamvid.demo import run_demo

    try:
        grid, rows = run_demo(ratio=ratio, video=video)
    except StreamvidError as err:
        _fail(err)
    t, h, w, d = grid.tokens.shape
    table = Table(title=f"{t} frames x {h}x{w} tokens (D={d}) at {ratio:.0%} retention")
    for col in ("method", "tokens", "segments", "ms", "fidelity", "fidelity (size bias)"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(
            r.method,
            str(r.tokens),
            str(r.segments),
            f"{r.milliseconds:.1f}",
            f"{r.fidelity:.4f}",
            f"{r.fidelity_size_bias:.4f}",
        )
    console.print(table)
    console.print(
        "fidelity: mean cosine of attention outputs over the kept tokens vs all tokens (sharpness 4); 1.0 is lossless."
    )


@app.command("sample-video")
def sample_video(
    path: Annotated[Path, typer.Argument(help="where to write the video (.mp4)")] = Path("sample.mp4"),
) -> None:
    """Write a 24 s sample video (four scenes of a coloured square moving) to try streamvid on."""
    from streamvid.demo import write_sample_video

    scenes = write_sample_video(path)
    console.print(f"wrote {path}:")
    for start, end, caption in scenes:
        console.print(f"  {start:4.1f}-{end:4.1f} s  {caption}")


@bench_app.command("compression")
def bench_compression(
    frames: Annotated[int, typer.Option(help="frames per clip")] = 32,
    encoder_frames: Annotated[int, typer.Option(help="frames run through the encoder (<= frames)")] = 32,
    repeats: Annotated[int, typer.Option(help="timed runs per method (median)")] = 3,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    out: Annotated[Path | None, typer.Option(help="write the results as JSON here")] = None,
) -> None:
    """Compression time per clip vs a SigLIP-so400m-shaped vision tower, same run, same device."""
    from streamvid.eval.compression_speed import print_report, run_compression_benchmark

    try:
        report = run_compression_benchmark(
            frames=frames,
            encoder_frames=encoder_frames,
            repeats=repeats,
            device=device,
            progress=console,
        )
    except StreamvidError as err:
        _fail(err)
    print_report(report, console)
    if out is not None:
        import json

        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {out}")


@bench_app.command("ingest")
def bench_ingest(
    video: Annotated[Path | None, typer.Argument(help="a video; default: vtest.avi (fetched once)")] = None,
    fps: Annotated[float, typer.Option(help="sampling rate")] = 2.0,
    repeats: Annotated[int, typer.Option(help="runs (best is reported)")] = 3,
) -> None:
    """Decode + sample + segment throughput as a multiple of real time."""
    from streamvid.eval.ingest_speed import run_ingest_benchmark
    from streamvid.eval.media import fetch_vtest

    try:
        report = run_ingest_benchmark(video or fetch_vtest(), fps=fps, repeats=repeats)
    except StreamvidError as err:
        _fail(err)
    console.print(
        f"{report['video']}: {report['media_seconds']:.1f} s of video, {report['frames_decoded']} frames "
        f"decoded, {report['frames_sampled']} sampled at {fps:g} fps, {report['segments']} segments in "
        f"{report['wall_seconds']:.2f} s = [bold]{report['realtime_factor']:.1f}x real time[/] "
        f"(runs: {', '.join(f'{r:.1f}x' for r in report['all_realtime_factors'])})"
    )


@bench_app.command("prefill")
def bench_prefill(
    size: Annotated[str, typer.Option(help="LM shape: 0.5b or 7b")] = "0.5b",
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    dtypes: Annotated[str, typer.Option(help="comma-separated dtypes")] = "float32,bfloat16",
    repeats: Annotated[int, typer.Option(help="timed runs (median)")] = 1,
    out: Annotated[Path | None, typer.Option(help="write the results as JSON here")] = None,
) -> None:
    """Prefill time, all 32 x 196 visual tokens vs InfoMerge at 25/15/10% (compression included)."""
    from rich.table import Table

    from streamvid.eval.prefill_speed import run_prefill_benchmark

    try:
        report = run_prefill_benchmark(
            size=size, device=device, dtypes=tuple(dtypes.split(",")), repeats=repeats, progress=console
        )
    except StreamvidError as err:
        _fail(err)
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
    if out is not None:
        import json

        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
