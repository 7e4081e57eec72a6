"""Alerts: proactive yes/no answers about new segments of a stream.

Asking the Video-LLM about every segment of every camera costs a prefill each; most segments
look like the ones before them. So a rule is checked only on *novel* segments: the segment's
novelty is its CABA uniqueness (docs/algorithms.md, CABA: ``u = 1 - cos(xbar_k, xglob)``),
taken against the stream's running length-weighted mean of segment means, i.e. how unlike
what this stream has shown so far it is. A segment whose novelty reaches the rule's threshold
is put to the Video-LLM as one yes/no question over that segment alone; "yes" fires an
``alert`` event with the time, the segment and its thumbnail. Every rule counts the segments
stored, checked and fired, so the saving is visible (``GET /v1/alerts``).

The compressor's own ``CompressedSegment.uniqueness`` is taken within the segment's clip (on
the streaming path one segment, so always 0); the running mean here is what makes it a
stream-level signal. Checks run on one worker thread with a bounded queue: ingest never waits
for an alert (a full queue skips the check and counts it as ``skipped``).

The engine needs of its surroundings only a rule store (``add_alert`` / ``remove_alert`` /
``alerts``, the service's :class:`~agents.service.state.ServiceState`), something to ``publish``
events to (the service's :class:`~agents.service.events.EventBus`) and, optionally, metrics. A
cluster's encoder actor runs it with no store (its rules come from the coordinator through
:meth:`AlertEngine.set_rules`), no metrics, and a publisher that forwards to the coordinator
(agents/cluster/actors.py).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from agents.service.security import ServiceError
from agents.service.state import AlertRule
from streamvid.compress.caba import uniqueness
from streamvid.errors import ConfigError
from streamvid.models.base import VideoLLM
from streamvid.types import CompressedSegment

if TYPE_CHECKING:  # prometheus (the serve extra) stays out of a cluster's encoder actors
    from agents.service.metrics import ServiceMetrics

__all__ = ["DEFAULT_THRESHOLD", "AlertEngine", "LLMJudge", "RuleCounts", "check_rule", "counts_json"]

log = logging.getLogger(__name__)

# novelty (1 - cosine to the stream's running mean) a segment needs before a rule is checked
DEFAULT_THRESHOLD = 0.02

Judge = Callable[[str, CompressedSegment], tuple[bool, str]]


class RuleStore(Protocol):
    """Where rules persist (the service's ServiceState)."""

    def add_alert(self, stream: str, rule: str, threshold: float) -> AlertRule: ...

    def remove_alert(self, alert_id: int) -> bool: ...

    def alerts(self) -> list[AlertRule]: ...


class Publisher(Protocol):
    """Where fired alerts go (the service's EventBus)."""

    def publish(self, type: str, data: dict[str, Any]) -> Any: ...


def check_rule(rule: Any, threshold: float | None, default: float) -> tuple[str, float]:
    """A rule and its novelty threshold as a request gives them -> (rule, threshold), or a 400
    ServiceError (the same checks for one service and a cluster)."""
    if not isinstance(rule, str) or not rule.strip() or len(rule) > 500:
        raise ServiceError(
            400, "bad_rule", "rule must be a description of 1-500 characters, e.g. 'a person at the door'"
        )
    value = default if threshold is None else float(threshold)
    if not (math.isfinite(value) and 0.0 <= value <= 2.0):
        raise ServiceError(400, "bad_threshold", "threshold is a novelty in [0, 2] (1 - cosine)")
    return rule.strip(), value


class LLMJudge:
    """One yes/no question over one segment: True when the answer starts with "yes"."""

    def __init__(self, llm: VideoLLM, max_new_tokens: int = 4) -> None:
        self.llm = llm
        self.max_new_tokens = max_new_tokens

    def __call__(self, rule: str, segment: CompressedSegment) -> tuple[bool, str]:
        question = f"Answer yes or no. Does this happen in the video: {rule}?"
        prefill = self.llm.build_prefill(question, [segment])
        text = self.llm.generate(prefill, max_new_tokens=self.max_new_tokens).text.strip()
        return text.lower().lstrip(" \"'*").startswith("yes"), text


@dataclass
class RuleCounts:
    stored: int = 0  # segments of the rule's stream stored since the rule was added (this process)
    checked: int = 0  # novel enough: asked about
    fired: int = 0
    skipped: int = 0  # novel, but the check queue was full


@dataclass
class _Running:
    total: torch.Tensor | None = None  # length-weighted sum of segment means
    length: float = 0.0


class AlertEngine:
    """Rules, novelty, the check worker and the counts. ``state``: the rule store (None: rules
    only through :meth:`set_rules`); ``metrics``: None counts nothing in Prometheus."""

    def __init__(
        self,
        state: RuleStore | None,
        bus: Publisher,
        metrics: ServiceMetrics | None,
        judge: Judge,
        *,
        queue_size: int = 64,
        thumbnail_url: Callable[[int], str | None] = lambda sid: None,
    ) -> None:
        self.state = state
        self.bus = bus
        self.metrics = metrics
        self.judge = judge
        self.thumbnail_url = thumbnail_url
        self._rules: dict[int, AlertRule] = {r.id: r for r in state.alerts()} if state is not None else {}
        self.counts: dict[int, RuleCounts] = {rid: RuleCounts() for rid in self._rules}
        self._means: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[AlertRule, int, CompressedSegment, float] | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._loop, name="streamvid-alerts", daemon=True)
        self._thread.start()

    # -- rules -----------------------------------------------------------------------------

    def add(self, stream: str, rule: str, threshold: float) -> AlertRule:
        if self.state is None:
            raise ConfigError("this alert engine keeps no rules of its own; give it a rule store or use set_rules")
        made = self.state.add_alert(stream, rule, threshold)
        with self._lock:
            self._rules[made.id] = made
            self.counts[made.id] = RuleCounts()
        return made

    def remove(self, rule_id: int) -> bool:
        with self._lock:
            self._rules.pop(rule_id, None)
            self.counts.pop(rule_id, None)
        return self.state.remove_alert(rule_id) if self.state is not None else False

    def set_rules(self, rules: list[AlertRule]) -> None:
        """Replace the rules with ``rules`` (kept elsewhere, e.g. by a cluster's coordinator); a
        rule kept keeps its counts, a new one starts at zero."""
        with self._lock:
            self._rules = {r.id: r for r in rules}
            self.counts = {r.id: self.counts.get(r.id, RuleCounts()) for r in rules}

    def rules(self) -> list[tuple[AlertRule, RuleCounts]]:
        with self._lock:
            return [(r, RuleCounts(**vars(self.counts[r.id]))) for r in self._rules.values()]

    # -- segments ----------------------------------------------------------------------------

    def novelty(self, stream: str, segment: CompressedSegment) -> float:
        """The segment's uniqueness against the stream's running mean (1.0 for a stream's first
        segment), then folded into that mean."""
        mean = segment.mean_token.detach().double().cpu().flatten()
        n = float(segment.frame_count)
        with self._lock:
            run = self._means.setdefault(stream, _Running())
            if run.total is None or run.length <= 0:
                value = 1.0
            else:
                value = float(uniqueness(mean[None], torch.tensor([n]), run.total / run.length)[0])
            run.total = mean * n if run.total is None else run.total + mean * n
            run.length += n
        return value

    def on_segment(self, stream: str, sid: int, segment: CompressedSegment) -> float:
        """Called after each stored segment; returns its novelty. Queues checks, never waits."""
        value = self.novelty(stream, segment)
        with self._lock:
            rules = [r for r in self._rules.values() if r.stream == stream]
            for r in rules:
                self.counts[r.id].stored += 1
        if rules and self.metrics is not None:
            self.metrics.alert_stored.labels(stream).inc()
        for r in rules:
            if value < r.threshold:
                continue
            try:
                self._queue.put_nowait((r, sid, segment, value))
            except queue.Full:
                with self._lock:
                    if r.id in self.counts:
                        self.counts[r.id].skipped += 1
        return value

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            rule, sid, segment, value = item
            with self._lock:
                if rule.id not in self._rules:
                    continue  # removed while waiting
            t0 = time.perf_counter()
            try:
                fired, text = self.judge(rule.rule, segment)
            except Exception as err:  # noqa: BLE001 - a failed check is logged, the worker keeps going
                log.warning("alert %d on segment %d failed: %s", rule.id, sid, err)
                continue
            if self.metrics is not None:
                self.metrics.alert_check_seconds.observe(time.perf_counter() - t0)
                self.metrics.alert_checked.labels(rule.stream).inc()
            with self._lock:
                counts = self.counts.get(rule.id)
                if counts is None:
                    continue
                counts.checked += 1
                counts.fired += bool(fired)
            if fired:
                if self.metrics is not None:
                    self.metrics.alert_fired.labels(rule.stream).inc()
                self.bus.publish(
                    "alert",
                    {
                        "alert": rule.id,
                        "rule": rule.rule,
                        "stream": rule.stream,
                        "segment": sid,
                        "start": segment.start_time,
                        "end": segment.end_time,
                        "novelty": value,
                        "answer": text,
                        "thumbnail": self.thumbnail_url(sid),
                    },
                )

    def close(self) -> None:
        try:
            self._queue.put(None, timeout=5.0)
        except queue.Full:
            pass
        self._thread.join(timeout=30.0)


def counts_json(rule: AlertRule, counts: RuleCounts) -> dict[str, Any]:
    return {
        "id": rule.id,
        "stream": rule.stream,
        "rule": rule.rule,
        "threshold": rule.threshold,
        "created": rule.created,
        "segments_stored": counts.stored,
        "segments_checked": counts.checked,
        "fired": counts.fired,
        "skipped": counts.skipped,
    }
