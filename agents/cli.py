"""The ``streamvid`` command: ingest, watch, ask, inspect (plus demo and bench)."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from streamvid.cli import _fail, app, bench_app, console
from streamvid.embedders import DEFAULT_EMBEDDER
from streamvid.errors import StreamvidError

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
DEFAULT_CAP = 200_000
SETTINGS = "streamvid.json"

ModelOpt = Annotated[str | None, typer.Option(help=f"Video-LLM (hub name or dir); default {DEFAULT_MODEL}")]
EmbedderOpt = Annotated[str | None, typer.Option(help=f"retrieval embedder, or 'none'; default {DEFAULT_EMBEDDER}")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available)")]


def _settings(memory: Path, **given: Any) -> dict[str, Any]:
    """The memory's remembered settings, updated with what was given now."""
    path = memory / SETTINGS
    stored = json.loads(path.read_text()) if path.exists() else {}
    merged = {
        "model": DEFAULT_MODEL,
        "embedder": DEFAULT_EMBEDDER,
        "compressor": "infomerge",
        "ratio": 0.15,
        "fps": 1.0,
        **stored,
        **{k: v for k, v in given.items() if v is not None},
    }
    memory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2))
    return merged


def _components(settings: dict[str, Any], memory_dir: Path, cap_tokens: int | None, device: str | None):
    from memory import TokenMemory
    from streamvid.compress import create_compressor
    from streamvid.embedders import load_embedder
    from streamvid.models import load_adapter

    with console.status(f"loading {settings['model']} ..."):
        llm = load_adapter(settings["model"], device=device)
        embedder = load_embedder(settings["embedder"], device=device)
    compressor = create_compressor(settings["compressor"], ratio=settings["ratio"])
    exists = (memory_dir / "manifest.sqlite").exists()
    cap = {"cap_tokens": cap_tokens} if cap_tokens else ({} if exists else {"cap_tokens": DEFAULT_CAP})
    return llm, embedder, compressor, TokenMemory(memory_dir, **cap)


def _ingest(
    source: Any,
    memory_dir: Path,
    settings: dict[str, Any],
    cap: int | None,
    device: str | None,
    stream: str,
    live: bool | None,
    progress: bool = True,
):
    from agents.indexer import SegmentIndexer
    from streamvid.ingest import IngestPipeline, Sampler, StreamingSegmenter, open_source

    source = open_source(source)  # a bad path fails here, before any model is loaded
    llm, embedder, compressor, memory = _components(settings, memory_dir, cap, device)
    indexer = SegmentIndexer(llm, compressor, embedder, memory, stream_id=stream)
    pipeline = IngestPipeline(
        source,
        indexer,
        sampler=Sampler(fps=settings["fps"]),
        segmenter=StreamingSegmenter(stream_id=stream),
        live=live,
        progress=progress,
        stream_id=stream,
    )
    return pipeline, indexer, memory, (llm, embedder)


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="a video file or a stream URL")],
    memory: Annotated[Path, typer.Option(help="memory directory (created if new)")],
    model: ModelOpt = None,
    embedder: EmbedderOpt = None,
    compressor: Annotated[str | None, typer.Option(help="compressor name")] = None,
    ratio: Annotated[float | None, typer.Option(help="fraction of visual tokens kept per segment")] = None,
    cap_tokens: Annotated[int | None, typer.Option(help="global cap on tokens held")] = None,
    fps: Annotated[float | None, typer.Option(help="frames sampled per second")] = None,
    stream: Annotated[str, typer.Option(help="stream id for these segments")] = "default",
    device: DeviceOpt = None,
) -> None:
    """Ingest a file (or a stream until it ends) into a memory."""
    try:
        settings = _settings(memory, model=model, embedder=embedder, compressor=compressor, ratio=ratio, fps=fps)
        pipeline, indexer, mem, _ = _ingest(source, memory, settings, cap_tokens, device, stream, live=None)
        stats = pipeline.run()
        s = mem.stats()
        mem.close()
    except StreamvidError as err:
        _fail(err)
    console.print(
        f"ingested {stats.frames_sampled} frames into {stats.segments} segments "
        f"({stats.realtime_factor:.1f}x real time); memory holds {s.tokens_held}/{s.token_cap} tokens in "
        f"{s.segments_live} live segments ({s.segments_evicted} evicted)"
    )


