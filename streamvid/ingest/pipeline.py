"""The ingest pipeline: decode thread -> bounded queue -> segmenter -> segment stage.

File mode applies backpressure (the decoder waits; nothing is lost). Live mode
never blocks the source: when the queue is full a frame is dropped by the stated
policy and counted. Network sources that die are reopened with exponential
backoff, up to ``max_reconnects`` attempts in a row, then a typed error.
Every wait has a timeout; ``stop()`` from any thread ends both threads.

Damage is never silent: holes the source finds (corrupt data, skipped decode errors, a gap
in timestamps longer than 3 sampling intervals and 1 s, an early end; see
:mod:`streamvid.ingest.damage`) are listed in :attr:`IngestStats.holes` with counts beside
them, and logged; ``strict=True`` raises :class:`~streamvid.errors.DamagedVideoError`
(:class:`~streamvid.errors.TruncatedVideoError` for an early end) at the first one instead.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from streamvid.errors import ConfigError, DamagedVideoError, SourceError, StreamDisconnectedError
from streamvid.ingest.damage import DamageReport, Hole, gap_threshold
from streamvid.ingest.sampler import Sampler
from streamvid.ingest.segmenter import EncoderSegmenter, StreamingSegmenter
from streamvid.ingest.sources import VideoSource, open_source
from streamvid.types import Segment

__all__ = ["IngestPipeline", "IngestStats", "DropPolicy"]

log = logging.getLogger(__name__)

DropPolicy = Literal["drop_oldest", "drop_newest"]
_POLL = 0.1  # seconds: how often blocked waits look at the stop flag


@dataclass
class IngestStats:
    """Counters of one run. ``realtime_factor`` = media seconds / wall seconds.

    holes: damage found, in time order (pipeline clock); decode_errors: packets the decoder
    rejected and that were skipped; demux_errors: read errors read past; skipped_bytes: bytes
    the demuxer jumped over (or left unread at an early end); repeated_frames: zero-byte
    packets delivered as the previous picture again.
    """

    frames_decoded: int = 0
    frames_sampled: int = 0
    frames_dropped: int = 0
    frames_segmented: int = 0
    segments: int = 0
    reconnects: int = 0
    media_seconds: float = 0.0
    wall_seconds: float = 0.0
    pts_based: bool = True
    errors: list[str] = field(default_factory=list)
    holes: list[Hole] = field(default_factory=list)
    decode_errors: int = 0
    demux_errors: int = 0
    skipped_bytes: int = 0
    repeated_frames: int = 0

    @property
    def realtime_factor(self) -> float:
        return self.media_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def damaged(self) -> bool:
        """Whether any hole was found."""
        return bool(self.holes)

    def damage_summary(self) -> str:
        """One line: each hole described, or ``no damage found``."""
        return DamageReport(self.holes).summary()

    def add_damage(self, report: DamageReport, offset: float = 0.0) -> None:
        """Fold one source pass's report in; ``offset`` moves its holes onto the pipeline clock."""
        self.holes.extend(h.shifted(offset) for h in report.holes)
        self.decode_errors += report.decode_errors
        self.demux_errors += report.demux_errors
        self.skipped_bytes += report.skipped_bytes
        self.repeated_frames += report.repeated_frames


