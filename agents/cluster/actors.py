"""The Ray actors and tasks of a streamvid cluster (see agents/cluster/__init__.py for the picture).

- :class:`EncoderActor`: one per GPU (or per N CPU cores); runs the live path of agents/ingest.py
  (encode in micro-batches -> DySeg on encoder features -> incremental TFD -> compress -> store)
  for the streams assigned to it, every stream into its own shard, which it alone writes (the
  shard's ``writer.lock``). Restarted by Ray after a crash (``max_restarts``): its constructor asks
  the coordinator for its streams and starts them again, and each file stream resumes after the
  last time its shard stored (agents/ingest.py, resume), so no segment is stored twice. After each
  stored segment it writes the key-frame thumbnail into the shard (the service's layout), checks
  the alert rules of the stream (the service's :class:`~agents.service.alerts.AlertEngine`) and
  reports a ``segment`` event (and any ``alert``) to the coordinator.
- :class:`BudgetCoordinator`: the registry of streams (spec, shard number, actor slot, cap share),
  of alert rules (both persisted in ``<root>/cluster.json``) and the global cap: it reads every
  shard's CABA statistics (Ray tasks on the shared filesystem) and gives each shard its share
  (agents/cluster/plan.py), when asked and every ``rebalance_every`` seconds on its own thread. It
  also holds the cluster's recent events, numbered, for the REST front to poll.
- :class:`AnswerActor`: the Video-LLM that answers; a question fans out to every shard as Ray
  tasks (:class:`~agents.cluster.shards.ShardedMemory`), the hits are merged globally, and
  :class:`~agents.qa.VideoQA` builds the budgeted prefill and generates, unchanged;
  :meth:`AnswerActor.ask_stream` yields the text pieces as they decode (a Ray streaming generator).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from agents.cluster.cluster import NAMESPACE
from agents.cluster.plan import (
    ClusterConfig,
    StreamSpec,
    cap_shares,
    check_rebalance_every,
    global_id,
    shard_dir,
    shard_weights,
)
from agents.cluster.shards import ShardedMemory, ShardRef, summarize_shard
from agents.ingest import Ingest, build_ingest, source_key
from agents.qa import Answer, VideoQA
from agents.service.alerts import AlertEngine, LLMJudge
from agents.service.state import AlertRule
from streamvid.errors import ConfigError
from streamvid.ingest.sources import FileSource, RawFrame
from streamvid.types import CompressedSegment, Segment

__all__ = [
    "AnswerActor",
    "BudgetCoordinator",
    "ClusterAnswer",
    "EncoderActor",
    "PacedFile",
    "TextJoin",
    "asdict_shallow",
    "ray_fan_out",
]

log = logging.getLogger(__name__)

# seconds a fan-out waits for a shard before reporting it unavailable
SHARD_TIMEOUT = 30.0
# seconds a question waits for the encoder actors' open segments
PEEK_TIMEOUT = 5.0
# seconds a rebalance waits for an encoder actor's status, and for its caps to be applied
STATUS_TIMEOUT = 10.0
APPLY_TIMEOUT = 300.0
# events the coordinator keeps for the REST front to poll (older ones are dropped)
EVENT_HISTORY = 4096


def thumbnail_url(gid: int) -> str:
    """The REST path of a segment's thumbnail, by global id (the service's own path)."""
    return f"/v1/segments/{gid}/thumbnail.jpg"


@dataclass
class ClusterAnswer(Answer):
    """An :class:`~agents.qa.Answer` from a cluster; ``unavailable``: {stream: reason} for the
    shards that could not be read (their node or mount is gone); the text says so too."""

    unavailable: dict[str, str] = field(default_factory=dict)


def _components(config: ClusterConfig, *, llm: bool = True, compressor: bool = True) -> tuple[Any, Any, Any]:
    """(Video-LLM, embedder, compressor) by name, as the CLI loads them (offline when HF_HUB_OFFLINE=1)."""
    from streamvid.compress import create_compressor
    from streamvid.embedders import load_embedder
    from streamvid.models import load_adapter

    model = load_adapter(config.model, device=config.device, dtype=config.dtype) if llm else None
    emb = load_embedder(config.embedder, device=config.device)
    comp = create_compressor(config.compressor, ratio=config.ratio) if compressor else None
    return model, emb, comp


@ray.remote
def _on_shard(fn: Callable[..., Any], *args: Any) -> Any:
    """One shard's part of a fan-out (search, timeline, get, describe, summarize), run where Ray places it."""
    return fn(*args)


