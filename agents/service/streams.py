"""The service's streams: added and removed while the service runs, all ingesting into the one
memory the service writes, all sharing one encoder thread.

A :class:`LiveSession` is fixed at construction; a service adds and removes cameras while it
runs, so this registry composes the same parts itself: one :func:`~agents.ingest.build_ingest`
per stream and one shared :class:`~agents.ingest.EncoderWorker`. After each stored segment it
writes the segment's key frame as a JPEG thumbnail, updates the stream's live clock, feeds the
alert rules and publishes a ``segment`` event.

Restart safety. The stream list is persisted (agents/service/state.py) before a stream starts.
On start-up every stream is added again: a file resumes after its last stored segment (the
memory's resume progress, see agents/ingest.py) or does nothing when it completed; a live
source starts from now, its timeline continued after the stream's last stored time plus the
wall time that passed (so time ranges never overlap), its segment numbering continued too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agents.ingest import EncoderWorker, Ingest, build_ingest, source_key
from agents.service.alerts import AlertEngine
from agents.service.events import EventBus
from agents.service.metrics import ServiceMetrics
from agents.service.security import ServiceError
from agents.service.state import ServiceState, StreamSpec
from memory import TokenMemory
from streamvid.compress import Compressor
from streamvid.embedders import Embedder
from streamvid.errors import SourceError, StreamvidError
from streamvid.ingest.sources import FileSource, RawFrame, VideoSource, open_source, probe_source
from streamvid.models.base import VideoLLM
from streamvid.types import CompressedSegment, Segment

__all__ = ["THUMBNAIL_DIR", "StreamRegistry", "thumbnail_path", "write_thumbnail"]

log = logging.getLogger(__name__)

THUMBNAIL_DIR = "service-thumbnails"
THUMBNAIL_WIDTH = 192


class _ContinuedSource(VideoSource):
    """A live source whose frame times start at ``offset`` seconds: the stream's timeline goes on
    after a restart instead of starting again at 0."""

    def __init__(self, inner: VideoSource, offset: float) -> None:
        self.inner = inner
        self.offset = offset
        for name in ("live", "reconnectable", "pts_based", "duration", "name", "strict", "min_gap"):
            setattr(self, name, getattr(inner, name))
        self.target = getattr(inner, "target", None)

    @property
    def damage(self) -> Any:  # type: ignore[override]
        return self.inner.damage

    @damage.setter
    def damage(self, value: Any) -> None:
        self.inner.damage = value

    def frames(self) -> Iterator[RawFrame]:
        self.inner.strict = self.strict
        for frame in self.inner.frames():
            yield replace(frame, time=frame.time + self.offset)


class _PacedFileSource(FileSource):
    """A file replayed at ``pace`` times real time, as a recorded camera would arrive (option
    ``pace``). Still a file for resume: the frames up to ``pace_after`` seconds (what an earlier
    run stored) go by unpaced."""

    def __init__(self, path: str, pace: float) -> None:
        super().__init__(path)
        self.pace = pace
        self.pace_after: float | None = None
        self._stop = threading.Event()

    def frames(self) -> Iterator[RawFrame]:
        origin: tuple[float, float] | None = None  # (media time, wall time) of the first paced frame
        for frame in super().frames():
            if self.pace_after is None or frame.time > self.pace_after:
                now = time.monotonic()
                if origin is None:
                    origin = (frame.time, now)
                due = origin[1] + (frame.time - origin[0]) / self.pace
                if due > now and self._stop.wait(due - now):
                    return
            yield frame

    def stop(self) -> None:
        self._stop.set()


@dataclass
class _Stream:
    spec: StreamSpec
    job: Ingest
    started: float
    resumed_from: float | None = None
    time_offset: float = 0.0
    last_state: tuple[str, str | None] | None = None
    joined: bool = False
    settle_lock: threading.Lock = field(default_factory=threading.Lock)


def write_thumbnail(path: Path, frame: np.ndarray, width: int = THUMBNAIL_WIDTH) -> None:
    """uint8 [H, W, 3] -> a JPEG at ``path`` (written beside it, then renamed: never half a file)."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(frame))
    if image.width > width:
        image = image.resize((width, max(1, round(image.height * width / image.width))))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    image.save(partial, format="JPEG", quality=80)
    partial.replace(path)


