"""The write path: where a frame becomes memory.

    source -> IngestPipeline (decode, sample, cut segments) -> IngestStage -> TokenMemory
                                                              encode -> compress -> key -> add

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from memory import TokenMemory
from streamvid.compress import Compressor
from streamvid.embedders import Embedder, segment_key
from streamvid.errors import ConfigError
from streamvid.ingest import DropPolicy, IngestPipeline, IngestStats, Sampler, StreamingSegmenter
from streamvid.ingest.sources import NETWORK_SCHEMES, FileSource, VideoSource
from streamvid.models.base import VideoLLM
from streamvid.types import Segment

__all__ = [
    "DEFAULT_RECONNECT_BACKOFF",
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

    def __call__(self, segment: Segment) -> int:
        t0 = time.perf_counter()
        if self.attention_scores:
            grid = self.llm.encode(segment.frames, segment.timestamps, attention_scores=True)
        else:
            grid = self.llm.encode(segment.frames, segment.timestamps)
        grid = replace(grid, stream_id=segment.stream_id, segment_index=segment.index + self.index_offset)
        t1 = time.perf_counter()
        (compressed,) = self.compressor.compress(grid, boundaries=[0, grid.num_frames])
        t2 = time.perf_counter()
        key = segment_key(self.embedder, segment.frames, self.key_frames)
        t3 = time.perf_counter()
        sid = self.memory.add(compressed, key, source=self.source)
        t4 = time.perf_counter()
        s = self.stats
        s.segments += 1
        s.frames += segment.frames.shape[0]
        s.encode_seconds += t1 - t0
        s.compress_seconds += t2 - t1
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
        seg = self.pipeline.segmenter
        return seg.skipped if isinstance(seg, _ResumingSegmenter) else 0

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
    """
    key = source_key(source)
    stage = IngestStage(llm, compressor, embedder, memory, key_frames=key_frames, on_stored=on_stored, source=key)
    segmenter = _ResumingSegmenter(tau_seg, min_len, max_len, stream_id=stream_id)
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
