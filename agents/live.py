"""Live sessions: ingest one or more sources into a memory in the background and answer
questions about them at the same time."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents.ingest import EncoderWorker, Ingest, build_ingest
from agents.qa import Answer, VideoQA
from memory import TokenMemory
from streamvid.compress import Compressor
from streamvid.embedders import Embedder
from streamvid.errors import ConfigError
from streamvid.ingest import DropPolicy
from streamvid.models.base import VideoLLM
from streamvid.types import CompressedSegment

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

    Frames are encoded as they arrive (``micro_batch`` at a time) and a question that touches
    "now" also sees each stream's still-open segment, compressed on demand at the
    compressor's ratio (:meth:`open_segments`), so the newest seconds are never missing.
    k: at most this many retrieved segments per question (None: the whole asked range shares
    ``max_visual_tokens``; see agents/qa.py). All streams share one encoder thread
    (:class:`~agents.ingest.EncoderWorker`, up to ``encoder_batch`` frames per tower call).

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
        drop_policy: DropPolicy = "drop_oldest",
        max_reconnects: int = 5,
        k: int | None = None,
        max_new_tokens: int = 128,
        on_segment: Callable[[str, int], None] | None = None,
        max_visual_tokens: int | None = None,
        micro_batch: int = 8,
        encoder_batch: int = 32,
    ) -> None:
        """on_segment(stream id, memory id) is called after each segment is stored."""
        if not sources:
            raise ConfigError("a live session needs at least one source")
        self.memory = memory
        self.encoder = EncoderWorker(llm, max_batch=encoder_batch)
        hook = None if on_segment is None else (lambda seg, sid: on_segment(seg.stream_id, sid))
        self.ingests: dict[str, Ingest] = {
            stream_id: build_ingest(
                source,
                memory,
                llm,
                embedder,
                compressor,
                stream_id=stream_id,
                fps=fps,
                max_size=max_size,
                max_len=max_len,
                live=True,
                drop_policy=drop_policy,
                max_reconnects=max_reconnects,
                on_stored=hook,
                micro_batch=micro_batch,
                encoder=self.encoder,
            )
            for stream_id, source in sources.items()
        }
        self.qa = VideoQA(
            llm,
            memory,
            embedder,
            k=k,
            live=True,
            max_new_tokens=max_new_tokens,
            max_visual_tokens=max_visual_tokens,
            open_segments=self.open_segments,
        )
        self._started = False

    def start(self) -> LiveSession:
        for job in self.ingests.values():
            job.start()
        self._started = True
        return self

    def ask(self, question: str, **kwargs: Any) -> Answer:
        """Answer from what has been ingested so far (ingest keeps running)."""
        return self.qa.ask(question, **kwargs)

    def open_segments(self, streams: Sequence[str] = ()) -> list[CompressedSegment]:
        """The still-open segment of each stream (all when ``streams`` is empty), compressed now."""
        wanted = set(streams) if streams else set(self.ingests)
        out = [job.peek() for name, job in self.ingests.items() if name in wanted]
        return [seg for seg in out if seg is not None]

    def status(self) -> SessionStatus:
        streams = []
        for stream_id, job in self.ingests.items():
            s = job.stats
            error = str(job.error) if self._started and not job.running and job.error is not None else None
            streams.append(
                StreamStatus(
                    stream_id, job.running, s.frames_sampled, s.frames_dropped, s.segments, s.reconnects, error
                )
            )
        live, evicted = self.memory.segment_counts()
        return SessionStatus(streams, self.memory.tokens_held, self.memory.token_cap, live, evicted)

    def stop(self, timeout: float = 60.0) -> SessionStatus:
        """Stop every source (open segments are stored) and wait for the threads."""
        for job in self.ingests.values():
            job.stop()
        for job in self.ingests.values():
            try:
                job.join(timeout=timeout)
            except TimeoutError:
                raise
            except Exception:  # a source error: kept in status()
                pass
        self.encoder.close()
        return self.status()

    def __enter__(self) -> LiveSession:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
