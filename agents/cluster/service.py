"""The REST service in front of a cluster: :class:`ClusterService` is the backend object that
``agents.service.app.create_app`` serves (the same duck type as ``agents.service.core.Service``), so
a client of ``/v1/streams``, ``/v1/ask``, ``/v1/search``, ``/v1/segments``, ``/healthz`` and
``/metrics`` cannot tell one machine from many.

    app = create_app(ClusterService(Cluster(config), ServiceConfig(media_roots=[...])), mcp=False)

Input checks are the service's own (``agents.service.security``). Answers stream token by token
(the answering actor's streaming generator), thumbnails are read from the shards (the encoder
actors write them there), alert rules live in the coordinator and are checked by the encoder
actors, and the events they report (``segment``, ``alert``) are polled from the coordinator by a
thread of this object and published on its EventBus, so ``/v1/events`` works as on one machine.
What a cluster still does not offer answers with a clear status: ``purge`` (501). Segment ids
are the cluster's global ids. The service package needs the ``serve`` extra (FastAPI, prometheus).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agents.cluster.actors import thumbnail_url
from agents.cluster.cluster import Cluster
from agents.cluster.plan import StreamSpec
from agents.qa import Answer
from agents.service.alerts import RuleCounts, check_rule, counts_json
from agents.service.core import MAX_QUESTION, ServiceConfig, chosen_streams
from agents.service.events import EventBus
from agents.service.metrics import ServiceMetrics
from agents.service.security import ServiceError, check_stream_id, resolve_source
from agents.service.state import AlertRule
from streamvid.errors import ConfigError

__all__ = ["ClusterService"]

log = logging.getLogger(__name__)

# seconds between polls of the coordinator's events
EVENT_POLL = 0.5

_STATUS_FIELDS = {"frames": 0, "dropped": 0, "segments": 0, "reconnects": 0, "running": False, "error": None}


class _Streams:
    """``service.streams``: what the app reads of the stream registry (ids, status)."""

    def __init__(self, owner: ClusterService) -> None:
        self.owner = owner

    def ids(self) -> list[str]:
        return [s["id"] for s in self.status()]

    def status(self, stream_id: str | None = None) -> list[dict[str, Any]]:
        rows = [{**_STATUS_FIELDS, **s} for s in self.owner.cluster.streams()]
        if stream_id is not None:
            rows = [s for s in rows if s["id"] == stream_id]
            if not rows:
                raise ServiceError(404, "unknown_stream", f"no stream {stream_id!r}; GET /v1/streams lists them")
        return rows


class _Memory:
    """``service.memory``: the cluster's totals over every shard (global cap, tokens held, "now")."""

    def __init__(self, owner: ClusterService) -> None:
        self.owner = owner

    @property
    def token_cap(self) -> int:
        return int(self.owner.cluster.stats()["token_cap"])

    @property
    def tokens_held(self) -> int:
        return int(self.owner.cluster.stats()["tokens_held"])

    def end_time(self, streams: Sequence[str] | None = None) -> float | None:
        return self.owner.cluster.sharded_memory(streams).end_time(streams)