def thumbnail_path(memory_root: str | Path, sid: int) -> Path:
    """Where segment ``sid``'s key-frame JPEG lives beside the memory at ``memory_root`` (1000 per
    directory); one layout for the service and a cluster's shards."""
    return Path(memory_root) / THUMBNAIL_DIR / f"{sid // 1000:05d}" / f"{sid}.jpg"


def _finished(job: Ingest) -> bool:
    """Whether a started ingest's run is over: both threads (``Ingest.running`` follows the decode
    thread only, which ends before the last segments of a file are encoded and stored)."""
    try:
        job.pipeline.join(timeout=0)
    except TimeoutError:
        return False
    except Exception:  # noqa: BLE001 - ended in an error: over
        return True
    return True


class StreamRegistry:
    def __init__(
        self,
        memory: TokenMemory,
        llm: VideoLLM,
        embedder: Embedder,
        compressor: Compressor,
        state: ServiceState,
        bus: EventBus,
        metrics: ServiceMetrics,
        alerts: AlertEngine,
        *,
        fps: float = 1.0,
        max_size: int = 448,
        max_len: int = 16,
        micro_batch: int = 8,
        encoder_batch: int = 32,
        open_timeout: float = 10.0,
        read_timeout: float = 10.0,
        max_streams: int = 16,
    ) -> None:
        self.memory, self.llm, self.embedder, self.compressor = memory, llm, embedder, compressor
        self.state, self.bus, self.metrics, self.alerts = state, bus, metrics, alerts
        self.fps, self.max_size, self.max_len, self.micro_batch = fps, max_size, max_len, micro_batch
        self.open_timeout, self.read_timeout, self.max_streams = open_timeout, read_timeout, max_streams
        self.encoder = EncoderWorker(llm, max_batch=encoder_batch)
        self.thumbnails = Path(memory.root) / THUMBNAIL_DIR
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="streamvid-service-monitor", daemon=True)
        self._monitor.start()

    # -- adding and removing ----------------------------------------------------------------

    def restore(self) -> list[str]:
        """Start every persisted stream again; a stream that cannot start shows its error (it stays
        in the list, so a camera that is down at boot is not forgotten). Returns the ids started."""
        started = []
        for spec in self.state.streams():
            try:
                self.add(spec, persist=False)
                started.append(spec.id)
            except StreamvidError as err:
                log.warning("stream %s could not be restarted: %s", spec.id, err)
                self.bus.publish("status", {"stream": spec.id, "state": "error", "error": str(err)})
        return started

    def add(self, spec: StreamSpec, *, persist: bool = True) -> dict[str, Any]:
        """Open, wire and start ``spec`` (already checked by agents/service/security.py)."""
        with self._lock:
            if self._closed.is_set():
                raise ServiceError(503, "shutting_down", "the service is shutting down; try again after it restarts")
            if spec.id in self._streams:
                raise ServiceError(
                    409, "stream_exists", f"stream {spec.id!r} exists; DELETE it first or pick another id"
                )
            if len(self._streams) >= self.max_streams:
                raise ServiceError(
                    409, "too_many_streams", f"this service runs at most {self.max_streams} streams; remove one first"
                )
            entry = self._build(spec)
            if persist:
                self.state.add_stream(replace(spec, added=spec.added or time.time()))
            self._streams[spec.id] = entry
            entry.job.start()
        self._publish_status(entry, force=True)
        return self.status_of(entry)

    def _build(self, spec: StreamSpec) -> _Stream:
        options = spec.options
        live = spec.kind != "file"
        if spec.kind == "file":
            key = source_key(spec.target)
            others = [p for p in self.memory.sources() if p.stream == spec.id and p.source != key]
            if others:
                raise ServiceError(
                    409,
                    "stream_holds_other_source",
                    f"stream {spec.id!r} already holds segments of another source; pick a new id "
                    "(or DELETE it with ?purge=true)",
                )
            try:
                probe_source(spec.target)  # damaged or non-video files fail here, before any thread starts
            except SourceError as err:
                raise ServiceError(422, "bad_video", str(err)) from None
            pace = options.get("pace")
            source: Any = _PacedFileSource(spec.target, float(pace)) if pace else open_source(spec.target)
        else:
            opened = open_source(spec.target, open_timeout=self.open_timeout, read_timeout=self.read_timeout)
            offset = self._live_offset(spec.id)
            source = _ContinuedSource(opened, offset) if offset > 0 else opened
        job = build_ingest(
            source,
            self.memory,
            self.llm,
            self.embedder,
            self.compressor,
            stream_id=spec.id,
            fps=self.fps,
            max_size=self.max_size,
            max_len=int(options.get("max_len", self.max_len)),
            live=live,
            max_reconnects=int(options.get("max_reconnects", 5)),
            on_stored=lambda seg, sid: self._stored(spec, seg, sid),
            micro_batch=self.micro_batch,
            encoder=self.encoder,
            resume=True,
        )
        if isinstance(source, _PacedFileSource):
            source.pace_after = job.resume_from
        if live:
            newest = self.memory.newest(spec.id)
            job.stage.index_offset = 0 if newest is None else newest.segment_index + 1
        offset = source.offset if isinstance(source, _ContinuedSource) else 0.0
        return _Stream(spec, job, time.time(), job.resume_from, offset)

    def _live_offset(self, stream: str) -> float:
        """Where a restarted live stream's timeline goes on: after its last stored segment, plus the
        wall time since its clock was last recorded (0 for a new stream)."""
        end = self.memory.end_time([stream]) if stream in self.memory.streams() else None
        clock = self.state.clock(stream)
        offset = end or 0.0
        if clock is not None:
            offset = max(offset, clock[0] + max(0.0, time.time() - clock[1]))
        return offset + (1.0 / self.fps if offset > 0 else 0.0)

    def remove(self, stream_id: str, *, purge: bool = False, timeout: float = 30.0) -> dict[str, Any]:
        """Stop a stream (its open segment is stored) and forget it; ``purge`` also deletes its segments."""
        with self._lock:
            entry = self._streams.pop(stream_id, None)
            known = entry is not None or stream_id in self.memory.streams()
            if not known:
                raise ServiceError(404, "unknown_stream", f"no stream {stream_id!r}; GET /v1/streams lists them")
            self.state.remove_stream(stream_id)
        if entry is not None:
            self._stop(entry)
            try:
                entry.job.join(timeout=timeout)
            except TimeoutError:
                log.warning("stream %s did not stop within %.0f s", stream_id, timeout)
            except Exception:  # noqa: BLE001 - the source's own error, already in its status
                pass
        dropped = self.memory.drop_stream(stream_id) if purge else 0
        self.bus.publish("status", {"stream": stream_id, "state": "removed", "error": None, "purged": dropped})
        return {"removed": stream_id, "segments_purged": dropped}

    # -- what ingest calls ----------------------------------------------------------------------

    def _stored(self, spec: StreamSpec, segment: Segment, sid: int) -> None:
        """After each stored segment (on the stream's ingest thread): never raises into ingest."""
        try:
            frames = segment.frames
            key = frames[frames.shape[0] // 2].cpu().numpy()
            write_thumbnail(self.thumbnail_path(sid), key)
        except Exception as err:  # noqa: BLE001 - a thumbnail is a nicety; the segment is stored
            log.warning("thumbnail of segment %d not written: %s", sid, err)
        compressed: CompressedSegment | None = getattr(segment, "compressed", None)
        novelty = None
        try:
            if compressed is not None:
                novelty = self.alerts.on_segment(spec.id, sid, compressed)
                self.metrics.encode.observe(getattr(segment, "encode_seconds", 0.0))
                self.metrics.compress.observe(getattr(segment, "compress_seconds", 0.0))
            if spec.kind != "file":
                self.state.set_clock(spec.id, segment.end_time)
        except Exception as err:  # noqa: BLE001
            log.warning("segment %d of %s: bookkeeping failed: %s", sid, spec.id, err)
        self.bus.publish(
            "segment",
            {
                "stream": spec.id,
                "id": sid,
                "start": segment.start_time,
                "end": segment.end_time,
                "frames": int(segment.frames.shape[0]),
                "tokens": None if compressed is None else compressed.budget,
                "novelty": novelty,
                "thumbnail": f"/v1/segments/{sid}/thumbnail.jpg",
            },
        )

    def thumbnail_path(self, sid: int) -> Path:
        return thumbnail_path(self.memory.root, sid)

    def open_segments(self, streams: Sequence[str] = ()) -> list[CompressedSegment]:
        """The still-open segment of each running stream (all when ``streams`` is empty), for questions about now."""
        with self._lock:
            jobs = [e.job for name, e in self._streams.items() if not streams or name in streams]
        out = []
        for job in jobs:
            if not _finished(job):
                try:
                    seg = job.peek()
                except Exception:  # noqa: BLE001 - a stream mid-reconnect has nothing open to show
                    seg = None
                if seg is not None:
                    out.append(seg)
        return out

    # -- status ----------------------------------------------------------------------------------

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._streams)

    def has(self, stream_id: str) -> bool:
        with self._lock:
            return stream_id in self._streams

    def status(self, stream_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            entries = list(self._streams.values())
        if stream_id is not None:
            entries = [e for e in entries if e.spec.id == stream_id]
            if not entries:
                raise ServiceError(404, "unknown_stream", f"no stream {stream_id!r}; GET /v1/streams lists them")
        return [self.status_of(e) for e in entries]

    @staticmethod
    def _state(entry: _Stream) -> tuple[str, str | None]:
        job = entry.job
        if job.already_complete:
            return "complete", None
        if not _finished(job):
            return "running", None
        if job.error is not None:
            return "error", str(job.error)
        return ("done" if entry.spec.kind == "file" else "stopped"), None

    def status_of(self, entry: _Stream) -> dict[str, Any]:
        self._settle(entry)  # a finished file is marked complete before anyone is told it is done
        job, spec = entry.job, entry.spec
        s = job.stats
        state, error = self._state(entry)
        return {
            "id": spec.id,
            "source": spec.source,
            "kind": spec.kind,
            "state": state,
            "running": state == "running",
            "frames": s.frames_sampled,
            "dropped": s.frames_dropped,
            "segments": s.segments,
            "reconnects": s.reconnects,
            "error": error,
            "resumed_from": entry.resumed_from,
            "skipped_frames": job.skipped_frames,
            "time_offset": entry.time_offset,
            "started": entry.started,
        }

    def _publish_status(self, entry: _Stream, force: bool = False) -> None:
        now = self._state(entry)
        if force or now != entry.last_state:
            entry.last_state = now
            self.bus.publish("status", self.status_of(entry))

    def _watch(self) -> None:
        """Publish a ``status`` event whenever a stream's state changes (ends, fails, ...)."""
        while not self._closed.wait(0.25):
            with self._lock:
                entries = list(self._streams.values())
            for entry in entries:
                self._settle(entry)
                self._publish_status(entry)

    @staticmethod
    def _settle(entry: _Stream) -> None:
        """Join a background ingest that ended, so a file read to its end is marked complete."""
        job = entry.job
        with entry.settle_lock:
            if entry.joined or job.already_complete or not _finished(job):
                return
            try:
                job.join(timeout=5.0)
            except Exception:  # noqa: BLE001 - the source's error: shown as the stream's status
                pass
            entry.joined = True

    def _stop(self, entry: _Stream) -> None:
        self._settle(entry)  # finished before the stop: complete, not stopped
        entry.job.stop()
        source = entry.job.pipeline.source
        if isinstance(source, _PacedFileSource):
            source.stop()  # a paced file waits between frames: wake it

    def close(self, timeout: float = 30.0) -> None:
        """Stop every stream (open segments are stored), then the encoder thread."""
        with self._lock:
            self._closed.set()
            entries = list(self._streams.values())
        for e in entries:
            self._stop(e)
        for e in entries:
            try:
                e.job.join(timeout=timeout)
            except Exception:  # noqa: BLE001 - errors are in the status; shutting down anyway
                pass
        self._monitor.join(timeout=5.0)
        self.encoder.close()
