""":class:`Cluster`: the one object in front of a streamvid cluster on Ray. It starts (or finds, by
name) the coordinator, the encoder actors and the answering actor, and offers what a service
needs: streams listed, added and removed with their status; questions with streams, time range and
a visual token budget, answered as :class:`~agents.qa.Answer` (a :class:`ClusterAnswer`), the
text streamed piece by piece when asked; segment listings; the global cap and its rebalancing;
alert rules and the cluster's events. ``streamvid cluster`` and the REST service adapter
(agents/cluster/service.py) both use it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from agents.cluster.plan import ClusterConfig, StreamSpec, assign_streams, local_id
from memory import SegmentInfo
from streamvid.errors import ConfigError, StreamvidError

__all__ = ["NAMESPACE", "RAY_HINT", "Cluster", "require_ray"]

log = logging.getLogger(__name__)

NAMESPACE = "streamvid"
RAY_HINT = "pip install 'streamvid[ray]'"
# seconds a status call waits for an encoder actor (one restarting is reported as such)
STATUS_TIMEOUT = 10.0


def require_ray() -> Any:
    """The ray module, or a one-line ConfigError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the cluster needs Ray, which is not installed; {RAY_HINT}") from None
    return ray


class Cluster:
    """A streamvid cluster: encoder actors writing one shard per stream, a budget coordinator, an
    answering actor, all on Ray.

    address: None starts a local Ray (``num_cpus``/``num_gpus`` as given) unless this process is
    already connected; "auto" or "ray://host:port" joins a running cluster. Actors are named after
    the memory root (``config.root``), so a second ``Cluster`` on the same root, from any driver,
    finds the same actors (``detached=True`` keeps them alive after the driver exits). The streams
    and their shares live in the coordinator (``<root>/cluster.json``): a new ``Cluster`` on a root
    restarts its streams, each resuming where its shard stopped.
    """

    def __init__(
        self,
        config: ClusterConfig,
        *,
        address: str | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        detached: bool = False,
    ) -> None:
        ray = require_ray()
        from agents.cluster import actors

        self.ray, self.actors, self.config = ray, actors, config
        self._own_ray = False
        if not ray.is_initialized():
            if address is None:  # room for every actor and two search tasks, however few the cores
                need = config.encoders * config.cpus_per_encoder + config.answer_cpus + 2 * config.search_cpus
                cpus = num_cpus if num_cpus is not None else max(float(os.cpu_count() or 1), need)
                ray.init(num_cpus=cpus, num_gpus=num_gpus, include_dashboard=False, namespace=NAMESPACE,
                         log_to_driver=False)  # fmt: skip
            else:
                ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
            self._own_ray = True
        self.lifetime = "detached" if detached else None
        self.prefix = config.actor_prefix
        self.coordinator = actors.BudgetCoordinator.options(
            name=f"{self.prefix}-coordinator", namespace=NAMESPACE, get_if_exists=True, lifetime=self.lifetime,
            num_cpus=0, max_restarts=-1, max_task_retries=-1,
        ).remote(config)  # fmt: skip
        state = ray.get(self.coordinator.snapshot.remote())
        slots = state["slots"] or list(range(config.encoders))
        self.encoders: dict[int, Any] = {s: self._encoder(s) for s in slots}
        ray.get(self.coordinator.set_slots.remote(slots))
        self.answerer = actors.AnswerActor.options(
            name=f"{self.prefix}-answer", namespace=NAMESPACE, get_if_exists=True, lifetime=self.lifetime,
            num_cpus=config.answer_cpus, num_gpus=config.answer_gpus, max_restarts=-1, max_task_retries=-1,
        ).remote(config)  # fmt: skip
        self._reassign()

    @classmethod
    def attach(cls, root: str, *, address: str | None = "auto") -> Cluster:
        """The cluster already running on memory root ``root`` (ConfigError when none is)."""
        ray = require_ray()
        if not ray.is_initialized():
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
        key = ClusterConfig(root=str(root), model="-").namespace_key
        try:
            coordinator = ray.get_actor(f"streamvid-{key}-coordinator", namespace=NAMESPACE)
        except ValueError:
            raise ConfigError(
                f"no streamvid cluster runs on {Path(root)} at this Ray address; start one with "
                "'streamvid cluster run --detach'"
            ) from None
        config = ray.get(coordinator.get_config.remote())
        return cls(config, address=address)

    def _encoder(self, slot: int) -> Any:
        cfg = self.config
        return self.actors.EncoderActor.options(
            name=f"{self.prefix}-encoder-{slot}", namespace=NAMESPACE, get_if_exists=True, lifetime=self.lifetime,
            num_cpus=cfg.cpus_per_encoder, num_gpus=cfg.gpus_per_encoder, max_restarts=cfg.max_restarts,
            max_task_retries=-1,
        ).remote(slot, cfg, f"{self.prefix}-coordinator", NAMESPACE)  # fmt: skip

    # -- assignment ------------------------------------------------------------------------------

    def _records(self) -> dict[str, Any]:
        return self.ray.get(self.coordinator.snapshot.remote())["streams"]

    def _reassign(self, gone: Sequence[int] = ()) -> dict[str, int]:
        """Sticky assignment over the live encoder actors; moved streams are stopped on their old
        actor (the shard's writer lock released) before the new one opens them."""
        records = self._records()
        current = {s: r["slot"] for s, r in records.items() if r["slot"] is not None}
        live = [s for s in self.encoders if s not in set(gone)]
        wanted = assign_streams(list(records), live, current)
        moves = {s: a for s, a in wanted.items() if current.get(s) != a}
        leaving = [s for s in moves if current.get(s) in self.encoders]
        self.ray.get([self.encoders[current[s]].stop_stream.remote(s) for s in leaving])
        self.ray.get(self.coordinator.assign.remote(wanted))
        share_of = {s: r["share"] or 1 for s, r in records.items()}
        self.ray.get([self.encoders[a].start_stream.remote(records[s]["spec"], share_of[s], records[s]["shard_no"])
                      for s, a in moves.items()])  # fmt: skip
        return wanted

    def scale(self, encoders: int) -> dict[str, int]:
        """Run ``encoders`` encoder actors: new ones take streams from the busiest, removed ones
        (the highest slots) hand theirs over first. -> the new assignment."""
        if encoders < 1:
            raise ConfigError("a cluster needs at least one encoder actor")
        slots = sorted(self.encoders)
        if encoders > len(slots):
            for s in range(max(slots) + 1, max(slots) + 1 + encoders - len(slots)):
                self.encoders[s] = self._encoder(s)
            self.ray.get(self.coordinator.set_slots.remote(sorted(self.encoders)))
            return self._reassign()
        gone = slots[encoders:]
        wanted = self._reassign(gone)
        for s in gone:
            actor = self.encoders.pop(s)
            self.ray.get(actor.close.remote())
            self.ray.kill(actor, no_restart=True)
        self.ray.get(self.coordinator.set_slots.remote(sorted(self.encoders)))
        return wanted

    # -- streams ---------------------------------------------------------------------------------

    def add_stream(self, spec: StreamSpec | dict[str, Any]) -> dict[str, Any]:
        """Register a stream, give it a share of the cap (the others' shrink first) and start it on
        an encoder actor. -> its status."""
        return self.add_streams([spec])[0]

    def add_streams(self, specs: Sequence[StreamSpec | dict[str, Any]]) -> list[dict[str, Any]]:
        """:meth:`add_stream` for many at once: one share plan and one assignment for all (a site's
        camera list). -> their statuses, in order."""
        given = [s if isinstance(s, StreamSpec) else StreamSpec(**s) for s in specs]
        for spec in given:
            self.ray.get(self.coordinator.add.remote(asdict(spec)))
        self.rebalance()
        wanted = self._reassign()
        slots = sorted({wanted[s.id] for s in given})
        rows = self.ray.get([self.encoders[x].status.remote() for x in slots])
        found = {st["id"]: st for part in rows for st in part}
        return [found[s.id] for s in given]

    def remove_stream(self, stream: str) -> dict[str, Any]:
        """Stop a stream and release its shard (the shard's segments stay on disk, searchable no more)."""
        records = self._records()
        if stream not in records:
            raise ConfigError(f"no stream {stream!r} in this cluster; 'streamvid cluster status' lists them")
        slot = records[stream]["slot"]
        status = None
        if slot in self.encoders:
            status = self.ray.get(self.encoders[slot].stop_stream.remote(stream))
        self.ray.get(self.coordinator.remove.remote(stream))
        return status or {"id": stream, "state": "removed"}

    def streams(self) -> list[dict[str, Any]]:
        """Every stream's status (an actor that does not answer in time, e.g. while Ray restarts
        it, has its streams reported as ``restarting``)."""
        records = self._records()
        slots = sorted(self.encoders)
        refs = [self.encoders[s].status.remote() for s in slots]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=STATUS_TIMEOUT)
        seen: dict[str, dict[str, Any]] = {}
        for ref in ready:
            try:
                for st in self.ray.get(ref):
                    seen[st["id"]] = st
            except self.ray.exceptions.RayError:
                pass
        out = []
        for name, r in sorted(records.items()):
            st = seen.get(name) or {"id": name, "source": r["spec"]["source"], "state": "restarting",
                                    "running": False, "encoder": r["slot"], "error": None}  # fmt: skip
            out.append({**st, "shard_no": r["shard_no"], "share": r["share"]})
        return out

    def wait(self, streams: Sequence[str] | None = None, timeout: float = 600.0, poll: float = 0.2) -> list[dict]:
        """Until the given file streams (all by default) are finished. -> their statuses.
        TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = [s for s in self.streams() if streams is None or s["id"] in streams]
            if all(s["state"] in ("finished", "error") for s in statuses):
                return statuses
            if time.monotonic() > deadline:
                busy = [s["id"] for s in statuses if s["state"] not in ("finished", "error")]
                raise TimeoutError(f"streams {busy} still running after {timeout:.0f} s")
            time.sleep(poll)  # polling the actors with a deadline: they run in other processes

    # -- the global cap ----------------------------------------------------------------------------

    def rebalance(self) -> dict[str, Any]:
        """Recompute every shard's cap share by CABA weights and apply it, now (the coordinator's
        :meth:`~agents.cluster.actors.BudgetCoordinator.rebalance`: shards that shrink first, then
        those that grow, so the sum of the shards' caps never exceeds the global cap). The
        coordinator also does this on its own every ``rebalance_every`` seconds. -> the plan."""
        return self.ray.get(self.coordinator.rebalance.remote())

    def set_rebalance_every(self, seconds: float) -> None:
        """The coordinator's own rebalance every ``seconds`` from now on (0: only when asked)."""
        self.ray.get(self.coordinator.set_rebalance_every.remote(float(seconds)))

    def set_cap(self, cap_tokens: int) -> dict[str, Any]:
        """A new global cap, applied at once (shards re-merge or evict by their new shares)."""
        self.ray.get(self.coordinator.set_cap.remote(int(cap_tokens)))
        return self.rebalance()

    def stats(self) -> dict[str, Any]:
        """Tokens held over all shards vs the global cap, per shard share, and unavailable shards."""
        memory = self.sharded_memory()
        state = self.ray.get(self.coordinator.snapshot.remote())
        live, evicted = memory.segment_counts()
        return {
            "tokens_held": memory.tokens_held,
            "token_cap": state["cap"],
            "segments_live": live,
            "segments_evicted": evicted,
            "shares": {s: r["share"] for s, r in state["streams"].items()},
            "held": {s: f.tokens_held for s, f in memory.facts.items()},
            "unavailable": memory.unavailable,
        }

    # -- questions and segments --------------------------------------------------------------------

    def nodes(self) -> dict[int, str]:
        """{slot: Ray node id} of the encoder actors that answer within a second (the shards'
        writers: reads are scheduled there)."""
        slots = sorted(self.encoders)
        refs = {self.encoders[s].node.remote(): s for s in slots}
        ready, _ = self.ray.wait(list(refs), num_returns=len(refs), timeout=1.0)
        out = {}
        for ref in ready:
            try:
                out[refs[ref]] = self.ray.get(ref)
            except self.ray.exceptions.RayError:
                pass
        return out

    def _shards(self, streams: Sequence[str] | None = None) -> list[Any]:
        shards = self.ray.get(self.coordinator.shards.remote(self.nodes()))
        if streams:
            known = {s.stream for s in shards}
            unknown = [s for s in streams if s not in known]
            if unknown:
                raise ConfigError(f"no stream(s) {unknown} in this cluster; 'streamvid cluster status' lists them")
            shards = [s for s in shards if s.stream in set(streams)]
        return shards

    def sharded_memory(self, streams: Sequence[str] | None = None) -> Any:
        """The read side of every shard (or those of ``streams``) as one memory, fanned out as Ray tasks."""
        from agents.cluster.shards import ShardedMemory

        cpus = self.config.search_cpus
        return ShardedMemory(self._shards(streams), lambda fn, calls: self.actors.ray_fan_out(fn, calls, cpus=cpus))

    def ask(
        self,
        question: str,
        *,
        streams: Sequence[str] | None = None,
        time_range: tuple[float, float] | None = None,
        max_visual_tokens: int | None = None,
        k: int | None = None,
        max_new_tokens: int | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> Any:
        """Answer from every shard (or those of ``streams``): fan-out search, global merge, one
        budgeted prefill on the answering actor. -> a ClusterAnswer (its ``unavailable`` names the
        shards that could not be read; the text says so). ``on_text``: called here with each text
        piece as the answering actor decodes it (its streaming generator), then the answer returns."""
        shards = self._shards(streams)
        kwargs = dict(encoders=list(self.encoders.values()), k=k, time_range=time_range,
                      streams=list(streams) if streams else None, max_visual_tokens=max_visual_tokens,
                      max_new_tokens=max_new_tokens)  # fmt: skip
        try:
            if on_text is None:
                return self.ray.get(self.answerer.ask.remote(question, shards, **kwargs))
            answer = None
            for ref in self.answerer.ask_stream.options(num_returns="streaming").remote(question, shards, **kwargs):
                item = self.ray.get(ref)
                if isinstance(item, str):
                    on_text(item)
                else:
                    answer = item
        except self.ray.exceptions.RayTaskError as err:  # our own error, without the remote traceback
            if isinstance(err.cause, StreamvidError):
                raise err.cause from None
            raise
        if answer is None:
            raise ConfigError("the answering actor ended without an answer; ask again")
        return answer

    def retrieve(
        self,
        query: str,
        k: int | None = None,
        *,
        streams: Sequence[str] | None = None,
        time_range: tuple[float, float] | None = None,
        max_visual_tokens: int | None = None,
    ) -> tuple[list[tuple[SegmentInfo, float | None]], dict[str, str]]:
        """What a question retrieves (VideoQA.retrieve; global ids), and the unavailable shards."""
        shards = self._shards(streams)
        chosen = list(streams) if streams else None
        return self.ray.get(self.answerer.retrieve.remote(query, shards, k, time_range, chosen, max_visual_tokens))

    def segments(
        self, stream: str | None = None, start: float | None = None, end: float | None = None
    ) -> list[SegmentInfo]:
        """Stored segments (live and evicted) overlapping [start, end], in time order, global ids."""
        return self.sharded_memory([stream] if stream else None).timeline(stream, start, end)

    # -- alerts and events ---------------------------------------------------------------------------

    def _push_alerts(self) -> None:
        """Every encoder actor gets every rule (a stream's rules follow it when it moves); one
        that is restarting reads them from the coordinator as it starts."""
        version, rules = self.ray.get(self.coordinator.alerts.remote())
        refs = [e.set_alerts.remote(version, rules) for e in self.encoders.values()]
        self.ray.wait(refs, num_returns=len(refs), timeout=STATUS_TIMEOUT)

    def add_alert(self, stream: str, rule: str, threshold: float) -> dict[str, Any]:
        """A rule checked on ``stream``'s novel segments from now on. -> the rule (AlertRule fields)."""
        if stream not in self._records():
            raise ConfigError(f"no stream {stream!r} in this cluster; 'streamvid cluster status' lists them")
        made = self.ray.get(self.coordinator.add_alert.remote(stream, rule, float(threshold)))
        self._push_alerts()
        return made

    def remove_alert(self, alert_id: int) -> bool:
        """-> whether the rule existed."""
        found = bool(self.ray.get(self.coordinator.remove_alert.remote(int(alert_id))))
        if found:
            self._push_alerts()
        return found

    def alerts(self) -> list[tuple[dict[str, Any], dict[str, int]]]:
        """Every rule with its counts (segments stored / checked / fired / skipped), summed over
        the encoder actors that answer in time (counts are kept by the actors since they started)."""
        _, rules = self.ray.get(self.coordinator.alerts.remote())
        slots = sorted(self.encoders)
        refs = [self.encoders[s].alert_counts.remote() for s in slots]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=STATUS_TIMEOUT)
        totals: dict[int, dict[str, int]] = {r["id"]: {"stored": 0, "checked": 0, "fired": 0, "skipped": 0}
                                             for r in rules}  # fmt: skip
        for ref in ready:
            try:
                counts = self.ray.get(ref)
            except self.ray.exceptions.RayError:
                continue
            for rid, c in counts.items():
                if rid in totals:
                    for name, value in c.items():
                        totals[rid][name] += value
        return [(r, totals[r["id"]]) for r in rules]

    def events(self, after: int = 0, limit: int = 1000) -> dict[str, Any]:
        """The coordinator's recent events: {"epoch", "last", "events": [(seq, type, data)]} after
        ``after``, at most ``limit`` (the oldest first)."""
        return self.ray.get(self.coordinator.events.remote(int(after), int(limit)), timeout=STATUS_TIMEOUT)

    def thumbnail(self, gid: int) -> Path | None:
        """The key-frame JPEG of segment ``gid`` (a global id), written by its encoder actor into the
        shard (the service's layout); None when no shard has that number or no file is there."""
        from agents.service.streams import thumbnail_path

        if gid < 0:
            return None
        shard_no, sid = local_id(gid)
        shards = {s.shard_no: s for s in self.ray.get(self.coordinator.shards.remote())}
        if shard_no not in shards:
            return None
        path = thumbnail_path(shards[shard_no].path, sid)
        return path if path.is_file() else None

    def encoder_info(self) -> dict[int, dict[str, Any]]:
        """slot -> {pid, node, starts, streams} of every encoder actor."""
        slots = sorted(self.encoders)
        return dict(zip(slots, self.ray.get([self.encoders[s].info.remote() for s in slots])))

    def slot_of(self, stream: str) -> int:
        """The slot of the encoder actor ``stream`` is assigned to."""
        records = self._records()
        if stream not in records:
            raise ConfigError(f"no stream {stream!r} in this cluster; 'streamvid cluster status' lists them")
        return int(records[stream]["slot"])

    def shutdown(self, *, stop_ray: bool | None = None) -> None:
        """Stop every stream (open segments stored, shards released) and end the actors; the Ray
        session too when this object started it (``stop_ray`` overrides)."""
        refs = [e.close.remote() for e in self.encoders.values()]
        try:
            self.ray.get(refs, timeout=120)
        except self.ray.exceptions.RayError as err:
            log.warning("an encoder actor did not close cleanly: %s", err)
        for actor in [*self.encoders.values(), self.answerer, self.coordinator]:
            self.ray.kill(actor, no_restart=True)
        self.encoders = {}
        if stop_ray if stop_ray is not None else self._own_ray:
            self.ray.shutdown()