class ClusterService:
    """A :class:`~agents.cluster.cluster.Cluster` as the service's backend (see the module docstring).
    The cluster's lifetime is the caller's: :meth:`close` stops serving, not the cluster.
    ``event_poll``: seconds between polls of the coordinator's events (0: none; call
    :meth:`poll_events` yourself)."""

    def __init__(
        self, cluster: Cluster, config: ServiceConfig | None = None, *, event_poll: float = EVENT_POLL
    ) -> None:
        self.cluster = cluster
        self.config = config or ServiceConfig()
        self.bus = EventBus()
        self.metrics = ServiceMetrics()
        self.streams = _Streams(self)
        self.memory = _Memory(self)
        self.metrics.watch(self.snapshot)
        self.ready = False
        self.event_poll = event_poll
        self._events_after: tuple[str | None, int] = (None, 0)  # (coordinator epoch, last seq seen)
        self._events_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def start(self) -> ClusterService:
        """Ready for requests; events from now on are relayed (older ones stay in the coordinator)."""
        with self._events_lock:
            found = self.cluster.events(0, limit=0)
            self._events_after = (found["epoch"], found["last"])
        self._stop.clear()
        if self.event_poll > 0 and self._poller is None:
            self._poller = threading.Thread(target=self._poll_loop, name="streamvid-cluster-events", daemon=True)
            self._poller.start()
        self.ready = True
        return self

    def close(self) -> None:
        self.ready = False
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=10.0)
            self._poller = None
        self.bus.close()

    # -- events: the coordinator's log relayed to this service's EventBus ------------------------------

    def poll_events(self) -> int:
        """Publish the coordinator's events not relayed yet. -> how many. A restarted coordinator
        (a new epoch) numbers from 1 again: everything it holds is new."""
        with self._events_lock:
            epoch, after = self._events_after
            found = self.cluster.events(after)
            if found["epoch"] != epoch:
                after = 0
                found = self.cluster.events(0)
            if found["events"] and found["events"][0][0] > after + 1:
                log.warning("%d cluster events were dropped before they were relayed (poll more often)",
                            found["events"][0][0] - after - 1)  # fmt: skip
            for seq, type_, data in found["events"]:
                self.bus.publish(type_, data)
                after = seq
            self._events_after = (found["epoch"], after)
            return len(found["events"])

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.event_poll):
            try:
                self.poll_events()
            except Exception as err:  # noqa: BLE001 - the coordinator restarting: the next poll retries
                log.warning("polling the cluster's events failed: %s", err)

    # -- streams ------------------------------------------------------------------------------

    def add_stream(self, stream_id: Any, source: Any, options: dict[str, Any] | None = None) -> dict[str, Any]:
        check_stream_id(stream_id)
        cfg = self.config
        found = resolve_source(source, cfg.media_roots, cfg.schemes, webcams=cfg.webcams)
        if stream_id in self.streams.ids():
            raise ServiceError(409, "stream_exists", f"stream {stream_id!r} exists; DELETE it first")
        options = dict(options or {})
        live = True if found.kind != "file" else None
        spec = StreamSpec(stream_id, found.target, live=live, pace=options.pop("pace", None), options=options)
        status = {**_STATUS_FIELDS, **self.cluster.add_stream(spec)}
        self.bus.publish("status", status)
        return status

    def remove_stream(self, stream_id: str, purge: bool = False) -> dict[str, Any]:
        check_stream_id(stream_id)
        if stream_id not in self.streams.ids():
            raise ServiceError(404, "unknown_stream", f"no stream {stream_id!r}; GET /v1/streams lists them")
        if purge:
            raise ServiceError(
                501, "not_supported", "purge is not available on a cluster; remove the stream, then delete its shard"
            )
        status = self.cluster.remove_stream(stream_id)
        self.bus.publish("status", {**status, "state": "removed"})
        return {**status, "removed": stream_id}

    def snapshot(self) -> dict[str, Any]:
        stats = self.cluster.stats()
        return {
            "streams": self.streams.status(),
            "tokens_held": stats["tokens_held"],
            "token_cap": stats["token_cap"],
            "segments_live": stats["segments_live"],
            "segments_evicted": stats["segments_evicted"],
            "unavailable": stats["unavailable"],
            "subscribers": self.bus.subscribers,
        }

    def known_streams(self) -> list[str]:
        return sorted(self.streams.ids())

    def check_streams(self, streams: Sequence[str] | None) -> list[str] | None:
        return chosen_streams(streams, self.known_streams())

    # -- questions ------------------------------------------------------------------------------

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
        """The cluster's answer (a ClusterAnswer); ``on_text`` gets each text piece as the answering
        actor decodes it."""
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
        t0 = time.perf_counter()
        answer = self.cluster.ask(question, streams=chosen, time_range=time_range, max_visual_tokens=max_visual_tokens,
                                  max_new_tokens=max_new_tokens or self.config.max_new_tokens,
                                  on_text=on_text)  # fmt: skip
        self.metrics.ask.observe(time.perf_counter() - t0)
        return answer

    def search(
        self,
        query: str,
        k: int = 5,
        streams: Sequence[str] | None = None,
        time_range: tuple[float, float] | None = None,
    ) -> list[dict[str, Any]]:
        if not isinstance(query, str) or not query.strip():
            raise ServiceError(400, "empty_query", "the query is empty; describe the moment to find")
        if not 1 <= k <= 100:
            raise ServiceError(400, "bad_k", "k must be between 1 and 100")
        found, _ = self.cluster.retrieve(query, k, streams=self.check_streams(streams), time_range=time_range)
        return [
            {"id": s.id, "stream": s.stream, "start": s.start, "end": s.end,
             "score": None if score is None else float(score), "evicted": s.evicted, "thumbnail": thumbnail_url(s.id)}
            for s, score in found
        ]  # fmt: skip

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
        rows = self.cluster.segments(stream, start, end)[-limit:]
        return [
            {"id": s.id, "stream": s.stream, "index": s.segment_index, "start": s.start, "end": s.end,
             "frames": s.frame_count, "tokens": s.tokens, "original_tokens": s.original_tokens, "status": s.status,
             "thumbnail": thumbnail_url(s.id)}
            for s in rows
        ]  # fmt: skip

    def thumbnail(self, sid: int) -> Path:
        """The JPEG of segment ``sid`` (a global id) in its shard; 404 when there is none."""
        path = self.cluster.thumbnail(sid)
        if path is None:
            raise ServiceError(404, "no_thumbnail", f"no thumbnail stored for segment {sid}")
        return path

    # -- alerts: rules in the coordinator, checked by the encoder actors --------------------------------

    def add_alert(self, stream: Any, rule: Any, threshold: float | None = None) -> dict[str, Any]:
        check_stream_id(stream)
        if stream not in self.known_streams():
            raise ServiceError(404, "unknown_stream", f"no stream {stream!r}; add it first (POST /v1/streams)")
        text, value = check_rule(rule, threshold, self.config.alert_threshold)
        try:
            made = self.cluster.add_alert(stream, text, value)
        except ConfigError:  # removed meanwhile
            raise ServiceError(404, "unknown_stream", f"no stream {stream!r}; GET /v1/streams lists them") from None
        return counts_json(AlertRule(**made), RuleCounts())

    def list_alerts(self) -> list[dict[str, Any]]:
        return [counts_json(AlertRule(**r), RuleCounts(**c)) for r, c in self.cluster.alerts()]

    def remove_alert(self, alert_id: int) -> dict[str, Any]:
        if not self.cluster.remove_alert(alert_id):
            raise ServiceError(404, "unknown_alert", f"no alert {alert_id}; GET /v1/alerts lists them")
        return {"removed": alert_id}