@app.command()
def watch(
    url: Annotated[str, typer.Argument(help="a live source: rtsp/http/tcp/udp URL or /dev/videoN")],
    memory: Annotated[Path, typer.Option(help="memory directory")],
    model: ModelOpt = None,
    embedder: EmbedderOpt = None,
    cap_tokens: Annotated[int | None, typer.Option(help="global cap on tokens held")] = None,
    fps: Annotated[float | None, typer.Option(help="frames sampled per second")] = None,
    stream: Annotated[str, typer.Option(help="stream id")] = "camera",
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds (default: Ctrl-C)")] = None,
    device: DeviceOpt = None,
) -> None:
    """Ingest a live source until Ctrl-C or --duration (frames are dropped, never the source blocked)."""
    try:
        settings = _settings(memory, model=model, embedder=embedder, fps=fps)
        pipeline, _, mem, _ = _ingest(url, memory, settings, cap_tokens, device, stream, live=True)
    except StreamvidError as err:
        _fail(err)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: (pipeline.stop(), stop.set()))
    deadline = None if duration is None else time.monotonic() + duration
    try:
        pipeline.start()
        while not stop.wait(0.5) and pipeline.running:
            if deadline is not None and time.monotonic() >= deadline:
                pipeline.stop()
                break
        stats = pipeline.join(timeout=60)
    except StreamvidError as err:
        _fail(err)
    finally:
        signal.signal(signal.SIGINT, previous)
        mem.close()
    console.print(
        f"stopped: {stats.frames_sampled} frames, {stats.frames_dropped} dropped, "
        f"{stats.segments} segments, {stats.reconnects} reconnects"
    )


def _video_memory(video: Path, settings: dict[str, Any]) -> Path:
    """A cached memory for a video file, keyed by the file and the settings."""
    from streamvid.eval.media import cache_dir

    st = video.stat()
    ident = json.dumps([str(video.resolve()), st.st_size, st.st_mtime_ns, settings], sort_keys=True)
    return cache_dir().parent / "memories" / hashlib.sha1(ident.encode()).hexdigest()[:16]


