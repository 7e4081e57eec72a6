"""The write path: where a frame becomes memory.

    source -> IngestPipeline (decode, sample, encode frames, cut segments) -> IngestStage -> TokenMemory
                                                                             key -> add

By default (``segment_on="encoder"``) frames are encoded as they arrive, in micro-batches
(:class:`~streamvid.ingest.segmenter.EncoderSegmenter`): DySeg cuts on the encoder's frame
features and each frame is folded into the open segment's incremental compression
(:class:`~streamvid.compress.incremental.IncrementalSegment`: TFD per frame, ATS and DTM at the
close), so a closed segment arrives compressed and :meth:`Ingest.peek` shows the open one.
``segment_on="thumbnail"`` is the older path: cut on 16 x 16 pixel thumbnails, encode and
compress each closed segment in one burst.

:func:`build_ingest` wires a source, the Video-LLM, the compressor, the retrieval embedder
and the memory together once; the CLI, live sessions, the benchmark harness and the
examples all use it. The stream id is given once, there.

Idempotent ingest and resume. Every stored segment records, in the same manifest
transaction, the end time it reached for its (stream, source key) (see :func:`source_key`:
the resolved path, size and mtime of a file, or the URL). When a file ingest reaches the
end of the file, the source is marked complete. Building the same ingest again then:

- complete: does nothing (``Ingest.already_complete``); nothing is decoded or stored;
- interrupted (killed, stopped, a decode error): resumes. Frames are still decoded and
  sampled from 0 s (so the sampler's 1/fps slots are the clean run's) but every frame
  at or before the last stored end time is dropped before the segmenter, so no time
  range is stored twice;
- ``from_start=True``: deletes the stream's segments and progress first (one
  transaction), then ingests the whole file: a replacement, never a duplicate.

What "identical to a clean run" means: the streaming cut rule (docs/algorithms.md,
DySeg) decides a cut before frame f from the open segment's length and the similarity
of f to the frame before it, and after a cut its state is just "f opens a segment".
The last stored segment ended at a cut, so a resumed run that starts at the next
sampled frame cuts exactly where the clean run cut: the segment time ranges (and frame
counts, and segment indices, which continue from the stream's newest) are identical.
Tokens are identical too with a deterministic encoder and compressor. Limits: the
memory cap may re-merge or evict differently (rebalancing saw a different history);
the frames of the segment that was open at the kill are re-encoded; the key frames are
the same frames. A live source's clock restarts with every connection, so live ingest
records progress but never skips frames.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
import torch

from memory import TokenMemory
from streamvid.compress import Compressor
from streamvid.embedders import Embedder, segment_key
from streamvid.errors import ConfigError
from streamvid.ingest import DropPolicy, IngestPipeline, IngestStats, Sampler, StreamingSegmenter
from streamvid.ingest.segmenter import EncodedSegment, EncoderSegmenter
from streamvid.ingest.sources import NETWORK_SCHEMES, FileSource, VideoSource
from streamvid.models.base import VideoLLM
from streamvid.types import CompressedSegment, Segment, TokenGrid

__all__ = [
    "DEFAULT_RECONNECT_BACKOFF",
    "EncoderWorker",
    "Ingest",
    "IngestStage",
    "StageStats",
    "build_ingest",
    "ingest_complete",
    "source_key",
]

log = logging.getLogger(__name__)

# (first delay, largest delay) in seconds between reconnect attempts of a live source
DEFAULT_RECONNECT_BACKOFF = (0.5, 8.0)


@dataclass
class StageStats:
    """Seconds spent per step, over every segment this stage stored."""

    segments: int = 0
    frames: int = 0
    encode_seconds: float = 0.0
    compress_seconds: float = 0.0
    key_seconds: float = 0.0
    store_seconds: float = 0.0
    ids: list[int] = field(default_factory=list)


def source_key(source: Any) -> str | None:
    """The identity of a source for resume: ``file:<resolved path>:<size>:<mtime ns>`` for a
    local file (so an edited or replaced file is a new source), the URL or device path for a
    live source, None for an in-memory iterable (no resume)."""
    if isinstance(source, FileSource):
        source = source.target
    elif isinstance(source, VideoSource):
        target = getattr(source, "target", None)
        return target if isinstance(target, str) else None
    if not isinstance(source, (str, Path)):
        return None
    text = str(source)
    if urlparse(text).scheme.lower() in NETWORK_SCHEMES or text.startswith("/dev/video"):
        return text
    path = Path(text)
    try:
        st = path.stat()
    except OSError:
        return None
    return f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def ingest_complete(memory: TokenMemory, source: Any, stream_id: str = "default") -> bool:
    """Whether ``source`` was ingested into ``memory`` under ``stream_id`` to its end (works on a
    read-only memory; False for sources without a key)."""
    key = source_key(source)
    return key is not None and memory.ingest_complete(stream_id, key)


class _ResumingSegmenter(StreamingSegmenter):
    """A StreamingSegmenter that drops every frame at or before ``skip_through`` seconds."""

    def __init__(self, *args: Any, skip_through: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip_through = skip_through
        self.skipped = 0

    def push(self, t: float, frame: np.ndarray) -> Segment | None:
        if self.skip_through is not None and t <= self.skip_through:
            self.skipped += 1
            return None
        return super().push(t, frame)


class _ResumingEncoderSegmenter(EncoderSegmenter):
    """An EncoderSegmenter that drops every frame at or before ``skip_through`` seconds."""

    def __init__(self, *args: Any, skip_through: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip_through = skip_through
        self.skipped = 0

    def push(self, t: float, frame: np.ndarray) -> list[EncodedSegment]:
        if self.skip_through is not None and t <= self.skip_through:
            self.skipped += 1
            return []
        return super().push(t, frame)


class _Request:
    """Frames of one stream waiting for the shared encoder; ``done`` is set with the grid or the error."""

    def __init__(self, frames: torch.Tensor, times: torch.Tensor, scores: bool) -> None:
        self.frames, self.times, self.scores = frames, times, scores
        self.grid: TokenGrid | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class EncoderWorker:
    """One encoder thread per device, shared by every stream of a live session.

    Streams call :meth:`encode` (from their own ingest threads, with a micro-batch each); the
    worker takes waiting requests round-robin over streams (one per stream per round, so a
    busy stream cannot starve the others), up to ``max_batch`` frames of one frame size, runs
    the tower once on all of them and hands each stream its slice. A stream waits only for its
    own batch; its source never waits (the ingest queue drops frames upstream by its policy).
    Adapters that fold several frames into one temporal token (Qwen2.5-VL) are batched per
    request, as the tower pairs frames within a call.
    """

    def __init__(self, llm: VideoLLM, *, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ConfigError("max_batch must be >= 1")
        self.llm = llm
        self.max_batch = max_batch
        self.batches = 0  # tower calls
        self.frames = 0  # frames encoded
        self._queues: dict[str, deque[_Request]] = {}
        self._turn: deque[str] = deque()  # round-robin order of streams with waiting requests
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="streamvid-encoder", daemon=True)
        self._thread.start()

    def encoder_for(self, stream_id: str, attention_scores: bool = False) -> Callable[[Any, Any], TokenGrid]:
        """The ``encode(frames, times)`` a stream's segmenter calls."""
        return lambda frames, times: self.encode(stream_id, frames, times, attention_scores=attention_scores)

    def encode(self, stream_id: str, frames: Any, times: Any, *, attention_scores: bool = False) -> TokenGrid:
        """uint8 [b, H, W, 3] frames + [b] seconds of one stream -> its TokenGrid (blocks until encoded)."""
        req = _Request(torch.as_tensor(np.asarray(frames)), torch.as_tensor(np.asarray(times)), attention_scores)
        with self._cond:
            if self._closed:
                raise ConfigError("the encoder worker is closed; start a new one")
            if not self._queues.get(stream_id):
                self._turn.append(stream_id)
            self._queues.setdefault(stream_id, deque()).append(req)
            self._cond.notify()
        req.done.wait()
        if req.error is not None:
            raise req.error
        assert req.grid is not None
        return req.grid

    def close(self) -> None:
        """Finish the waiting requests, then end the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=60.0)

    def _take(self) -> list[_Request]:
        """Waiting requests for one tower call: rounds over the streams, at most one request per
        stream per round, one frame size (called under the lock)."""
        batch: list[_Request] = []
        size = 0
        single = self.llm.capabilities.frames_per_token_step > 1
        progress = True
        while progress:
            progress = False
            for _ in range(len(self._turn)):
                stream = self._turn.popleft()
                queue = self._queues[stream]
                req = queue[0]
                if not batch or (
                    not single
                    and size + req.frames.shape[0] <= self.max_batch
                    and req.frames.shape[1:] == batch[0].frames.shape[1:]
                    and req.scores == batch[0].scores
                ):
                    queue.popleft()
                    batch.append(req)
                    size += req.frames.shape[0]
                    progress = True
                if queue:
                    self._turn.append(stream)
                if single or size >= self.max_batch:
                    return batch
        return batch

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._turn and not self._closed:
                    self._cond.wait()
                if not self._turn:
                    return
                batch = self._take()
            try:
                frames = torch.cat([r.frames for r in batch])  # (sum b, H, W, 3)
                # streams' clocks differ: the tower gets a running index, each slice its own times
                times = batch[0].times.double() if len(batch) == 1 else torch.arange(frames.shape[0]).double()
                if batch[0].scores:
                    grid = self.llm.encode(frames, times, attention_scores=True)
                else:
                    grid = self.llm.encode(frames, times)
                self.batches += 1
                self.frames += frames.shape[0]
                start = 0
                for r in batch:  # each stream's slice (one token frame per frame when batched)
                    if len(batch) == 1:
                        r.grid = grid
                        continue
                    n = r.frames.shape[0]
                    r.grid = replace(grid.slice(start, start + n), timestamps=r.times.double())
                    start += n
            except BaseException as err:  # handed to every waiting stream
                for r in batch:
                    r.error = err
            for r in batch:
                r.done.set()


class IngestStage:
    """The sink of an ingest pipeline: call it with each closed Segment; returns its memory id.

    The Video-LLM's own lock serialises the tower with questions answered from other
    threads; the segment's stream id comes with the segment, its index is the segment's
    plus ``index_offset`` (a resumed ingest continues the stream's numbering). Each add
    records ``source`` (a :func:`source_key`) and the time reached, for resume.
    """

    def __init__(
        self,
        llm: VideoLLM,
        compressor: Compressor,
        embedder: Embedder,
        memory: TokenMemory,
        *,
        key_frames: int = 3,
        on_stored: Callable[[Segment, int], Any] | None = None,
        source: str | None = None,
        index_offset: int = 0,
    ) -> None:
        self.llm = llm
        self.compressor = compressor
        self.embedder = embedder
        self.memory = memory
        self.key_frames = key_frames
        self.on_stored = on_stored
        self.source = source
        self.index_offset = index_offset
        self.stats = StageStats()
        # tower attention maps only when the compressor uses them and the adapter can give them
        self.attention_scores = bool(set(compressor.score_maps) & set(llm.capabilities.score_maps))

    def encode_frames(self, frames: Any, timestamps: Any) -> Any:
        """Frames -> TokenGrid, with the tower attention maps when the compressor uses them."""
        if self.attention_scores:
            return self.llm.encode(frames, timestamps, attention_scores=True)
        return self.llm.encode(frames, timestamps)

    def __call__(self, segment: Segment) -> int:
        if isinstance(segment, EncodedSegment) and segment.compressed is not None:
            return self._store(segment, segment.compressed, segment.encode_seconds, segment.compress_seconds)
        t0 = time.perf_counter()
        if self.attention_scores:
            grid = self.llm.encode(segment.frames, segment.timestamps, attention_scores=True)
        else:
            grid = self.llm.encode(segment.frames, segment.timestamps)
        grid = replace(grid, stream_id=segment.stream_id, segment_index=segment.index + self.index_offset)
        t1 = time.perf_counter()
        (compressed,) = self.compressor.compress(grid, boundaries=[0, grid.num_frames])
        t2 = time.perf_counter()
        return self._store(segment, compressed, t1 - t0, t2 - t1)

    def _store(self, segment: Segment, compressed: CompressedSegment, encode_s: float, compress_s: float) -> int:
        if compressed.segment_index != segment.index + self.index_offset:
            compressed = replace(compressed, segment_index=segment.index + self.index_offset)
        t2 = time.perf_counter()
        key = segment_key(self.embedder, segment.frames, self.key_frames)
        t3 = time.perf_counter()
        sid = self.memory.add(compressed, key, source=self.source)
        t4 = time.perf_counter()
        s = self.stats
        s.segments += 1
        s.frames += segment.frames.shape[0]
        s.encode_seconds += encode_s
        s.compress_seconds += compress_s
        s.key_seconds += t3 - t2
        s.store_seconds += t4 - t3
        s.ids.append(sid)
        if self.on_stored is not None:
            self.on_stored(segment, sid)
        return sid


@dataclass
class Ingest:
    """One source feeding one memory: the pipeline and the stage it calls.

    source: the source key (None: no resume); resume_from: frames at or before this time
    (s) are skipped (None: from the start); already_complete: the source was ingested to
    its end before, so :meth:`run` does nothing; from_start: the stream's segments are
    replaced (dropped when the run starts).
    """

    stream_id: str
    pipeline: IngestPipeline
    stage: IngestStage
    source: str | None = None
    resume_from: float | None = None
    already_complete: bool = False
    from_start: bool = False
    _stopped: bool = field(default=False, repr=False)
    _started: bool = field(default=False, repr=False)

    @property
    def memory(self) -> TokenMemory:
        return self.stage.memory

    @property
    def skipped_frames(self) -> int:
        """Sampled frames dropped because an earlier run had stored them."""
        return int(getattr(self.pipeline.segmenter, "skipped", 0))

    def peek(self) -> CompressedSegment | None:
        """The stream's open segment, compressed now at the compressor's ratio (None when it is
        empty or the segmenter does not encode as frames arrive). Not stored; its segment index
        is the one it will be stored under."""
        peek = getattr(self.pipeline.segmenter, "peek", None)
        out = peek() if peek is not None else None
        if out is None or self.stage.index_offset == 0:
            return out
        return replace(out, segment_index=out.segment_index + self.stage.index_offset)

    def _begin(self) -> None:
        if self.from_start:
            dropped = self.memory.drop_stream(self.stream_id)
            log.info("stream %s: dropped %d segments to ingest from the start", self.stream_id, dropped)
        self._started = True

    def _finish(self) -> None:
        """A file read to its end (not stopped, no error) is complete."""
        if self.source is not None and not self._stopped and not self.pipeline.live:
            self.memory.mark_source(self.stream_id, self.source, complete=True)

    def run(self) -> IngestStats:
        """Ingest until the source ends (files) or :meth:`stop` (live); re-raises a source error.
        Does nothing when the source was already ingested to its end."""
        if self.already_complete:
            return self.pipeline.stats
        self._begin()
        stats = self.pipeline.run()
        self._finish()
        return stats

    def start(self) -> Ingest:
        """Run in the background; see :meth:`stop` and :meth:`join`."""
        if not self.already_complete:
            self._begin()
            self.pipeline.start()
        return self

    def stop(self) -> None:
        self._stopped = True
        self.pipeline.stop()

    def join(self, timeout: float | None = None) -> IngestStats:
        if self.already_complete or not self._started:
            return self.pipeline.stats
        stats = self.pipeline.join(timeout)
        self._finish()
        return stats

    @property
    def running(self) -> bool:
        return self.pipeline.running

    @property
    def stats(self) -> IngestStats:
        return self.pipeline.stats

    @property
    def error(self) -> BaseException | None:
        """The error that ended a background run, if any."""
        return self.pipeline.error


def build_ingest(
    source: Any,
    memory: TokenMemory,
    llm: VideoLLM,
    embedder: Embedder,
    compressor: Compressor,
    *,
    stream_id: str = "default",
    fps: float | None = 1.0,
    max_size: int | None = 448,
    tau_seg: float = 0.9,
    min_len: int = 2,
    max_len: int = 16,
    live: bool | None = None,
    drop_policy: DropPolicy = "drop_oldest",
    max_reconnects: int = 5,
    reconnect_backoff: tuple[float, float] | None = None,
    progress: bool = False,
    key_frames: int = 3,
    on_stored: Callable[[Segment, int], Any] | None = None,
    resume: bool = True,
    from_start: bool = False,
    strict: bool = False,
    segment_on: Literal["encoder", "thumbnail"] = "encoder",
    micro_batch: int = 8,
    prefilter: bool = False,
    encoder: EncoderWorker | None = None,
) -> Ingest:
    """Wire ``source`` (anything ``open_source`` takes) into ``memory`` (opened for writing)
    under ``stream_id``.

    fps/max_size: sampling (by timestamp) and the longest frame side; tau_seg, min_len,
    max_len: the streaming cut rule (docs/algorithms.md, DySeg); live: default from the
    source; drop_policy, max_reconnects, reconnect_backoff: live sources only.
    ``on_stored(segment, memory_id)`` runs after each segment is stored.

    resume (files): continue an interrupted ingest of the same file after the last stored
    time, or do nothing if it completed (see the module docstring). from_start: replace
    the stream's segments with a fresh ingest. resume=False on a file this stream already
    holds progress for raises ConfigError rather than store its time ranges twice.
    Resume needs the same fps and cut rule as the interrupted run for identical segments.
    strict: the first hole in the source (corrupt data, a gap, an early end) raises
    instead of being reported in the stats.
    segment_on: ``"encoder"`` (default) encodes frames as they arrive, ``micro_batch`` at a
    time, and cuts on the encoder's frame features (``prefilter``: the thumbnail cut also
    cuts); ``"thumbnail"`` cuts on pixel thumbnails and encodes each closed segment.
    encoder: a shared :class:`EncoderWorker` (several streams, one tower call per round);
    default: the stream encodes its own micro-batches.
    """
    key = source_key(source)
    stage = IngestStage(llm, compressor, embedder, memory, key_frames=key_frames, on_stored=on_stored, source=key)
    segmenter: _ResumingSegmenter | _ResumingEncoderSegmenter
    if segment_on == "encoder":
        encode = stage.encode_frames if encoder is None else encoder.encoder_for(stream_id, stage.attention_scores)
        segmenter = _ResumingEncoderSegmenter(
            encode,
            compressor,
            tau_seg,
            min_len,
            max_len,
            micro_batch=micro_batch,
            frames_per_step=llm.capabilities.frames_per_token_step,
            prefilter=prefilter,
            stream_id=stream_id,
        )
    elif segment_on == "thumbnail":
        segmenter = _ResumingSegmenter(tau_seg, min_len, max_len, stream_id=stream_id)
    else:
        raise ConfigError(f"segment_on must be 'encoder' or 'thumbnail', got {segment_on!r}")
    pipeline = IngestPipeline(
        source,
        stage,
        sampler=Sampler(fps=fps, max_size=max_size),
        segmenter=segmenter,
        live=live,
        drop_policy=drop_policy,
        max_reconnects=max_reconnects,
        reconnect_backoff=reconnect_backoff or DEFAULT_RECONNECT_BACKOFF,
        progress=progress,
        strict=strict,
    )
    job = Ingest(stream_id, pipeline, stage, source=key, from_start=from_start)
    if from_start or key is None or pipeline.live:
        return job  # live clocks restart with each connection: nothing to skip
    done = memory.source_progress(stream_id, key)
    if done is None:
        return job
    if not resume:
        raise ConfigError(
            f"{key} was already ingested into stream {stream_id!r} of {memory.root} (up to {done.last_time} s); "
            "pass resume=True to continue it or from_start=True to replace it"
        )
    if done.complete:
        job.already_complete = True
        return job
    if done.last_time is not None:
        job.resume_from = segmenter.skip_through = done.last_time
        newest = memory.newest(stream_id)
        stage.index_offset = 0 if newest is None else newest.segment_index + 1
    return job
