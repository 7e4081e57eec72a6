"""Commands on videos and memories: ingest, watch, ask, inspect; and sample-video, demo.

Every model, torch and the memory are imported inside the commands, so ``--help`` and
argument errors stay fast. Errors print one line and exit 1.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import DEFAULT_CAP, DeviceOpt, EmbedderOpt, ModelOpt, console, fail
from cli.settings import load_settings
from streamvid.errors import StreamvidError

__all__ = ["ask", "demo", "ingest", "inspect", "sample_video", "watch"]


def _components(settings: dict[str, Any], memory_dir: Path, cap_tokens: int | None, device: str | None):
    """The Video-LLM, embedder, compressor and memory a memory's settings name."""
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
    max_reconnects: int = 5,
    progress: bool = True,
):
    """(the wired ingest, the memory, the Video-LLM, the embedder)."""
    from agents.ingest import build_ingest
    from streamvid.ingest import open_source

    source = open_source(source)  # a bad path fails here, before any model is loaded
    llm, embedder, compressor, memory = _components(settings, memory_dir, cap, device)
    job = build_ingest(
        source,
        memory,
        llm,
        embedder,
        compressor,
        stream_id=stream,
        fps=settings["fps"],
        live=live,
        max_reconnects=max_reconnects,
        progress=progress,
    )
    return job, memory, llm, embedder


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
    max_reconnects: Annotated[int, typer.Option(help="reconnect attempts in a row for a live source")] = 5,
    device: DeviceOpt = None,
) -> None:
    """Ingest a file (or a stream until it ends) into a memory."""
    try:
        settings = load_settings(memory, model=model, embedder=embedder, compressor=compressor, ratio=ratio, fps=fps)
        job, mem, _, _ = _ingest(source, memory, settings, cap_tokens, device, stream, None, max_reconnects)
        stats = job.run()
        s = mem.stats()
        mem.close()
    except StreamvidError as err:
        fail(err)
    console.print(
        f"ingested {stats.frames_sampled} frames into {stats.segments} segments "
        f"({stats.realtime_factor:.1f}x real time); memory holds {s.tokens_held}/{s.token_cap} tokens in "
        f"{s.segments_live} live segments ({s.segments_evicted} evicted)"
    )


def watch(
    url: Annotated[str, typer.Argument(help="a live source: rtsp/http/tcp/udp URL or /dev/videoN")],
    memory: Annotated[Path, typer.Option(help="memory directory")],
    model: ModelOpt = None,
    embedder: EmbedderOpt = None,
    cap_tokens: Annotated[int | None, typer.Option(help="global cap on tokens held")] = None,
    fps: Annotated[float | None, typer.Option(help="frames sampled per second")] = None,
    stream: Annotated[str, typer.Option(help="stream id")] = "camera",
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds (default: Ctrl-C)")] = None,
    max_reconnects: Annotated[int, typer.Option(help="reconnect attempts in a row before giving up")] = 5,
    device: DeviceOpt = None,
) -> None:
    """Ingest a live source until Ctrl-C or --duration (frames are dropped, never the source blocked)."""
    try:
        settings = load_settings(memory, model=model, embedder=embedder, fps=fps)
        job, mem, _, _ = _ingest(url, memory, settings, cap_tokens, device, stream, True, max_reconnects)
    except StreamvidError as err:
        fail(err)
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: (job.stop(), stop.set()))
    deadline = None if duration is None else time.monotonic() + duration
    try:
        job.start()
        while not stop.wait(0.5) and job.running:
            if deadline is not None and time.monotonic() >= deadline:
                job.stop()
                break
        stats = job.join(timeout=60)
    except StreamvidError as err:
        fail(err)
    finally:
        signal.signal(signal.SIGINT, previous)
        mem.close()
    console.print(
        f"stopped: {stats.frames_sampled} frames, {stats.frames_dropped} dropped, "
        f"{stats.segments} segments, {stats.reconnects} reconnects"
    )