def ray_fan_out(
    fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], *, cpus: float = 0.5, timeout: float = SHARD_TIMEOUT
) -> list[Any]:
    """Run ``fn(*args)`` for every shard as parallel Ray tasks. -> the result or the exception per
    call, in order (a task that fails or outlives ``timeout`` is an exception, never raised here)."""
    refs = []
    for args in calls:
        options: dict[str, Any] = {"num_cpus": cpus, "max_retries": 1}
        node = getattr(args[0], "node", None) if args else None
        if node is not None:  # on the shard writer's host (soft: anywhere when that node is gone)
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        refs.append(_on_shard.options(**options).remote(fn, *args))
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout) if refs else ([], [])
    done = set(ready)
    out: list[Any] = []
    for ref in refs:
        if ref not in done:
            ray.cancel(ref, force=True)
            out.append(TimeoutError(f"no answer from the shard within {timeout:.0f} s"))
            continue
        try:
            out.append(ray.get(ref))
        except ray.exceptions.RayTaskError as err:  # the task raised: hand its own error on
            out.append(err.cause if isinstance(err.cause, BaseException) else err)
        except ray.exceptions.RayError as err:  # the worker or its node died
            out.append(err)
    return out


class PacedFile(FileSource):
    """A file delivered at ``pace`` times real time, as a camera would (tests, demos, benchmarks of a
    live load). Frames up to ``after`` seconds (what an earlier run stored, skipped by resume)
    are delivered at once. Still a file for resume (its :func:`~agents.ingest.source_key`)."""

    def __init__(self, path: str, pace: float, after: float | None = None) -> None:
        super().__init__(path)
        self.pace, self.after = pace, after
        self._stop = threading.Event()

    def frames(self) -> Any:
        first: tuple[float, float] | None = None  # (media time, monotonic time) of the first paced frame
        frame: RawFrame
        for frame in super().frames():
            if self.after is None or frame.time > self.after:
                now = time.monotonic()
                if first is None:
                    first = (frame.time, now)
                wait = first[1] + (frame.time - first[0]) / self.pace - now
                if wait > 0 and self._stop.wait(wait):
                    return
            yield frame

    def stop(self) -> None:
        self._stop.set()


@dataclass
class _Running:
    spec: StreamSpec
    shard_no: int
    memory: Any
    job: Ingest
    source: Any
    started: float
    resumed_from: float | None
    finished: threading.Event = field(default_factory=threading.Event)
    error: str | None = None


class _ToCoordinator:
    """The alert engine's ``publish``: events go to the coordinator's log, fire and forget (the
    ingest and alert threads never wait for it)."""

    def __init__(self, coordinator: Any) -> None:
        self.coordinator = coordinator

    def publish(self, type: str, data: dict[str, Any]) -> None:
        self.coordinator.record.remote([(type, data)])


