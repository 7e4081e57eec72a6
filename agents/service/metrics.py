"""Prometheus metrics of one service (its own registry, so several apps in one process stay apart).

Latencies are histograms observed where they happen (segment stored, question answered, alert
checked); stream counters and the memory's tokens are read from the live objects at scrape time
(a collector), so ``/metrics`` is always the same numbers ``/v1/streams`` reports.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["CONTENT_TYPE", "ServiceMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Snapshot:
    """Collector over ``snapshot()`` -> {"streams": [status dicts], "tokens_held", "token_cap", ...}."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterable[Any]:
        snap = self.snapshot()
        per_stream = {
            "frames": ("streamvid_frames_total", "frames sampled per stream (this process)"),
            "dropped": ("streamvid_frames_dropped_total", "frames dropped by a live source's queue"),
            "reconnects": ("streamvid_reconnects_total", "reconnects of a live source"),
            "segments": ("streamvid_stream_segments_total", "segments stored per stream (this process)"),
        }
        for field, (name, doc) in per_stream.items():
            family = CounterMetricFamily(name.removesuffix("_total"), doc, labels=["stream"])
            for s in snap["streams"]:
                family.add_metric([s["id"]], float(s[field]))
            yield family
        running = GaugeMetricFamily("streamvid_stream_running", "1 while a stream ingests", labels=["stream"])
        for s in snap["streams"]:
            running.add_metric([s["id"]], 1.0 if s["running"] else 0.0)
        yield running
        yield GaugeMetricFamily("streamvid_tokens_held", "tokens the memory holds", value=snap["tokens_held"])
        cap = snap["token_cap"]
        yield GaugeMetricFamily("streamvid_token_cap", "the memory's token cap (0: none)", value=cap or 0)
        segs = GaugeMetricFamily("streamvid_memory_segments", "segments in the memory", labels=["status"])
        segs.add_metric(["live"], snap["segments_live"])
        segs.add_metric(["evicted"], snap["segments_evicted"])
        yield segs
        yield GaugeMetricFamily("streamvid_event_subscribers", "open /v1/events streams", value=snap["subscribers"])


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http = Counter("streamvid_http_requests", "HTTP requests by status code", ["status"], registry=r)
        self.encode = Histogram(
            "streamvid_encode_seconds", "tower time per stored segment", buckets=_LATENCY, registry=r
        )
        self.compress = Histogram(
            "streamvid_compress_seconds", "compression time per stored segment", buckets=_LATENCY, registry=r
        )
        self.ask = Histogram("streamvid_ask_seconds", "question latency (whole answer)", buckets=_LATENCY, registry=r)
        self.ask_retries = Counter(
            "streamvid_ask_retries", "questions asked again: a segment was evicted while being read", registry=r
        )
        self.alert_stored = Counter(
            "streamvid_alert_segments_stored", "segments seen by alert rules", ["stream"], registry=r
        )
        self.alert_checked = Counter(
            "streamvid_alert_segments_checked",
            "segments novel enough to ask the Video-LLM about",
            ["stream"],
            registry=r,
        )
        self.alert_fired = Counter("streamvid_alerts_fired", "alerts fired", ["stream"], registry=r)
        self.alert_check_seconds = Histogram(
            "streamvid_alert_check_seconds", "one yes/no check", buckets=_LATENCY, registry=r
        )

    def watch(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        """Read stream and memory numbers from ``snapshot()`` at every scrape."""
        self.registry.register(_Snapshot(snapshot))

    def render(self) -> bytes:
        return generate_latest(self.registry)
