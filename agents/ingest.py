"""The write path: where a frame becomes memory.

    source -> IngestPipeline (decode, sample, cut segments) -> IngestStage -> TokenMemory
                                                              encode -> compress -> key -> add

:func:`build_ingest` wires a source, the Video-LLM, the compressor, the retrieval embedder
and the memory together once; the CLI, live sessions, the benchmark harness and the
examples all use it. The stream id is given once, there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from memory import TokenMemory
from streamvid.compress import Compressor
from streamvid.embedders import Embedder, segment_key
from streamvid.ingest import DropPolicy, IngestPipeline, IngestStats, Sampler, StreamingSegmenter
from streamvid.models.base import VideoLLM
from streamvid.types import Segment

__all__ = ["DEFAULT_RECONNECT_BACKOFF", "Ingest", "IngestStage", "StageStats", "build_ingest"]

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


class IngestStage:
    """The sink of an ingest pipeline: call it with each closed Segment; returns its memory id.

    The Video-LLM's own lock serialises the tower with questions answered from other
    threads; the segment's stream id and index come with the segment.
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
    ) -> None:
        self.llm = llm
        self.compressor = compressor
        self.embedder = embedder
        self.memory = memory
        self.key_frames = key_frames
        self.on_stored = on_stored
        self.stats = StageStats()

    def __call__(self, segment: Segment) -> int:
        t0 = time.perf_counter()
        grid = self.llm.encode(segment.frames, segment.timestamps)
        grid = replace(grid, stream_id=segment.stream_id, segment_index=segment.index)
        t1 = time.perf_counter()
        (compressed,) = self.compressor.compress(grid, boundaries=[0, grid.num_frames])
        t2 = time.perf_counter()
        key = segment_key(self.embedder, segment.frames, self.key_frames)
        t3 = time.perf_counter()
        sid = self.memory.add(compressed, key)
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
    """One source feeding one memory: the pipeline and the stage it calls."""

    stream_id: str
    pipeline: IngestPipeline
    stage: IngestStage

    def run(self) -> IngestStats:
        """Ingest until the source ends (files) or :meth:`stop` (live); re-raises a source error."""
        return self.pipeline.run()

    def start(self) -> Ingest:
        """Run in the background; see :meth:`stop` and :meth:`join`."""
        self.pipeline.start()
        return self

    def stop(self) -> None:
        self.pipeline.stop()

    def join(self, timeout: float | None = None) -> IngestStats:
        return self.pipeline.join(timeout)

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
) -> Ingest:
    """Wire ``source`` (anything ``open_source`` takes) into ``memory`` under ``stream_id``.

    fps/max_size: sampling (by timestamp) and the longest frame side; tau_seg, min_len,
    max_len: the streaming cut rule (docs/algorithms.md, DySeg); live: default from the
    source; drop_policy, max_reconnects, reconnect_backoff: live sources only.
    ``on_stored(segment, memory_id)`` runs after each segment is stored.
    """
    stage = IngestStage(llm, compressor, embedder, memory, key_frames=key_frames, on_stored=on_stored)
    pipeline = IngestPipeline(
        source,
        stage,
        sampler=Sampler(fps=fps, max_size=max_size),
        segmenter=StreamingSegmenter(tau_seg, min_len, max_len, stream_id=stream_id),
        live=live,
        drop_policy=drop_policy,
        max_reconnects=max_reconnects,
        reconnect_backoff=reconnect_backoff or DEFAULT_RECONNECT_BACKOFF,
        progress=progress,
    )
    return Ingest(stream_id, pipeline, stage)
