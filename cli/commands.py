"""Commands on videos and memories: ingest, watch, ask, inspect; and sample-video, demo.

Every model, torch and the memory are imported inside the commands, so ``--help`` and
argument errors stay fast. Options are checked before anything heavy runs (cli.common);
errors are raised, and cli.main prints them as one line.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.common import (
    CHECKS,
    DEFAULT_CAP,
    DEFAULT_EMBEDDER,
    DEFAULT_MODEL,
    OPTIONS,
    CapOpt,
    CliError,
    CompressorOpt,
    DeviceOpt,
    EmbedderOpt,
    FpsOpt,
    FromStartOpt,
    IngestProgress,
    MaxReconnectsOpt,
    MemoryOpt,
    ModelOpt,
    NewDirs,
    RatioOpt,
    ReconnectTimeoutOpt,
    StreamOpt,
    StrictOpt,
    console,
    err_console,
    quiet_libraries,
    require,
    resolve_checkpoint,
)
from streamvid.errors import StreamDisconnectedError, UnknownNameError

__all__ = ["ask", "demo", "ingest", "inspect", "sample_video", "watch"]

MANIFEST = "manifest.sqlite"
RECONNECT_HINT = "pass --max-reconnects N or --reconnect-timeout SECONDS to wait longer for the source"


def _is_memory(path: Path) -> bool:
    return (path / MANIFEST).exists()


def _load_models(settings: dict[str, Any], device: str | None) -> tuple[Any, Any]:
    """(the Video-LLM, the retrieval embedder) the settings name; checkpoints resolved first."""
    embedder = settings["embedder"]
    model_path = resolve_checkpoint(settings["model"], "--model")
    embedder_path = embedder if str(embedder).lower() == "none" else resolve_checkpoint(embedder, "--embedder")
    quiet_libraries(OPTIONS.verbose)
    from streamvid.embedders import load_embedder
    from streamvid.models import load_adapter

    with err_console.status(f"loading {settings['model']} ..."):
        llm = load_adapter(model_path, device=device)
        emb = load_embedder(embedder_path, device=device)
    return llm, emb


def _open_memory(memory_dir: Path, cap_tokens: int | None = None) -> Any:
    """The memory at ``memory_dir`` opened as its one writer (MemoryLockedError at once while
    another process writes); a new one gets ``cap_tokens`` or the default cap."""
    from memory import TokenMemory

    cap = cap_tokens if cap_tokens is not None else (None if _is_memory(memory_dir) else DEFAULT_CAP)
    return TokenMemory(memory_dir, **({"cap_tokens": cap} if cap is not None else {}))


def _open_reader(memory_dir: Path) -> Any:
    """The memory at ``memory_dir`` for reading: no lock, nothing written (ask, inspect)."""
    from memory import TokenMemory

    return TokenMemory(memory_dir, read_only=True)


def _check_widths(mem: Any, settings: dict[str, Any], llm: Any, emb: Any) -> None:
    """A model or embedder whose width does not fit the memory: one line naming the setting."""
    mem.check_widths(token_dim=llm.hidden_size, key_dim=emb.dim, model=settings["model"], embedder=settings["embedder"])


@dataclass
class Wired:
    """An ingest ready to run, and what it was built from."""

    job: Any
    memory: Any
    llm: Any
    embedder: Any


def _wire_ingest(
    source: Any,
    mem: Any,
    given: dict[str, Any],
    *,
    device: str | None,
    stream: str,
    live: bool | None,
    max_reconnects: int = 5,
    from_start: bool = False,
    strict: bool = False,
) -> Wired:
    """Settle the settings of ``mem`` (the writer; validated, then saved), open the source (a bad
    path fails here, before any model is loaded), load the models, check that their widths fit
    the memory, and wire them with ``agents.build_ingest`` (resuming an interrupted file)."""
    from agents.ingest import build_ingest
    from cli.settings import resolve_settings
    from streamvid.compress import create_compressor
    from streamvid.ingest import open_source

    settings = resolve_settings(mem, **given).ingest()
    opened = open_source(source, strict=strict)
    llm, emb = _load_models(settings, device)
    _check_widths(mem, settings, llm, emb)
    compressor = create_compressor(settings["compressor"], ratio=settings["ratio"])
    job = build_ingest(
        opened,
        mem,
        llm,
        emb,
        compressor,
        stream_id=stream,
        fps=settings["fps"],
        live=live,
        max_reconnects=max_reconnects,
        progress=False,  # the CLI shows its own (IngestProgress)
        resume=True,
        from_start=from_start,
    )
    return Wired(job, mem, llm, emb)


@dataclass
class Outcome:
    """How a driven ingest ended: its stats and why it stopped."""

    stats: Any
    reason: str  # "ended", "error", "interrupted", "duration", "stalled", "complete" (nothing to do)
    error: BaseException | None = None


def _drive(
    job: Any,
    *,
    duration: float | None = None,
    reconnect_timeout: float | None = None,
    name: str = "ingest",
) -> Outcome:
    """Run ``job`` in the background with a progress display until it ends, Ctrl-C (a second one
    aborts), ``duration`` seconds, or (live sources) ``reconnect_timeout`` seconds without a frame."""
    stop = threading.Event()
    previous = None

    def on_sigint(*_: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    live = bool(job.pipeline.live)
    progress = IngestProgress(f"{name} {job.pipeline.source.name}", None if live else job.pipeline.source.duration)
    start = last_change = time.monotonic()
    last_frames, reason, error = 0, "ended", None
    job.start()
    try:
        while True:
            try:
                job.join(timeout=0.25)
                break
            except TimeoutError:
                pass
            except Exception as err:  # noqa: BLE001 - the source's error, after the segments before it
                error = err
                break
            now, stats = time.monotonic(), job.stats
            if not live:
                progress.set_total(job.pipeline.source.duration)
            progress.update(stats)
            if stats.frames_decoded != last_frames:
                last_frames, last_change = stats.frames_decoded, now
            if reason == "ended":
                if stop.is_set():
                    reason = "interrupted"
                elif duration is not None and now - start >= duration:
                    reason = "duration"
                elif live and reconnect_timeout is not None and now - last_change >= reconnect_timeout:
                    reason = "stalled"
                if reason != "ended":
                    job.stop()  # the open segment is still delivered; the loop joins
    except BaseException:  # a second Ctrl-C
        job.stop()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        progress.close(job.stats, finished=reason == "ended" and error is None)
    return Outcome(job.stats, "error" if error is not None else reason, error)


def _check_outcome(outcome: Outcome, source: str, reconnect_timeout: float | None) -> None:
    """Raise for an ingest that ended in an error, stalled, or never delivered a frame."""
    if outcome.reason == "complete":
        return
    stats = outcome.stats
    last = f"; last error: {stats.errors[-1]}" if stats.errors else ""
    if outcome.error is not None:
        if isinstance(outcome.error, StreamDisconnectedError):
            raise CliError(str(outcome.error), hint=RECONNECT_HINT) from outcome.error
        raise outcome.error
    if outcome.reason == "stalled":
        raise CliError(
            f"{source}: no frame for {reconnect_timeout:g} s ({stats.reconnects} reconnects{last}); gave up",
            hint=RECONNECT_HINT,
        )
    if stats.frames_decoded == 0:
        when = " before Ctrl-C" if outcome.reason == "interrupted" else ""
        raise CliError(
            f"{source}: no frame arrived{when} ({stats.reconnects} reconnects{last})",
            hint=f"check that the source is up; {RECONNECT_HINT}",
        )


def _ingest_into(
    memory: Path,
    source: str,
    given: dict[str, Any],
    *,
    cap: int | None,
    device: str | None,
    stream: str,
    live: bool | None,
    max_reconnects: int,
    reconnect_timeout: float | None,
    duration: float | None = None,
    name: str = "ingest",
    from_start: bool = False,
    strict: bool = False,
) -> tuple[Outcome, Any, Wired]:
    """Ingest ``source`` into the memory directory ``memory`` with the settings ``given`` (None: the
    memory's); returns how it ended, the memory's stats and what was wired (its memory closed).
    A file ingested before resumes after its last stored segment (or is left alone when it
    completed). A directory this run created is removed again when nothing was stored in it."""
    _check_compressor(given.get("compressor"))
    new = NewDirs(memory)
    mem = wired = None
    try:
        mem = _open_memory(memory, cap)  # the writer lock first: a second writer fails before any model loads
        if not from_start and _already_complete(mem, source, stream):
            err_console.print(
                f"{source} is already ingested into stream {stream!r}; pass --from-start to ingest it again",
                soft_wrap=True,
            )
            from streamvid.ingest import IngestStats

            held = mem.stats()
            mem.close()
            return Outcome(IngestStats(), "complete"), held, None
        wired = _wire_ingest(
            source,
            mem,
            given,
            device=device,
            stream=stream,
            live=live,
            max_reconnects=max_reconnects,
            from_start=from_start,
            strict=strict,
        )
        job = wired.job
        if job.resume_from is not None:
            err_console.print(
                f"resuming {source} after {job.resume_from:g} s (stored by an earlier run)", soft_wrap=True
            )
        outcome = _drive(job, duration=duration, reconnect_timeout=reconnect_timeout, name=name)
        held = mem.stats()
        mem.close()
    except BaseException:
        stored = _stored_any(mem)
        _close_quietly(wired, mem)
        if not stored:
            new.discard()  # a failed first run leaves no memory directory behind
        raise
    if outcome.stats.segments == 0 and not held.segments_live and not held.segments_evicted:
        new.discard()
    return outcome, held, wired


def _check_compressor(name: str | None) -> None:
    """An unknown --compressor is a usage error, found before the memory's settings are written."""
    if name is None:
        return
    from streamvid.compress import list_compressors

    known = list_compressors()
    if name not in known:
        raise CliError(f"--compressor: {UnknownNameError('compressor', name, known)}", exit_code=2)


def _already_complete(mem: Any, source: str, stream: str) -> bool:
    """Whether the file ``source`` was ingested to its end into ``stream`` (checked before any model loads)."""
    from agents.ingest import ingest_complete

    return ingest_complete(mem, source, stream)


def _stored_any(mem: Any) -> bool:
    """Whether an open memory holds any segment (a failed run keeps it for resume)."""
    try:
        return mem is not None and sum(mem.segment_counts()) > 0
    except Exception:  # noqa: BLE001 - already failing; keep the directory rather than guess
        return True


def _close_quietly(wired: Wired | None, mem: Any = None) -> None:
    try:
        if wired is not None:
            wired.job.stop()
        if mem is not None:
            mem.close()
    except Exception:  # noqa: BLE001 - already failing; the first error is the one reported
        pass


def ingest(
    source: Annotated[str, typer.Argument(help="a video file or a stream URL")],
    memory: MemoryOpt,
    model: ModelOpt = None,
    embedder: EmbedderOpt = None,
    compressor: CompressorOpt = None,
    ratio: RatioOpt = None,
    cap_tokens: CapOpt = None,
    fps: FpsOpt = None,
    stream: StreamOpt = "default",
    max_reconnects: MaxReconnectsOpt = 5,
    reconnect_timeout: ReconnectTimeoutOpt = None,
    from_start: FromStartOpt = False,
    strict: StrictOpt = False,
    device: DeviceOpt = None,
) -> None:
    """Ingest a file (or a stream until it ends) into a memory. A file ingested before resumes
    where it stopped; holes in the video are reported (--strict: they fail the ingest)."""
    outcome, held, _ = _ingest_into(
        memory,
        source,
        {"model": model, "embedder": embedder, "compressor": compressor, "ratio": ratio, "fps": fps},
        cap=cap_tokens,
        device=device,
        stream=stream,
        live=None,
        max_reconnects=max_reconnects,
        reconnect_timeout=reconnect_timeout,
        from_start=from_start,
        strict=strict,
    )
    s = outcome.stats
    if s.segments:
        console.print(
            f"ingested {s.frames_sampled} frames into {s.segments} segments "
            f"({s.realtime_factor:.1f}x real time); memory holds {held.tokens_held}/{held.token_cap} tokens in "
            f"{held.segments_live} live segments ({held.segments_evicted} evicted)",
            soft_wrap=True,
        )
    _check_outcome(outcome, source, reconnect_timeout)
    if outcome.reason == "interrupted":
        raise CliError("interrupted; the segments before Ctrl-C are stored", exit_code=130)


def watch(
    url: Annotated[str, typer.Argument(help="a live source: rtsp/http/tcp/udp URL or /dev/videoN")],
    memory: MemoryOpt,
    model: ModelOpt = None,
    embedder: EmbedderOpt = None,
    compressor: CompressorOpt = None,
    ratio: RatioOpt = None,
    cap_tokens: CapOpt = None,
    fps: FpsOpt = None,
    stream: StreamOpt = "camera",
    duration: Annotated[
        float | None,
        typer.Option(help="stop after this many seconds (> 0; default: at Ctrl-C)", callback=CHECKS["positive_float"]),
    ] = None,
    max_reconnects: MaxReconnectsOpt = 5,
    reconnect_timeout: ReconnectTimeoutOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Ingest a live source until Ctrl-C or --duration (frames are dropped, never the source blocked).
    Exits 1 when the source never delivered a frame or ended in an error."""
    outcome, _, _ = _ingest_into(
        memory,
        url,
        {"model": model, "embedder": embedder, "compressor": compressor, "ratio": ratio, "fps": fps},
        cap=cap_tokens,
        device=device,
        stream=stream,
        live=True,
        max_reconnects=max_reconnects,
        reconnect_timeout=reconnect_timeout,
        duration=duration,
        name="watch",
    )
    s = outcome.stats
    if s.segments:
        console.print(
            f"stopped: {s.frames_sampled} frames, {s.frames_dropped} dropped, "
            f"{s.segments} segments, {s.reconnects} reconnects"
        )
    _check_outcome(outcome, url, reconnect_timeout)


def _video_memory(video: Path, settings: dict[str, Any]) -> Path:
    """A cached memory for a video file, keyed by the file and the settings."""
    from streamvid.cache import cache_root

    st = video.stat()
    ident = json.dumps([str(video.resolve()), st.st_size, st.st_mtime_ns, settings], sort_keys=True)
    return cache_root() / "memories" / hashlib.sha1(ident.encode()).hexdigest()[:16]


def _memory_for_video(video: Path, model: str | None, embedder: str | None, device: str | None) -> Wired:
    """The cached memory of ``video`` (opened for reading) and the loaded models.

    The cache is used only when its ingest completed; otherwise the video is ingested first,
    or, after a run that was killed or failed, the ingest resumes after its last stored
    segment (saying so). A first run that stores nothing leaves no directory behind."""
    from agents.ingest import ingest_complete
    from cli.settings import resolve_settings

    base = {"model": model or DEFAULT_MODEL, "embedder": embedder or DEFAULT_EMBEDDER}
    for name, option in ((base["model"], "--model"), (base["embedder"], "--embedder")):
        if name.lower() != "none":
            resolve_checkpoint(name, option)  # fails fast offline, before anything is written
    mem_dir = _video_memory(video, base)
    complete = False
    if _is_memory(mem_dir):
        with _open_reader(mem_dir) as cached:
            complete = ingest_complete(cached, video)
    wired = None
    if not complete:
        outcome, _, wired = _ingest_into(
            mem_dir,
            str(video),
            base,
            cap=None,
            device=device,
            stream="default",
            live=None,
            max_reconnects=5,
            reconnect_timeout=None,
        )
        _check_outcome(outcome, str(video), None)
        if outcome.reason == "interrupted":
            raise CliError(
                "interrupted before the video was ingested; run the same command again to resume", exit_code=130
            )
    mem = _open_reader(mem_dir)
    if wired is not None:
        return Wired(None, mem, wired.llm, wired.embedder)
    try:
        settings = resolve_settings(mem, **base).ingest()
        llm, emb = _load_models(settings, device)
        _check_widths(mem, settings, llm, emb)
    except BaseException:
        mem.close()
        raise
    return Wired(None, mem, llm, emb)


def _check_stream(mem: Any, stream: str | None) -> list[str] | None:
    if stream is None:
        return None
    known = mem.streams()
    if stream not in known:
        if not known:
            raise CliError(f"--stream {stream}: the memory holds no stream yet", exit_code=2)
        raise CliError(f"--stream: {UnknownNameError('stream', stream, known)}", exit_code=2)
    return [stream]


def _time_range(
    mem: Any, start: float | None, end: float | None, streams: list[str] | None
) -> tuple[float, float] | None:
    """--start/--end clamped to the memory's timeline [0, end of the last segment]."""
    from streamvid.clock import format_clock

    if start is None and end is None:
        return None
    last = mem.end_time(streams)
    if last is None:
        return None  # an empty memory: the answer says so
    lo = start or 0.0
    require(
        lo < last,
        f"--start {lo:g} is after the end of the recording ({last:g} s, {format_clock(last)})",
        hint=f"choose a --start below {last:g}",
    )
    if end is None:
        return lo, last
    require(end > lo, f"--end {end:g} must come after --start {lo:g}")
    return lo, min(end, last)


def ask(
    target: Annotated[Path, typer.Argument(help="a memory directory, or a video file (ingested first, cached)")],
    question: Annotated[str, typer.Argument(help="the question")],
    k: Annotated[
        int | None,
        typer.Option(
            help="at most this many segments (>= 1; default: as many as the token budget covers)",
            callback=CHECKS["positive_int"],
        ),
    ] = None,
    max_visual_tokens: Annotated[
        int | None,
        typer.Option(
            help="video tokens in the prompt (>= 1; default: half the model's context)", callback=CHECKS["positive_int"]
        ),
    ] = None,
    start: Annotated[float | None, typer.Option(help="only after this time (s, >= 0)", callback=CHECKS["time"])] = None,
    end: Annotated[
        float | None, typer.Option(help="only before this time (s; clamped to the recording)", callback=CHECKS["time"])
    ] = None,
    stream: Annotated[str | None, typer.Option(help="only this stream")] = None,
    max_new_tokens: Annotated[
        int, typer.Option(help="answer length limit (>= 1)", callback=CHECKS["positive_int"])
    ] = 128,
    model: ModelOpt = None,
    embedder: EmbedderOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Answer a question about a memory or a video file."""
    from cli.settings import resolve_settings

    require(bool(question.strip()), "the question is empty; ask something about the video")
    if start is not None and end is not None:
        require(start < end, f"--start {start:g} must come before --end {end:g}")
    if not target.exists():
        raise CliError(f"{target} does not exist; pass a memory directory or a video file")
    if target.is_dir():
        if not _is_memory(target):
            raise CliError(f"{target} is not a streamvid memory; create one with 'streamvid ingest'")
        mem = _open_reader(target)
        try:
            streams = _check_stream(mem, stream)
            time_range = _time_range(mem, start, end, streams)
            settings = resolve_settings(mem, model=model, embedder=embedder).ingest()
            llm, emb = _load_models(settings, device)
            _check_widths(mem, settings, llm, emb)
            answer = _answer(llm, mem, emb, question, k, max_new_tokens, time_range, streams, max_visual_tokens)
        finally:
            mem.close()
    else:
        wired = _memory_for_video(target, model, embedder, device)
        try:
            streams = _check_stream(wired.memory, stream)
            time_range = _time_range(wired.memory, start, end, streams)
            answer = _answer(
                wired.llm,
                wired.memory,
                wired.embedder,
                question,
                k,
                max_new_tokens,
                time_range,
                streams,
                max_visual_tokens,
            )
        finally:
            wired.memory.close()
    console.print(f"[bold]{escape(answer.text)}[/]", soft_wrap=True)
    if answer.segments:
        used = ", ".join(
            f"{u.stream} {u.start:.1f}-{u.end:.1f}s"
            + (f" ({u.score:.2f})" if u.score is not None else "")
            + (f" [{u.tokens}/{u.stored_tokens} tokens]" if u.tokens != u.stored_tokens else "")
            for u in answer.segments
        )
        console.print(f"segments used: {used}", soft_wrap=True)
        console.print(
            f"visual tokens: {answer.visual_tokens} of a budget of {answer.max_visual_tokens}", soft_wrap=True
        )
    t = answer.timings
    console.print(
        f"timings: retrieve {t['retrieve'] * 1e3:.0f} ms, plan, fetch and re-merge "
        f"{(t.get('plan', 0) + t.get('fetch', 0) + t.get('remerge', 0)) * 1e3:.0f} ms, "
        f"assemble {t['assemble'] * 1e3:.0f} ms, "
        f"prefill {t['prefill'] * 1e3:.0f} ms ({answer.prompt_tokens} tokens), decode {t['decode'] * 1e3:.0f} ms",
        soft_wrap=True,
    )


def _answer(llm, mem, emb, question, k, max_new_tokens, time_range, streams, max_visual_tokens=None) -> Any:
    from agents.qa import VideoQA

    qa = VideoQA(llm, mem, emb, k=k, max_new_tokens=max_new_tokens, max_visual_tokens=max_visual_tokens)
    return qa.ask(question, time_range=time_range, streams=streams)


def inspect(
    memory: Annotated[Path, typer.Argument(help="memory directory")],
    plot: Annotated[Path | None, typer.Option(help="PNG path (default: DIR/budgets.png)")] = None,
    limit: Annotated[int, typer.Option(help="rows shown (>= 1)", callback=CHECKS["positive_int"])] = 50,
) -> None:
    """Table of segments and budgets, and a PNG plot of budget per segment over time with the cap."""
    if not _is_memory(memory):
        raise CliError(f"{memory} is not a streamvid memory; create one with 'streamvid ingest'")
    from rich.table import Table

    with _open_reader(memory) as mem:
        stats = mem.stats()
        segments = mem.timeline()
        store = (
            f"tokens stored as {mem.config.dtype}; key index {mem.index_factory} "
            f"(config {mem.config.index_factory!r}, exact below {mem.config.index_switch_at} keys when 'auto')"
        )
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
    console.print(store, soft_wrap=True)
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
        raise CliError("the plot needs matplotlib", hint="pip install 'streamvid[bench]'") from None
    console.print(f"wrote {path}", soft_wrap=True)


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
    require(not path.is_dir(), f"{path} is a directory; pass a file name such as {path / 'sample.mp4'}")
    from streamvid.sample import write_sample_video

    new = NewDirs(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")  # same extension: same container
    try:
        scenes = write_sample_video(partial)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        new.discard()
        raise
    console.print(f"wrote {path}:", soft_wrap=True)
    for start, end, caption in scenes:
        console.print(f"  {start:4.1f}-{end:4.1f} s  {caption}")


def demo(
    video: Annotated[Path | None, typer.Argument(help="a video file; default: a clip of photo pans")] = None,
    ratio: Annotated[
        float, typer.Option(help="fraction of tokens to keep, in (0, 1]", callback=CHECKS["ratio"])
    ] = 0.15,
) -> None:
    """Compress a 32-frame clip with every compressor and compare what survives side by side
    (the class-query readout with the bench extra, attention-output fidelity without it)."""
    from bench.demo import demo_table, run_demo

    grid, rows = run_demo(ratio=ratio, video=video)
    table, sentence = demo_table(grid, rows, ratio)
    console.print(table)
    console.print(sentence, soft_wrap=True)