def _video_memory(video: Path, settings: dict[str, Any]) -> Path:
    """A cached memory for a video file, keyed by the file and the settings."""
    from streamvid.cache import cache_root

    st = video.stat()
    ident = json.dumps([str(video.resolve()), st.st_size, st.st_mtime_ns, settings], sort_keys=True)
    return cache_root() / "memories" / hashlib.sha1(ident.encode()).hexdigest()[:16]


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
    from cli.common import DEFAULT_EMBEDDER, DEFAULT_MODEL

    try:
        if not target.exists():
            raise StreamvidError(f"{target} does not exist; pass a memory directory or a video file")
        if target.is_dir():
            if not (target / "manifest.sqlite").exists():
                raise StreamvidError(f"{target} is not a streamvid memory; create one with 'streamvid ingest'")
            settings = load_settings(target, model=model, embedder=embedder)
            llm, emb, _, mem = _components(settings, target, None, device)
        else:
            base = {"model": model or DEFAULT_MODEL, "embedder": embedder or DEFAULT_EMBEDDER}
            mem_dir = _video_memory(target, base)
            settings = load_settings(mem_dir, **base)
            if not (mem_dir / "manifest.sqlite").exists():
                job, mem, llm, emb = _ingest(str(target), mem_dir, settings, None, device, "default", None)
                job.run()
            else:
                llm, emb, _, mem = _components(settings, mem_dir, None, device)
        from agents.qa import VideoQA

        time_range = None if start is None and end is None else (start or 0.0, end if end is not None else 1e12)
        qa = VideoQA(llm, mem, emb, k=k, max_new_tokens=max_new_tokens)
        answer = qa.ask(question, time_range=time_range, streams=[stream] if stream else None)
        mem.close()
    except StreamvidError as err:
        fail(err)
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


def inspect(
    memory: Annotated[Path, typer.Argument(help="memory directory")],
    plot: Annotated[Path | None, typer.Option(help="PNG path (default: DIR/budgets.png)")] = None,
    limit: Annotated[int, typer.Option(help="rows shown")] = 50,
) -> None:
    """Table of segments and budgets, and a PNG plot of budget per segment over time with the cap."""
    from rich.table import Table

    from memory import TokenMemory

    if not (memory / "manifest.sqlite").exists():
        fail(StreamvidError(f"{memory} is not a streamvid memory; create one with 'streamvid ingest'"))
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
        row = (s.id, s.stream, f"{s.start:.1f}", f"{s.end:.1f}", s.frame_count, s.tokens, s.original_tokens, s.status)
        table.add_row(*map(str, row))
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
        _plot_budgets(segments, stats.token_cap, path)
    except ImportError:
        fail(StreamvidError("the plot needs matplotlib: pip install 'streamvid[bench]'"))
    console.print(f"wrote {path}")


def _plot_budgets(segments: list[Any], cap: int | None, path: Path) -> None:
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
    total, xs, ys = 0, [], []
    for s in sorted(live, key=lambda s: s.start):
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


def sample_video(
    path: Annotated[Path, typer.Argument(help="where to write the video (.mp4)")] = Path("sample.mp4"),
) -> None:
    """Write a 24 s sample video (four scenes of a coloured square moving) to try streamvid on."""
    from streamvid.sample import write_sample_video

    scenes = write_sample_video(path)
    console.print(f"wrote {path}:")
    for start, end, caption in scenes:
        console.print(f"  {start:4.1f}-{end:4.1f} s  {caption}")


def demo(
    video: Annotated[Path | None, typer.Argument(help="a video file; default: a synthetic clip")] = None,
    ratio: Annotated[float, typer.Option(help="fraction of tokens to keep, in (0, 1]")] = 0.15,
) -> None:
    """Compress a 32-frame clip with every compressor and compare fidelity side by side."""
    from rich.table import Table

    from bench.demo import run_demo

    try:
        grid, rows = run_demo(ratio=ratio, video=video)
    except StreamvidError as err:
        fail(err)
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