class _End:
    """Queue sentinel: the producer is done (``error`` set when it failed)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class IngestPipeline:
    """Cut a source into segments and hand each one to ``on_segment``.

    source: anything :func:`open_source` takes. on_segment: the encode/compress
    stage and sink, called with every closed :class:`Segment` (a batch of frames)
    in the consumer thread. segmenter: a :class:`StreamingSegmenter` (raw segments) or an
    :class:`EncoderSegmenter` (frames encoded in micro-batches as they arrive; its ``idle()``
    runs whenever no frame is waiting, so a live frame is encoded without waiting for a full
    batch). live: default from the source. drop_policy (live
    mode): ``drop_oldest`` keeps the newest frames (the queue holds the latest
    view of the scene); ``drop_newest`` keeps what is queued and discards
    arrivals. reconnect_backoff: (first delay, largest delay) in seconds, doubling per
    attempt, or a function ``attempt -> seconds`` (attempt counts from 1). reconnect_wait:
    called with each delay instead of waiting on the stop flag (tests pass a recorder, so
    nothing sleeps); it returns True to give up. strict: the first hole the source finds is
    an error (see the module docstring); the gap threshold follows the sampler's interval.
    """

    def __init__(
        self,
        source: Any,
        on_segment: Callable[[Segment], Any],
        *,
        sampler: Sampler | None = None,
        segmenter: StreamingSegmenter | EncoderSegmenter | None = None,
        live: bool | None = None,
        queue_size: int = 64,
        drop_policy: DropPolicy = "drop_oldest",
        max_reconnects: int = 5,
        reconnect_backoff: tuple[float, float] | Callable[[int], float] = (0.5, 8.0),
        reconnect_wait: Callable[[float], bool | None] | None = None,
        progress: bool = False,
        stream_id: str = "default",
        strict: bool = False,
    ) -> None:
        if drop_policy not in ("drop_oldest", "drop_newest"):
            raise ConfigError(f"drop_policy must be 'drop_oldest' or 'drop_newest', got {drop_policy!r}")
        if queue_size < 1 or max_reconnects < 0:
            raise ConfigError("queue_size must be >= 1 and max_reconnects >= 0")
        self.source: VideoSource = open_source(source)
        self.on_segment = on_segment
        self.sampler = sampler or Sampler()
        self.segmenter = segmenter or StreamingSegmenter(stream_id=stream_id)
        self.live = self.source.live if live is None else live
        self.drop_policy = drop_policy
        self.max_reconnects = max_reconnects
        self.backoff = reconnect_backoff
        self.reconnect_wait = reconnect_wait
        if strict:
            self.source.strict = True
        fps = self.sampler.config.fps
        if fps is not None and self.source.min_gap is None:
            self.source.min_gap = gap_threshold(1.0 / fps)
        self.progress = progress
        self.stats = IngestStats()
        self._queue: queue.Queue[tuple[float, np.ndarray] | _End] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._producer: threading.Thread | None = None
        self._consumer: threading.Thread | None = None
        self._result_error: BaseException | None = None
        self._done = threading.Event()

    # -- control -----------------------------------------------------------------

    def run(self) -> IngestStats:
        """Ingest until the source ends or :meth:`stop`; re-raise a source error after
        delivering every segment that came before it."""
        start = time.monotonic()
        self._producer = threading.Thread(target=self._produce, name="streamvid-decode", daemon=True)
        self._producer.start()
        try:
            self._consume(start)
        finally:
            self._stop.set()
            self._drain()
            self._producer.join(timeout=30.0)
            self.stats.wall_seconds = time.monotonic() - start
            self.stats.pts_based = self.source.pts_based
            self._done.set()
        return self.stats

    def start(self) -> None:
        """Run in a background thread; see :meth:`join` and :meth:`stop`."""

        def target() -> None:
            try:
                self.run()
            except BaseException as err:  # handed to join()
                self._result_error = err

        self._consumer = threading.Thread(target=target, name="streamvid-ingest", daemon=True)
        self._consumer.start()

    def stop(self) -> None:
        """Ask both threads to finish; the open segment is delivered. Safe from any thread."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> IngestStats:
        """Wait for a :meth:`start`-ed run; re-raise its error. TimeoutError if still running."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"ingest still running after {timeout} s; call stop() first")
        if self._consumer is not None:
            self._consumer.join(timeout=5.0)
        if self._result_error is not None:
            raise self._result_error
        return self.stats

    @property
    def error(self) -> BaseException | None:
        """The error that ended a :meth:`start`-ed run (None while it runs or when it ended well)."""
        return self._result_error

    @property
    def running(self) -> bool:
        return not self._done.is_set() and (self._producer is not None and self._producer.is_alive())

    # -- producer (decode thread) --------------------------------------------------

    def _frames_with_reconnect(self) -> Iterator[tuple[float, Any]]:
        """Source frames, reopening a live reconnectable source after failures.

        Times stay monotone across reconnects: a new connection's clock is shifted to
        continue from the last frame plus the wall time that passed.
        """
        attempts = 0
        last_t: float | None = None
        last_wall = 0.0
        while not self._stop.is_set():
            offset: float | None = None
            try:
                try:
                    for frame in self.source.frames():
                        if offset is None:
                            offset = 0.0 if last_t is None else last_t + (time.monotonic() - last_wall) - frame.time
                        attempts = 0
                        t = frame.time + offset
                        last_t, last_wall = t, time.monotonic()
                        yield t, frame
                        if self._stop.is_set():
                            return
                    return
                finally:
                    if self.source.damage is not None:
                        self.stats.add_damage(self.source.damage, offset or 0.0)
            except SourceError as err:
                if isinstance(err, DamagedVideoError) or not (self.live and self.source.reconnectable):
                    raise
                attempts += 1
                self.stats.errors.append(str(err))
                if attempts > self.max_reconnects:
                    raise StreamDisconnectedError(
                        f"{self.source.name}: gave up after {self.max_reconnects} reconnect attempts "
                        f"(last error: {err}); check that the stream is up, or raise max_reconnects",
                        attempts=self.max_reconnects,
                    ) from None
                self.stats.reconnects += 1
                delay = self._delay(attempts)
                log.warning(
                    "%s: %s; reconnecting in %.2f s (attempt %d of %d)",
                    self.source.name,
                    err,
                    delay,
                    attempts,
                    self.max_reconnects,
                )
                if self._wait(delay):
                    return

    def _delay(self, attempt: int) -> float:
        """Seconds before reconnect attempt ``attempt`` (from 1)."""
        if callable(self.backoff):
            return float(self.backoff(attempt))
        first, largest = self.backoff
        return min(largest, first * 2 ** (attempt - 1))

    def _wait(self, delay: float) -> bool:
        """Wait ``delay`` seconds before a reconnect; True when the run should end instead."""
        if self.reconnect_wait is not None:
            return bool(self.reconnect_wait(delay)) or self._stop.is_set()
        return self._stop.wait(delay)

    def _produce(self) -> None:
        error: BaseException | None = None
        try:
            for t, frame in self._frames_with_reconnect():
                self.stats.frames_decoded += 1
                if not self.sampler.accept(t):
                    continue
                item = (t, self.sampler.convert(frame))
                self.stats.frames_sampled += 1
                if self.live:
                    self._offer(item)
                elif not self._put_blocking(item):
                    return
        except BaseException as err:  # delivered to the consumer, raised there
            error = err
        finally:
            self._put_blocking(_End(error), force=True)

    def _offer(self, item: tuple[float, np.ndarray]) -> None:
        """Live mode: never wait. A full queue drops by policy."""
        try:
            self._queue.put_nowait(item)
            return
        except queue.Full:
            pass
        if self.drop_policy == "drop_newest":
            self.stats.frames_dropped += 1
            return
        try:
            self._queue.get_nowait()
            self.stats.frames_dropped += 1
        except queue.Empty:
            pass
        try:
            self._queue.put_nowait(item)
        except queue.Full:  # the consumer cannot have refilled it, but never block
            self.stats.frames_dropped += 1

    def _put_blocking(self, item: Any, force: bool = False) -> bool:
        """File mode backpressure: wait for room, checking the stop flag."""
        while True:
            if self._stop.is_set() and not force:
                return False
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                if force and self._stop.is_set():
                    # the consumer is gone; make room for the sentinel
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        pass

    # -- consumer --------------------------------------------------------------------

    def _deliver(self, segment: Segment | list[Segment] | None) -> None:
        """Hand closed segments on (a segmenter returns one, none, or a list)."""
        if segment is None:
            return
        for seg in segment if isinstance(segment, list) else [segment]:
            self.stats.segments += 1
            self.stats.frames_segmented += seg.frames.shape[0]
            self.on_segment(seg)

    def _consume(self, start: float) -> None:
        bar = _Progress(self, start) if self.progress else None
        first_t: float | None = None
        try:
            while True:
                try:
                    item = self._queue.get(timeout=_POLL)
                except queue.Empty:
                    if self._stop.is_set() and not (self._producer and self._producer.is_alive()):
                        break
                    continue
                if isinstance(item, _End):
                    self._deliver(self.segmenter.flush())
                    if item.error is not None:
                        raise item.error
                    break
                t, frame = item
                first_t = t if first_t is None else first_t
                self.stats.media_seconds = t - first_t
                self._deliver(self.segmenter.push(t, frame))
                idle = getattr(self.segmenter, "idle", None)
                if idle is not None and self._queue.empty():  # nothing waiting: encode what is pending now
                    self._deliver(idle())
                if bar is not None:
                    bar.update()
                if self._stop.is_set() and self._queue.empty():
                    self._deliver(self.segmenter.flush())
                    break
        finally:
            if bar is not None:
                bar.close()

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


class _Progress:
    """A rich progress line: frames, segments, real-time factor, ETA (files with a duration)."""

    def __init__(self, pipeline: IngestPipeline, start: float) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.pipeline = pipeline
        self.start = start
        total = pipeline.source.duration if not pipeline.live else None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn(
                "{task.fields[frames]} frames, {task.fields[segments]} segments, "
                "{task.fields[rtf]:.1f}x real time, {task.fields[dropped]} dropped"
            ),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.progress.add_task(
            f"ingest {pipeline.source.name}", total=total, frames=0, segments=0, rtf=0.0, dropped=0
        )
        self.progress.start()

    def update(self) -> None:
        s = self.pipeline.stats
        wall = time.monotonic() - self.start
        self.progress.update(
            self.task,
            completed=s.media_seconds,
            frames=s.frames_sampled,
            segments=s.segments,
            rtf=s.media_seconds / wall if wall > 0 else 0.0,
            dropped=s.frames_dropped,
        )

    def close(self) -> None:
        self.update()
        self.progress.stop()
