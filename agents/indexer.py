"""Segment -> visual tokens -> compressed tokens -> retrieval key -> memory."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch

from memory import TokenMemory
from streamvid.compress import Compressor
from streamvid.embedders import Embedder, segment_key
from streamvid.models.base import VideoLLM
from streamvid.types import Segment, TokenGrid

__all__ = ["SegmentIndexer", "IndexerStats"]


@dataclass
class IndexerStats:
    segments: int = 0
    frames: int = 0
    encode_seconds: float = 0.0
    compress_seconds: float = 0.0
    key_seconds: float = 0.0
    store_seconds: float = 0.0
    ids: list[int] = field(default_factory=list)


class SegmentIndexer:
    """The sink of an ingest pipeline: call it with each Segment.

    ``model_lock`` serialises use of the Video-LLM when questions are answered
    from other threads while ingest runs (live sessions).
    """

    def __init__(
        self,
        llm: VideoLLM,
        compressor: Compressor,
        embedder: Embedder,
        memory: TokenMemory,
        *,
        stream_id: str = "default",
        key_frames: int = 3,
        model_lock: threading.Lock | None = None,
    ) -> None:
        self.llm = llm
        self.compressor = compressor
        self.embedder = embedder
        self.memory = memory
        self.stream_id = stream_id
        self.key_frames = key_frames
        self.model_lock = model_lock or threading.Lock()
        self.stats = IndexerStats()

    def __call__(self, segment: Segment) -> int:
        t0 = time.perf_counter()
        with self.model_lock:
            grid = self.llm.encode(segment.frames, segment.timestamps)
            t1 = time.perf_counter()
            grid = TokenGrid(grid.tokens, grid.timestamps, grid.saliency, self.stream_id, segment.index)
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
        return sid

    def key_for(self, frames: torch.Tensor) -> torch.Tensor:
        return segment_key(self.embedder, frames, self.key_frames)