@ray.remote(max_concurrency=8)
class EncoderActor:
    """Encode -> incremental TFD -> compress -> store for the streams assigned to ``slot``; one
    shared :class:`~agents.ingest.EncoderWorker` (one tower call per round over its streams);
    thumbnails, alert checks and events after every stored segment."""

    def __init__(self, slot: int, config: ClusterConfig, coordinator: str, namespace: str) -> None:
        from agents.ingest import EncoderWorker

        self.slot, self.config = slot, config
        self.coordinator = ray.get_actor(coordinator, namespace=namespace)  # by name: no handle in the args
        self.pid = os.getpid()
        self.llm, self.embedder, self.compressor = _components(config)
        self.worker = EncoderWorker(self.llm, max_batch=config.encoder_batch)
        self.events = _ToCoordinator(self.coordinator)
        judge = config.alert_judge or LLMJudge(self.llm)
        # the rules live in the coordinator (set_alerts); ids in events are global
        self.alerts = AlertEngine(None, self.events, None, judge, thumbnail_url=thumbnail_url)
        self.streams: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._alerts_version = -1
        self.set_alerts(*ray.get(self.coordinator.alerts.remote()))
        specs, self.starts = ray.get(self.coordinator.streams_for.remote(slot, started=True))
        for spec, share, shard_no in specs:  # after a restart: the same streams again, each resuming
            self._start(StreamSpec(**spec), share, shard_no)

    def info(self) -> dict[str, Any]:
        """slot, pid, node, starts (1 + the restarts Ray made), streams."""
        return {"slot": self.slot, "pid": self.pid, "node": ray.get_runtime_context().get_node_id(),
                "starts": self.starts, "streams": sorted(self.streams)}  # fmt: skip

    def node(self) -> str:
        """The Ray node this actor (the writer of its streams' shards) runs on."""
        return ray.get_runtime_context().get_node_id()

    def start_stream(self, spec: dict[str, Any], share: int, shard_no: int) -> dict[str, Any]:
        """Start ingesting ``spec`` into its shard (number ``shard_no``, for global ids) with
        ``share`` tokens of the global cap (no-op when running)."""
        return self._start(StreamSpec(**spec), share, shard_no)

    def _start(self, spec: StreamSpec, share: int, shard_no: int) -> dict[str, Any]:
        from memory import TokenMemory

        with self._lock:
            if spec.id in self.streams:
                return self._status(spec.id)
            cfg = self.config
            memory = TokenMemory(shard_dir(cfg.root, spec.id), cap_tokens=share)  # the shard's one writer
            try:
                memory.update_settings(model=cfg.model, embedder=cfg.embedder, compressor=cfg.compressor,
                                       ratio=cfg.ratio, fps=cfg.fps)  # fmt: skip
                memory.check_widths(token_dim=self.llm.hidden_size, key_dim=self.embedder.dim)
                source: Any = spec.source
                resumed = None
                key = source_key(spec.source)
                if key is not None:
                    progress = memory.source_progress(spec.id, key)
                    resumed = None if progress is None else progress.last_time
                if spec.pace is not None and Path(spec.source).is_file():
                    source = PacedFile(spec.source, spec.pace, after=resumed)
                job = build_ingest(
                    source, memory, self.llm, self.embedder, self.compressor, stream_id=spec.id, fps=cfg.fps,
                    max_size=cfg.max_size, tau_seg=cfg.tau_seg, min_len=cfg.min_len, max_len=cfg.max_len,
                    live=spec.live, micro_batch=cfg.micro_batch, encoder=self.worker,
                    max_reconnects=int(spec.options.get("max_reconnects", 5)),
                    on_stored=lambda seg, sid: self._stored(spec.id, shard_no, seg, sid),
                )  # fmt: skip
            except BaseException:
                memory.close()
                raise
            run = _Running(spec, shard_no, memory, job, source, time.time(), job.resume_from)
            self.streams[spec.id] = run
            job.start()
            threading.Thread(target=self._watch, args=(run,), name=f"watch-{spec.id}", daemon=True).start()
            log.info("encoder %d: stream %s started (resume from %s)", self.slot, spec.id, job.resume_from)
            return self._status(spec.id)

    def _stored(self, stream: str, shard_no: int, segment: Segment, sid: int) -> None:
        """After each stored segment (on the stream's ingest thread; never raises into ingest):
        the key-frame thumbnail into the shard, the stream's alert rules, a ``segment`` event."""
        gid = global_id(shard_no, sid)
        try:
            from agents.service.streams import thumbnail_path, write_thumbnail  # the serve extra (Pillow)

            frames = segment.frames
            write_thumbnail(thumbnail_path(shard_dir(self.config.root, stream), sid),
                            frames[frames.shape[0] // 2].cpu().numpy())  # fmt: skip
        except Exception as err:  # noqa: BLE001 - a thumbnail is a nicety; the segment is stored
            log.warning("thumbnail of segment %d of %s not written: %s", sid, stream, err)
        compressed: CompressedSegment | None = getattr(segment, "compressed", None)
        novelty = None
        try:
            if compressed is not None:
                novelty = self.alerts.on_segment(stream, gid, compressed)
        except Exception as err:  # noqa: BLE001
            log.warning("segment %d of %s: alert check failed: %s", sid, stream, err)
        self.events.publish("segment", {
            "stream": stream, "id": gid, "start": segment.start_time, "end": segment.end_time,
            "frames": int(segment.frames.shape[0]), "tokens": None if compressed is None else compressed.budget,
            "novelty": novelty, "thumbnail": thumbnail_url(gid),
        })  # fmt: skip

    def set_alerts(self, version: int, rules: list[dict[str, Any]]) -> None:
        """The cluster's alert rules at ``version`` (the coordinator's): each is checked on its
        stream's segments. An older version than the one held (a push that was overtaken) is ignored."""
        with self._lock:
            if version < self._alerts_version:
                return
            self._alerts_version = version
            self.alerts.set_rules([AlertRule(**r) for r in rules])

    def alert_counts(self) -> dict[int, dict[str, int]]:
        """{rule id: segments stored / checked / fired / skipped here} since this actor started."""
        return {r.id: asdict(c) for r, c in self.alerts.rules()}

    def _watch(self, run: _Running) -> None:
        """Wait for the ingest to end (a file read to its end is marked complete by ``join``)."""
        try:
            run.job.join()
        except Exception as err:  # noqa: BLE001 - kept in the stream's status
            run.error = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        run.finished.set()

    def stop_stream(self, stream: str, timeout: float = 60.0) -> dict[str, Any] | None:
        """Stop a stream (its open segment is stored) and release its shard's writer lock."""
        with self._lock:
            run = self.streams.get(stream)
        if run is None:
            return None
        run.job.stop()
        stop = getattr(run.source, "stop", None)
        if callable(stop):
            stop()
        run.finished.wait(timeout)
        status = self._status(stream)
        with self._lock:
            self.streams.pop(stream, None)
        run.memory.close()
        return status

    def set_caps(self, shares: dict[str, int]) -> dict[str, int]:
        """Apply the coordinator's cap shares to this actor's shards (re-merging at once when one
        shrinks). -> {stream: tokens held after}."""
        out = {}
        with self._lock:
            runs = {s: self.streams[s] for s in shares if s in self.streams}
        for stream, run in runs.items():
            share = int(shares[stream])
            mem = run.memory
            if mem.config.cap_tokens != share:
                mem.set_cap(cap_tokens=share)
            out[stream] = mem.tokens_held
        return out

    def _status(self, stream: str) -> dict[str, Any]:
        run = self.streams[stream]
        s = run.job.stats
        finished = run.finished.is_set() or run.job.already_complete
        if run.error is not None:
            state = "error"
        elif finished:
            state = "finished"
        else:
            state = "running"
        return {
            "id": stream,
            "source": run.spec.source,
            "state": state,
            "running": not finished,
            "frames": s.frames_sampled,
            "dropped": s.frames_dropped,
            "segments": run.memory.segment_counts()[0],
            "reconnects": s.reconnects,
            "error": run.error,
            "tokens_held": run.memory.tokens_held,
            "token_cap": run.memory.token_cap,
            "resumed_from": run.resumed_from,
            "encoder": self.slot,
            "pid": self.pid,
        }

    def status(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._status(s) for s in sorted(self.streams)]

    def peek(self, streams: Sequence[str] = ()) -> list[Any]:
        """The still-open segment of each of these streams (all when empty), compressed now."""
        with self._lock:
            runs = [r for s, r in self.streams.items() if not streams or s in streams]
        out = [r.job.peek() for r in runs if not r.finished.is_set()]
        return [seg for seg in out if seg is not None]

    def close(self) -> None:
        for stream in list(self.streams):
            self.stop_stream(stream)
        self.alerts.close()
        self.worker.close()


_STATE = "cluster.json"


def _gather(refs: Sequence[Any], timeout: float) -> list[Any]:
    """ray.get of each ref that is ready within ``timeout``; None for the rest and for failures
    (an actor that is restarting)."""
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout) if refs else ([], [])
    done = set(ready)
    out: list[Any] = []
    for ref in refs:
        try:
            out.append(ray.get(ref) if ref in done else None)
        except ray.exceptions.RayError:
            out.append(None)
    return out


@ray.remote(max_concurrency=4, concurrency_groups={"rebalance": 1})
class BudgetCoordinator:
    """The cluster's registry of streams and its global cap (an actor, not a protocol).

    State (persisted in ``<root>/cluster.json`` after every change, so a restarted coordinator
    carries on): the global cap, the encoder slots, per stream its spec, shard number, slot and cap
    share, the alert rules, and the rebalance period. :meth:`plan` reads every shard's CABA
    statistics (Ray tasks), computes the shares (:func:`~agents.cluster.plan.cap_shares`) and
    records them; :meth:`rebalance` also applies them to the encoder actors (found by name).

    A rebalance asked for through Ray runs in a concurrency group of its own (one thread): it can
    wait minutes for an encoder actor that is restarting, and that actor, to start, needs this
    coordinator's registry methods, which keep the other threads.

    The periodic rebalance runs here, on a thread of this actor, every ``rebalance_every``
    seconds: the coordinator is the one part that lives as long as the cluster (detached with it,
    restarted by Ray), holds the registry the plan needs and can find every encoder actor by name,
    so a cluster started with ``--detach`` keeps its shares current after its driver has gone.

    Events (``segment`` stored, ``alert`` fired) are appended by the encoder actors with a
    sequence number; :meth:`events` hands out those after a number, with this coordinator's
    ``epoch`` (a restarted coordinator starts numbering again, and says so by a new epoch).
    """

    def __init__(self, config: ClusterConfig) -> None:
        self.path = Path(config.root) / _STATE
        self._lock = threading.Lock()
        self._rebalancing = threading.Lock()
        self.state: dict[str, Any] = {"cap": config.cap_tokens, "next_shard": 0, "slots": [], "streams": {}}
        if self.path.is_file():
            self.state = json.loads(self.path.read_text())
        self.state.setdefault("alerts", {})
        self.state.setdefault("next_alert", 1)
        self.state.setdefault("alerts_version", 0)
        self.state.setdefault("rebalance_every", config.rebalance_every)
        self.state.setdefault("rebalances", 0)
        self.config = config
        self.epoch = uuid.uuid4().hex[:12]
        self._events: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=EVENT_HISTORY)
        self._seq = 0
        self._wake = threading.Event()
        threading.Thread(target=self._loop, name="streamvid-rebalance", daemon=True).start()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".partial")
        tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True))
        tmp.replace(self.path)

    def get_config(self) -> ClusterConfig:
        return self.config

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self.state))

    def set_slots(self, slots: list[int]) -> None:
        with self._lock:
            self.state["slots"] = sorted(slots)
            self._save()

    def add(self, spec: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            streams = self.state["streams"]
            if spec["id"] in streams:
                raise ConfigError(f"stream {spec['id']!r} is already in the cluster; remove it first")
            if len(streams) + 1 > self.state["cap"]:
                raise ConfigError(f"the global cap of {self.state['cap']} tokens cannot hold another shard")
            # the shard's directory exists from now on: a missing one later means its mount is gone
            shard_dir(self.config.root, spec["id"]).mkdir(parents=True, exist_ok=True)
            record = {"spec": spec, "shard_no": self.state["next_shard"], "slot": None, "share": None}
            self.state["next_shard"] += 1
            streams[spec["id"]] = record
            self._save()
            return record

    def remove(self, stream: str) -> dict[str, Any] | None:
        with self._lock:
            record = self.state["streams"].pop(stream, None)
            self._save()
            return record

    def assign(self, slots: dict[str, int]) -> None:
        with self._lock:
            for stream, slot in slots.items():
                if stream in self.state["streams"]:
                    self.state["streams"][stream]["slot"] = slot
            self._save()

    def streams_for(self, slot: int, started: bool = False) -> tuple[list[tuple[dict[str, Any], int, int]], int]:
        """(spec, cap share, shard number) of every stream assigned to ``slot``: what a (re)started
        actor runs; and how often an actor started in that slot (``started``: this call is one more)."""
        with self._lock:
            out = []
            for r in self.state["streams"].values():
                if r["slot"] == slot:
                    share = r["share"] or max(1, self.state["cap"] // max(1, len(self.state["streams"])))
                    out.append((r["spec"], share, r["shard_no"]))
            starts = self.state.setdefault("starts", {})
            if started:
                starts[str(slot)] = starts.get(str(slot), 0) + 1
                self._save()
            return out, starts.get(str(slot), 0)

    def shards(self, nodes: dict[int, str] | None = None) -> list[ShardRef]:
        """Every stream's shard; ``nodes``: {slot: Ray node id} of the encoder actors (the writers)."""
        nodes = nodes or {}
        with self._lock:
            return [
                ShardRef(name, r["shard_no"], str(shard_dir(self.config.root, name)), nodes.get(r["slot"]))
                for name, r in sorted(self.state["streams"].items())
            ]

    def set_cap(self, cap: int) -> None:
        with self._lock:
            if cap < max(1, len(self.state["streams"])):
                raise ConfigError(f"a global cap of {cap} tokens cannot give every shard one token; raise it")
            self.state["cap"] = int(cap)
            self._save()

    def plan(
        self, done: list[str] | None = None, cpus: float = 0.5, nodes: dict[int, str] | None = None
    ) -> dict[str, Any]:
        """New cap shares from every shard's CABA statistics. -> {"shares", "weights", "held",
        "unavailable"}; a shard that cannot be read keeps its share (its tokens still count)."""
        shards = self.shards(nodes)
        results = ray_fan_out(summarize_shard, [(s,) for s in shards], cpus=cpus)
        summaries, unavailable = [], {}
        for shard, result in zip(shards, results):
            if isinstance(result, BaseException):
                unavailable[shard.stream] = str(result).strip().splitlines()[0] if str(result).strip() else "error"
            else:
                summaries.append(result)
        cfg = self.config
        weights = shard_weights(summaries, tau=cfg.tau, alpha=cfg.alpha, beta=cfg.beta)
        held = {s.stream: s.held for s in summaries}
        with self._lock:
            records = self.state["streams"]
            kept = {s: int(records[s]["share"] or 1) for s in unavailable if s in records}
            room = self.state["cap"] - sum(kept.values())
            names = [s.stream for s in shards if s.stream not in unavailable and s.stream in records]
            shares = cap_shares(weights, names, room, held=held, done=list(done or [])) if names else {}
            shares.update(kept)
            for s, share in shares.items():
                records[s]["share"] = share
            self._save()
        return {"shares": shares, "weights": weights, "held": held, "unavailable": unavailable}

    # -- rebalancing: when asked, and every rebalance_every seconds ------------------------------------

    def _encoders(self) -> dict[int, Any]:
        """{slot: handle} of the encoder actors of the registered slots, looked up by name each time
        (a slot's actor made again after it died for good is another actor; one that does not
        exist, e.g. being created, is left out)."""
        with self._lock:
            slots = list(self.state["slots"])
        out = {}
        for slot in slots:
            try:
                out[slot] = ray.get_actor(f"{self.config.actor_prefix}-encoder-{slot}", namespace=NAMESPACE)
            except ValueError:
                continue
        return out

    @ray.method(concurrency_group="rebalance")
    def rebalance(self) -> dict[str, Any]:
        """:meth:`plan` over the finished streams and the writers' nodes, then the shares applied
        to the encoder actors: shards that shrink first, then those that grow, so the sum of the
        shards' caps never exceeds the global cap. -> the plan. One rebalance at a time."""
        with self._rebalancing:
            encoders = self._encoders()
            slots = sorted(encoders)
            statuses = _gather([encoders[s].status.remote() for s in slots], STATUS_TIMEOUT)
            nodes = _gather([encoders[s].node.remote() for s in slots], STATUS_TIMEOUT)
            done = [st["id"] for part in statuses if part for st in part if st["state"] == "finished"]
            with self._lock:
                records = json.loads(json.dumps(self.state["streams"]))
            plan = self.plan(done, self.config.search_cpus, {s: n for s, n in zip(slots, nodes) if n})
            for shrinking in (True, False):
                by_slot: dict[int, dict[str, int]] = {}
                for s, share in plan["shares"].items():
                    old = records.get(s, {}).get("share")
                    slot = records.get(s, {}).get("slot")
                    if (old is None or share < old) == shrinking and slot in encoders:
                        by_slot.setdefault(slot, {})[s] = share
                refs = [encoders[slot].set_caps.remote(part) for slot, part in by_slot.items()]
                if None in _gather(refs, APPLY_TIMEOUT):  # applied by its constructor once restarted
                    log.warning("an encoder actor did not apply its cap shares in time")
            with self._lock:
                self.state["rebalances"] += 1
                self._save()
            return plan

    def set_rebalance_every(self, seconds: float) -> None:
        """Rebalance every ``seconds`` from now on (0: only when asked)."""
        check_rebalance_every(seconds)
        with self._lock:
            self.state["rebalance_every"] = float(seconds)
            self._save()
        self._wake.set()

    def _loop(self) -> None:
        """Every ``rebalance_every`` seconds, :meth:`tick`; a changed period takes effect at once.
        Never ends: a failed round is logged and the next one comes."""
        last = time.monotonic()
        while True:
            try:
                with self._lock:
                    every = float(self.state["rebalance_every"])
                if self._wake.wait(None if every <= 0 else max(0.0, last + every - time.monotonic())):
                    self._wake.clear()
                    continue
                last = time.monotonic()
                self.tick()
            except Exception as err:  # noqa: BLE001 - e.g. a bad period in an old cluster.json
                log.warning("the rebalance loop: %s; trying again in a minute", err)
                self._wake.wait(60.0)

    def tick(self) -> bool:
        """One periodic rebalance (none without streams). -> whether it ran; a failure is logged,
        the loop goes on."""
        with self._lock:
            if not self.state["streams"]:
                return False
        try:
            self.rebalance()
        except Exception as err:  # noqa: BLE001 - the next tick tries again
            log.warning("periodic rebalance failed: %s", err)
            return False
        return True

    # -- alert rules -------------------------------------------------------------------------------

    def add_alert(self, stream: str, rule: str, threshold: float) -> dict[str, Any]:
        with self._lock:
            if stream not in self.state["streams"]:
                raise ConfigError(f"no stream {stream!r} in this cluster; add it first")
            made = AlertRule(int(self.state["next_alert"]), stream, rule, float(threshold), time.time())
            self.state["next_alert"] += 1
            self.state["alerts"][str(made.id)] = asdict(made)
            self.state["alerts_version"] += 1
            self._save()
            return asdict(made)

    def remove_alert(self, alert_id: int) -> bool:
        with self._lock:
            found = self.state["alerts"].pop(str(int(alert_id)), None) is not None
            if found:
                self.state["alerts_version"] += 1
                self._save()
            return found

    def alerts(self) -> tuple[int, list[dict[str, Any]]]:
        """(version, every alert rule as AlertRule fields in id order); the version grows with every
        change, so an encoder actor can tell an older push of the rules from a newer one."""
        with self._lock:
            rules = [dict(r) for _, r in sorted(self.state["alerts"].items(), key=lambda p: int(p[0]))]
            return int(self.state["alerts_version"]), rules

    # -- events --------------------------------------------------------------------------------------

    def record(self, events: list[tuple[str, dict[str, Any]]]) -> int:
        """Append events (type, data); -> the last sequence number."""
        with self._lock:
            for type_, data in events:
                self._seq += 1
                self._events.append((self._seq, type_, data))
            return self._seq

    def events(self, after: int = 0, limit: int = 1000) -> dict[str, Any]:
        """{"epoch", "last": the newest sequence number, "events": [(seq, type, data)] after
        ``after``, oldest first, at most ``limit``}."""
        with self._lock:
            found = [e for e in self._events if e[0] > after][:limit]
            return {"epoch": self.epoch, "last": self._seq, "events": found}


def _note(unavailable: dict[str, str]) -> str:
    names = ", ".join(f"camera {s}'s memory is unavailable ({why})" for s, why in sorted(unavailable.items()))
    return f"(Note: {names}; the answer covers the other streams only.)"


class TextJoin:
    """Decoded text pieces -> the pieces to send, so that the sent pieces joined are the answer's
    final text exactly: that text is stripped (leading whitespace is dropped, trailing whitespace
    is held back until more text follows it) and may go on after the decoded text (a note on
    evicted or unavailable segments), which :meth:`rest` gives. Should the final text not begin
    with what was sent (a tokenizer that rewrites earlier text as it decodes), nothing more is sent;
    the answer itself carries the text."""

    def __init__(self) -> None:
        self.sent = ""
        self.held = ""

    def piece(self, text: str) -> str:
        """The part of a newly decoded piece to send now ("" when none)."""
        text = self.held + text
        if not self.sent:
            text = text.lstrip()
        body = text.rstrip()
        self.held = text[len(body) :]
        self.sent += body
        return body

    def rest(self, final: str) -> str:
        """What the final text adds after the pieces sent so far."""
        return final[len(self.sent) :] if final.startswith(self.sent) else ""


@ray.remote(max_concurrency=4)
class AnswerActor:
    """The answering Video-LLM (on a GPU in a GPU cluster): fan-out search, global merge, the
    budgeted prefill and generation of :class:`~agents.qa.VideoQA`, over the shards it is given."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.llm, self.embedder, _ = _components(config, compressor=False)
        self.pid = os.getpid()
        self._model_lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        return {"pid": self.pid, "node": ray.get_runtime_context().get_node_id()}

    def _memory(self, shards: Sequence[ShardRef]) -> ShardedMemory:
        cpus = self.config.search_cpus
        return ShardedMemory(shards, lambda fn, calls: ray_fan_out(fn, calls, cpus=cpus))

    def ask(
        self,
        question: str,
        shards: list[ShardRef],
        *,
        encoders: Sequence[Any] = (),
        k: int | None = None,
        time_range: tuple[float, float] | None = None,
        streams: Sequence[str] | None = None,
        max_visual_tokens: int | None = None,
        max_new_tokens: int | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> ClusterAnswer:
        """The answer from ``shards`` (``on_text``: the text pieces as they decode, in this process)."""
        memory = self._memory(shards)

        def open_segments(names: Sequence[str]) -> list[Any]:
            refs = [e.peek.remote(list(names)) for e in encoders]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=PEEK_TIMEOUT) if refs else ([], [])
            out: list[Any] = []
            for ref in ready:
                try:
                    out += ray.get(ref)
                except ray.exceptions.RayError:  # a restarting actor: its open segments are skipped
                    pass
            return out

        qa = VideoQA(
            self.llm, memory, self.embedder, k=k, live=True, max_visual_tokens=max_visual_tokens,
            max_new_tokens=max_new_tokens or self.config.max_new_tokens, open_segments=open_segments,
        )  # fmt: skip
        with self._model_lock:
            answer = qa.ask(question, time_range=time_range, streams=streams, remember=False, on_text=on_text)
        out = ClusterAnswer(**asdict_shallow(answer), unavailable=dict(memory.unavailable))
        if out.unavailable:
            out.text = (out.text + "\n" + _note(out.unavailable)).strip()
        return out

    def ask_stream(self, question: str, shards: list[ShardRef], **kwargs: Any) -> Iterator[str | ClusterAnswer]:
        """:meth:`ask` as a Ray streaming generator: each text piece as the model decodes it, then
        the ClusterAnswer. The question runs on a thread of its own that hands the pieces over a
        queue, so each is yielded (and reaches the caller) while the next one decodes. What the
        answer's text adds after the decoded text (a note on evicted or unavailable segments, or
        the whole text when nothing was decoded) comes as one last piece, so a client that joins
        the pieces has the whole text."""
        pieces: queue.Queue[tuple[str, Any]] = queue.Queue()

        def run() -> None:
            try:
                answer = self.ask(question, shards, on_text=lambda piece: pieces.put(("text", piece)), **kwargs)
                pieces.put(("answer", answer))
            except BaseException as err:  # noqa: BLE001 - raised again on the generator's side
                pieces.put(("error", err))

        threading.Thread(target=run, name="streamvid-ask-stream", daemon=True).start()
        join = TextJoin()
        while True:
            kind, item = pieces.get()
            if kind == "error":
                raise item
            if kind == "answer":
                rest = join.rest(item.text)
                if rest:
                    yield rest
                yield item
                return
            piece = join.piece(item)
            if piece:
                yield piece

    def retrieve(
        self,
        query: str,
        shards: list[ShardRef],
        k: int | None,
        time_range: tuple[float, float] | None = None,
        streams: Sequence[str] | None = None,
        max_visual_tokens: int | None = None,
    ) -> tuple[list[tuple[Any, float | None]], dict[str, str]]:
        """The segments a question retrieves (VideoQA.retrieve: the top ``k``, or with ``k`` None
        what a ``max_visual_tokens`` block could show; global ids) and the unavailable shards."""
        memory = self._memory(shards)
        qa = VideoQA(self.llm, memory, self.embedder, max_visual_tokens=max_visual_tokens)
        found = qa.retrieve(query, k, time_range, streams)
        return found, dict(memory.unavailable)


def asdict_shallow(answer: Answer) -> dict[str, Any]:
    """An Answer's fields as a dict, values as they are (``dataclasses.asdict`` would turn the
    UsedSegments into dicts)."""
    return {name: getattr(answer, name) for name in answer.__dataclass_fields__}
