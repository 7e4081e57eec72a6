"""The service without its transport: streams, questions, moments, segments and alerts over one
memory, shared by the REST app (agents/service/app.py) and the MCP tools (agents/service/mcp_server.py).

The caller loads the models and opens the memory as its one writer (cli/serve_commands.py); the
service owns everything else and checks every input (agents/service/security.py) before it
touches the memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.qa import Answer, UsedSegment, VideoQA
from agents.service.alerts import DEFAULT_THRESHOLD, AlertEngine, LLMJudge, counts_json
from agents.service.events import EventBus
from agents.service.metrics import ServiceMetrics
from agents.service.security import DEFAULT_SCHEMES, ServiceError, check_stream_id, resolve_source
from agents.service.state import ServiceState, StreamSpec
from agents.service.streams import StreamRegistry
from memory import TokenMemory
from memory.errors import SegmentEvictedError, UnknownSegmentError
from streamvid.compress import Compressor
from streamvid.embedders import Embedder
from streamvid.models.base import VideoLLM

__all__ = ["Service", "ServiceConfig"]

MAX_QUESTION = 2000
# tries of a question whose retrieved segment was evicted by a concurrent ingest before it was read
ASK_ATTEMPTS = 10


def chosen_streams(streams: Sequence[str] | None, known: Sequence[str]) -> list[str] | None:
    """A request's ``streams`` checked against the ``known`` ids (None: every stream); a bad
    or unknown id is a 400 / 404 ServiceError."""
    if not streams:
        return None
    for s in streams:
        check_stream_id(s)
        if s not in known:
            raise ServiceError(404, "unknown_stream", f"no stream {s!r}; GET /v1/streams lists them")
    return list(streams)


@dataclass
class ServiceConfig:
    """keys: API keys (none: loopback only, no auth); media_roots: directories file sources may
    come from; schemes: allowed URL schemes; the rest sizes ingest, questions and limits."""

    keys: list[str] = field(default_factory=list)
    media_roots: list[Path] = field(default_factory=list)
    schemes: tuple[str, ...] = DEFAULT_SCHEMES
    webcams: bool = True
    max_body_bytes: int = 64 * 1024
    ask_per_minute: float = 60.0
    ask_burst: int | None = None
    fps: float = 1.0
    max_size: int = 448
    max_len: int = 16
    micro_batch: int = 8
    max_new_tokens: int = 128
    max_streams: int = 16
    alert_threshold: float = DEFAULT_THRESHOLD
    open_timeout: float = 10.0
    read_timeout: float = 10.0
    sse_ping: float = 15.0


def used_json(u: UsedSegment) -> dict[str, Any]:
    return {
        "id": u.id,
        "stream": u.stream,
        "start": u.start,
        "end": u.end,
        "score": None if u.score is None or not math.isfinite(u.score) else u.score,
        "grain": round(u.grain, 4),
        "tokens": u.tokens,
        "stored_tokens": u.stored_tokens,
        "open": u.open,
        "evicted": u.evicted,
        "thumbnail": f"/v1/segments/{u.id}/thumbnail.jpg" if u.id >= 0 else None,
    }


def answer_json(answer: Answer) -> dict[str, Any]:
    return {
        "question": answer.question,
        "text": answer.text,
        "segments": [used_json(u) for u in answer.segments],
        "evicted": [{"stream": u.stream, "start": u.start, "end": u.end} for u in answer.evicted],
        "timings": answer.timings,
        "time_range": list(answer.time_range) if answer.time_range is not None else None,
        "visual_tokens": answer.visual_tokens,
        "max_visual_tokens": answer.max_visual_tokens,
        "prompt_tokens": answer.prompt_tokens,
    }


class Service:
    def __init__(
        self,
        memory: TokenMemory,
        llm: VideoLLM,
        embedder: Embedder,
        compressor: Compressor,
        config: ServiceConfig | None = None,
        *,
        judge: Callable[[str, Any], tuple[bool, str]] | None = None,
    ) -> None:
        self.memory, self.llm, self.embedder, self.compressor = memory, llm, embedder, compressor
        self.config = cfg = config or ServiceConfig()
        self.state = ServiceState(memory.root)
        self.bus = EventBus()
        self.metrics = ServiceMetrics()
        self.alerts = AlertEngine(
            self.state,
            self.bus,
            self.metrics,
            judge or LLMJudge(llm),
            thumbnail_url=lambda sid: f"/v1/segments/{sid}/thumbnail.jpg",
        )
        self.streams = StreamRegistry(
            memory,
            llm,
            embedder,
            compressor,
            self.state,
            self.bus,
            self.metrics,
            self.alerts,
            fps=cfg.fps,
            max_size=cfg.max_size,
            max_len=cfg.max_len,
            micro_batch=cfg.micro_batch,
            open_timeout=cfg.open_timeout,
            read_timeout=cfg.read_timeout,
            max_streams=cfg.max_streams,
        )
        self.metrics.watch(self.snapshot)
        self.ready = False
        self._closed = False

    def start(self) -> Service:
        """Restart the persisted streams; ready for requests afterwards."""
        self.streams.restore()
        self.ready = True
        return self

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.ready = False
        self.bus.close()
        self.streams.close()
        self.alerts.close()
        self.state.close()

    # -- streams ------------------------------------------------------------------------------

    def add_stream(self, stream_id: Any, source: Any, options: dict[str, Any] | None = None) -> dict[str, Any]:
        check_stream_id(stream_id)
        found = resolve_source(source, self.config.media_roots, self.config.schemes, webcams=self.config.webcams)
        spec = StreamSpec(stream_id, source, found.kind, found.target, dict(options or {}), time.time())
        return self.streams.add(spec)

    def remove_stream(self, stream_id: str, purge: bool = False) -> dict[str, Any]:
        check_stream_id(stream_id)
        return self.streams.remove(stream_id, purge=purge)

    def snapshot(self) -> dict[str, Any]:
        live, evicted = self.memory.segment_counts()
        return {
            "streams": self.streams.status(),
            "tokens_held": self.memory.tokens_held,
            "token_cap": self.memory.token_cap,
            "segments_live": live,
            "segments_evicted": evicted,
            "subscribers": self.bus.subscribers,
        }

    def known_streams(self) -> list[str]:
        return sorted(set(self.memory.streams()) | set(self.streams.ids()))

    def check_streams(self, streams: Sequence[str] | None) -> list[str] | None:
        return chosen_streams(streams, self.known_streams())

    # -- questions -----------------------------------------------------------------------------

    def ask(
        self,
        question: str,
        *,
        streams: Sequence[str] | None = None,
        time_range: tuple[float, float] | None = None,
        max_visual_tokens: int | None = None,
        max_new_tokens: int | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        if not isinstance(question, str) or not question.strip():
            raise ServiceError(400, "empty_question", "the question is empty; ask something about the video")
        if len(question) > MAX_QUESTION:
            raise ServiceError(400, "question_too_long", f"the question is over {MAX_QUESTION} characters")
        if time_range is not None:
            lo, hi = time_range
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi):
                raise ServiceError(
                    400, "bad_time_range", "time_range must be [start, end] seconds with 0 <= start < end"
                )
        chosen = self.check_streams(streams)
        now = self.memory.end_time(chosen)
        # a question about now also sees each stream's newest and still-open segment; one about a
        # past range only that range
        live = time_range is None or now is None or time_range[1] >= now
        qa = VideoQA(
            self.llm,
            self.memory,
            self.embedder,
            live=live,
            max_new_tokens=max_new_tokens or self.config.max_new_tokens,
            open_segments=self.streams.open_segments,
        )
        t0 = time.perf_counter()
        for attempt in range(ASK_ATTEMPTS):
            try:
                answer = qa.ask(
                    question,
                    time_range=time_range,
                    streams=chosen,
                    max_visual_tokens=max_visual_tokens,
                    remember=False,
                    on_text=on_text,
                )
                break
            except (SegmentEvictedError, UnknownSegmentError):
                # VideoQA drops segments evicted under it; a stream dropped (or a segment
                # evicted by every retry) between retrieval and reading leaves the question
                # nothing consistent to read, so ask again on the memory's new state
                self.metrics.ask_retries.inc()
                if attempt == ASK_ATTEMPTS - 1:
                    raise ServiceError(
                        503, "memory_busy", "the memory kept changing under this question; ask again"
                    ) from None
        self.metrics.ask.observe(time.perf_counter() - t0)
        return answer

    def search(
        self,
        query: str,
        k: int = 5,
        streams: Sequence[str] | None = None,
        time_range: tuple[float, float] | None = None,
    ) -> list[dict[str, Any]]:
        """Moments for a text query, best first (the newest for an embedder without text)."""
        if not isinstance(query, str) or not query.strip():
            raise ServiceError(400, "empty_query", "the query is empty; describe the moment to find")
        if not 1 <= k <= 100:
            raise ServiceError(400, "bad_k", "k must be between 1 and 100")
        chosen = self.check_streams(streams)
        qa = VideoQA(self.llm, self.memory, self.embedder, max_visual_tokens=1)
        found = qa.retrieve(query, k, time_range, chosen)
        return [
            {
                "id": s.id,
                "stream": s.stream,
                "start": s.start,
                "end": s.end,
                "score": None if score is None else float(score),
                "evicted": s.evicted,
                "thumbnail": f"/v1/segments/{s.id}/thumbnail.jpg",
            }
            for s, score in found
        ]

    def segments(
        self, stream: str | None, start: float | None, end: float | None, limit: int = 500
    ) -> list[dict[str, Any]]:
        if stream is not None:
            self.check_streams([stream])
        for name, v in (("start", start), ("end", end)):
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise ServiceError(400, "bad_time", f"{name} must be a time in seconds >= 0")
        if start is not None and end is not None and end < start:
            raise ServiceError(400, "bad_time_range", "end must not come before start")
        rows = self.memory.timeline(stream, start, end)[-limit:]
        return [
            {
                "id": s.id,
                "stream": s.stream,
                "index": s.segment_index,
                "start": s.start,
                "end": s.end,
                "frames": s.frame_count,
                "tokens": s.tokens,
                "original_tokens": s.original_tokens,
                "status": s.status,
                "thumbnail": f"/v1/segments/{s.id}/thumbnail.jpg",
            }
            for s in rows
        ]

    def thumbnail(self, sid: int) -> Path:
        path = self.streams.thumbnail_path(sid)
        if sid < 0 or not path.is_file():
            raise ServiceError(404, "no_thumbnail", f"no thumbnail stored for segment {sid}")
        return path

    # -- alerts ----------------------------------------------------------------------------------

    def add_alert(self, stream: Any, rule: Any, threshold: float | None = None) -> dict[str, Any]:
        check_stream_id(stream)
        if stream not in self.known_streams():
            raise ServiceError(404, "unknown_stream", f"no stream {stream!r}; add it first (POST /v1/streams)")
        if not isinstance(rule, str) or not rule.strip() or len(rule) > 500:
            raise ServiceError(
                400, "bad_rule", "rule must be a description of 1-500 characters, e.g. 'a person at the door'"
            )
        value = self.config.alert_threshold if threshold is None else float(threshold)
        if not (math.isfinite(value) and 0.0 <= value <= 2.0):
            raise ServiceError(400, "bad_threshold", "threshold is a novelty in [0, 2] (1 - cosine)")
        made = self.alerts.add(stream, rule.strip(), value)
        return counts_json(made, self.alerts.counts[made.id])

    def list_alerts(self) -> list[dict[str, Any]]:
        return [counts_json(r, c) for r, c in self.alerts.rules()]

    def remove_alert(self, alert_id: int) -> dict[str, Any]:
        if not self.alerts.remove(alert_id):
            raise ServiceError(404, "unknown_alert", f"no alert {alert_id}; GET /v1/alerts lists them")
        return {"removed": alert_id}
