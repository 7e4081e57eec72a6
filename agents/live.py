"""Live sessions: ingest one or more sources into a memory in the background and answer
questions about them at the same time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agents.indexer import SegmentIndexer
from agents.qa import Answer, VideoQA
from memory import TokenMemory
from streamvid.compress import Compressor
from streamvid.embedders import Embedder
from streamvid.errors import ConfigError
from streamvid.ingest import IngestPipeline, Sampler, StreamingSegmenter
from streamvid.models.base import VideoLLM

__all__ = ["LiveSession", "StreamStatus", "SessionStatus"]


@dataclass(frozen=True)
class StreamStatus:
    stream: str
    running: bool
    frames: int
    dropped: int
    segments: int
    reconnects: int
    error: str | None


@dataclass(frozen=True)
class SessionStatus:
    streams: list[StreamStatus]
    tokens_held: int
    token_cap: int | None
    segments_live: int
    segments_evicted: int


class LiveSession:
    """``sources``: {stream id: source} (anything ``open_source`` takes).

    >>> with LiveSession({"door": "rtsp://cam1/stream"}, llm, memory, embedder, compressor) as session:
    ...     session.ask("Did anyone come in during the last 5 minutes?")
    """

    def __init__(
        self,
        sources: Mapping[str, Any],
        llm: VideoLLM,
        memory: TokenMemory,
        embedder: Embedder,
        compressor: Compressor,
        *,
        fps: float = 1.0,
        max_size: int = 448,
        max_len: int = 16,
        drop_policy: str = "drop_oldest",
        max_reconnects: int = 5,
        k: int = 4,
        max_new_tokens: int = 128,
        on_segment: Callable[[str, int], None] | None = None,
    ) -> None:
        """on_segment(stream id, memory id) is called after each segment is stored."""
        if not sources:
            raise ConfigError("a live session needs at least one source")
        self.memory = memory
        self.model_lock = threading.Lock()
        self.indexers: dict[str, SegmentIndexer] = {}
        self.pipelines: dict[str, IngestPipeline] = {}
        for stream_id, source in sources.items():
            indexer = SegmentIndexer(llm, compressor, embedder, memory, stream_id=stream_id, model_lock=self.model_lock)
            self.indexers[stream_id] = indexer
            self.pipelines[stream_id] = IngestPipeline(
                source,
                _notify(indexer, stream_id, on_segment),
                sampler=Sampler(fps=fps, max_size=max_size),
                segmenter=StreamingSegmenter(max_len=max_len, stream_id=stream_id),
                live=True,
                drop_policy=drop_policy,
                max_reconnects=max_reconnects,
                stream_id=stream_id,
            )
        self.qa = VideoQA(
            llm, memory, embedder, k=k, live=True, max_new_tokens=max_new_tokens, model_lock=self.model_lock
        )
        self._started = False

    def start(self) -> LiveSession:
        for pipeline in self.pipelines.values():
            pipeline.start()
        self._started = True
        return self

    def ask(self, question: str, **kwargs: Any) -> Answer:
        """Answer from what has been ingested so far (ingest keeps running)."""
        return self.qa.ask(question, **kwargs)

    def status(self) -> SessionStatus:
        streams = []
        for stream_id, pipeline in self.pipelines.items():
            s = pipeline.stats
            error = None
            if self._started and not pipeline.running and pipeline._result_error is not None:
                error = str(pipeline._result_error)
            streams.append(
                StreamStatus(
                    stream_id, pipeline.running, s.frames_sampled, s.frames_dropped, s.segments, s.reconnects, error
                )
            )
        m = self.memory.stats()
        return SessionStatus(streams, m.tokens_held, m.token_cap, m.segments_live, m.segments_evicted)

    def stop(self, timeout: float = 60.0) -> SessionStatus:
        """Stop every source (open segments are stored) and wait for the threads."""
        for pipeline in self.pipelines.values():
            pipeline.stop()
        for pipeline in self.pipelines.values():
            try:
                pipeline.join(timeout=timeout)
            except TimeoutError:
                raise
            except Exception:  # a source error: kept in status()
                pass
        return self.status()

    def __enter__(self) -> LiveSession:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _notify(indexer: SegmentIndexer, stream_id: str, hook: Callable[[str, int], None] | None):
    if hook is None:
        return indexer

    def sink(segment: Any) -> int:
        sid = indexer(segment)
        hook(stream_id, sid)
        return sid

    return sink