@app.command()
def ask(
    target: Annotated[Path, typer.Argument(help="a memory directory, or a video file (ingested first, cached)")],
    question: Annotated[str, typer.Argument(help="the question")],
    k: Annotated[int, typer.Option(help="segments to retrieve")] = 4,
    start: Annotated[float | None, typer.Option(help="only after this time (s)")] = None,
    end: Annotated[float | None, typer.Option(help="only before this time (s)")] = None,
    stream: Annotated[str | None, typer.Option(help="only this stream")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="answer length limit")] = 128,
    model: ModelOpt = None,
    embedder: EmbedderOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Answer a question about a memory or a video file."""
    from agents.qa import VideoQA

    try:
        if not target.exists():
            raise StreamvidError(f"{target} does not exist; pass a memory directory or a video file")
        if target.is_dir():
            if not (target / "manifest.sqlite").exists():
                raise StreamvidError(f"{target} is not a streamvid memory; create one with 'streamvid ingest'")
            settings = _settings(target, model=model, embedder=embedder)
            llm, emb, _, mem = _components(settings, target, None, device)
        else:
            base = {"model": model or DEFAULT_MODEL, "embedder": embedder or DEFAULT_EMBEDDER}
            mem_dir = _video_memory(target, base)
            settings = _settings(mem_dir, **base)
            if not (mem_dir / "manifest.sqlite").exists():
                pipeline, _, mem, (llm, emb) = _ingest(str(target), mem_dir, settings, None, device, "default", None)
                pipeline.run()
            else:
                llm, emb, _, mem = _components(settings, mem_dir, None, device)
        time_range = None if start is None and end is None else (start or 0.0, end if end is not None else 1e12)
        qa = VideoQA(llm, mem, emb, k=k, max_new_tokens=max_new_tokens)
        answer = qa.ask(question, time_range=time_range, streams=[stream] if stream else None)
        mem.close()
    except StreamvidError as err:
        _fail(err)
    console.print(f"[bold]{answer.text}[/]")
    if answer.segments:
        used = ", ".join(
            f"{u.stream} {u.start:.1f}-{u.end:.1f}s" + (f" ({u.score:.2f})" if u.score is not None else "")
            for u in answer.segments
        )
        console.print(f"segments used: {used}")
    t = answer.timings
    console.print(
        f"timings: retrieve {t['retrieve'] * 1e3:.0f} ms, assemble {t['assemble'] * 1e3:.0f} ms, "
        f"prefill {t['prefill'] * 1e3:.0f} ms ({answer.prompt_tokens} tokens), decode {t['decode'] * 1e3:.0f} ms"
    )


@app.command()
def inspect(
    memory: Annotated[Path, typer.Argument(help="memory directory")],
    plot: Annotated[Path | None, typer.Option(help="PNG path (default: DIR/budgets.png)")] = None,
    limit: Annotated[int, typer.Option(help="rows shown")] = 50,
) -> None:
    """Table of segments and budgets, and a PNG plot of budget per segment over time with the cap."""
    from memory import TokenMemory

    if not (memory / "manifest.sqlite").exists():
        _fail(StreamvidError(f"{memory} is not a streamvid memory; create one with 'streamvid ingest'"))
    with TokenMemory(memory) as mem:
        stats = mem.stats()
        segments = mem.timeline()
    table = Table(
        title=f"{memory}: {stats.tokens_held}/{stats.token_cap} tokens, {stats.segments_live} live, "
        f"{stats.segments_evicted} evicted, {stats.disk_bytes / 2**20:.1f} MiB on disk"
    )
    for col in ("id", "stream", "start", "end", "frames", "tokens", "of", "status"):
        table.add_column(col, justify="left" if col in ("stream", "status") else "right")
    for s in segments[:limit]:
        table.add_row(
            str(s.id),
            s.stream,
            f"{s.start:.1f}",
            f"{s.end:.1f}",
            str(s.frame_count),
            str(s.tokens),
            str(s.original_tokens),
            s.status,
        )
    console.print(table)
    if len(segments) > limit:
        console.print(f"... {len(segments) - limit} more")
    if stats.last_rebalance:
        r = stats.last_rebalance
        console.print(
            f"last rebalance: {r.tokens_before} -> {r.tokens_after} tokens, {r.touched} re-merged, "
            f"{r.evicted} evicted in {r.seconds * 1e3:.0f} ms"
        )
    path = plot or memory / "budgets.png"
    try:
        _plot(segments, stats.token_cap, path)
    except ImportError:
        _fail(StreamvidError("the plot needs matplotlib: pip install 'streamvid[bench]'"))
    console.print(f"wrote {path}")


def _plot(segments: list[Any], cap: int | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    live = [s for s in segments if not s.evicted]
    gone = [s for s in segments if s.evicted]
    ax.bar(
        [s.start for s in live],
        [s.tokens for s in live],
        width=[max(s.end - s.start, 0.5) for s in live],
        align="edge",
        color="tab:blue",
        label="tokens kept per segment",
    )
    if gone:
        ax.scatter([s.start for s in gone], [0] * len(gone), marker="x", color="tab:red", label="evicted")
    ax.set_xlabel("stream time (s)")
    ax.set_ylabel("tokens per segment")
    ax2 = ax.twinx()
    order = sorted(live, key=lambda s: s.start)
    total, xs, ys = 0, [], []
    for s in order:
        total += s.tokens
        xs.append(s.end)
        ys.append(total)
    ax2.plot(xs, ys, color="tab:green", label="tokens held (cumulative)")
    if cap:
        ax2.axhline(cap, color="tab:red", linestyle="--", label=f"cap {cap}")
    ax2.set_ylabel("tokens held")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(handles, labels, loc="upper left", fontsize=8)
    ax.set_title("budget per segment over time")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


@bench_app.command("memory")
def bench_memory(
    out: Annotated[Path, typer.Option(help="JSON output")] = Path("bench-out/memory.json"),
    quick: Annotated[bool, typer.Option(help="10^3/10^4 segments and 1 hour")] = False,
) -> None:
    """Search latency, rebalance time, bytes per hour, RSS over time (python -m memory.bench)."""
    import sys

    from memory import bench

    sys.argv = ["memory.bench", "--out", str(out)] + (["--quick"] if quick else [])
    bench.main()


@bench_app.command("run")
def bench_run(
    profile: Annotated[str, typer.Option(help="quick (minutes) or full")] = "quick",
    out: Annotated[Path, typer.Option(help="output directory (report.json, PNG plots)")] = Path("bench-out"),
    docs: Annotated[Path | None, typer.Option(help="also write this markdown page (e.g. docs/benchmarks.md)")] = None,
    parts: Annotated[str | None, typer.Option(help="comma-separated subset of the parts")] = None,
) -> None:
    """The evaluation suite: fidelity, needles, speed and memory, every compressor side by side."""
    import shutil

    from agents.evaluate import run_suite, write_markdown

    try:
        report = run_suite(profile, out, progress=console, parts=tuple(parts.split(",")) if parts else None)
    except StreamvidError as err:
        _fail(err)
    if docs is not None:
        images = docs.parent / "benchmarks"
        images.mkdir(parents=True, exist_ok=True)
        for png in out.glob("*.png"):
            shutil.copy(png, images / png.name)
        write_markdown(report, docs, images, f"streamvid bench run --profile {profile} --docs {docs}")
        console.print(f"wrote {docs}")
    console.print(f"wrote {out / 'report.json'}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
