"""Reading memory shards: what a shard-search task runs, and :class:`ShardedMemory`, the read API of
one :class:`~memory.TokenMemory` over many shards, so :class:`~agents.qa.VideoQA` answers from a
cluster unchanged.

Each stream's shard is a whole memory directory (SQLite manifest + safetensors shards + FAISS
index) with one writer, its encoder actor. Readers open it read-only on the shared filesystem;
a process keeps its readers open and takes a new snapshot only when the manifest's files changed
(their size and mtime), so a fan-out over many shards costs one FAISS search per shard, not one
open. Segment ids leave this module as global ids (:func:`~agents.cluster.plan.global_id`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.cluster.plan import ShardSummary, global_id, local_id, merge_hits
from memory import Hit, SegmentInfo, TokenMemory
from memory.errors import MemoryNotFoundError
from streamvid.errors import StreamvidError
from streamvid.types import CompressedSegment

__all__ = [
    "ShardRef",
    "ShardUnavailableError",
    "ShardedMemory",
    "describe_shard",
    "get_segments",
    "search_shard",
    "summarize_shard",
    "timeline_shard",
]

log = logging.getLogger(__name__)


class ShardUnavailableError(StreamvidError):
    """A shard's directory cannot be read (its node or mount is gone)."""


@dataclass(frozen=True)
class ShardRef:
    """Where a stream's shard lives: its stream id, shard number (for global ids), directory, and
    the Ray node of its writer (None: unknown). Reads run on the writer's node when it is known:
    SQLite's WAL is coherent between processes of one host only, so a shard is never read over
    the network filesystem while another host writes it (docs/scaling.md)."""

    stream: str
    shard_no: int
    path: str
    node: str | None = None


_READERS: dict[str, tuple[tuple[int, ...], TokenMemory]] = {}
_READERS_LOCK = threading.Lock()


def _change_token(root: Path) -> tuple[int, ...]:
    """Sizes and mtimes of the manifest and its WAL: they change with every commit of the writer."""
    out: list[int] = []
    for name in ("manifest.sqlite", "manifest.sqlite-wal"):
        try:
            st = os.stat(root / name)
            out += [st.st_size, st.st_mtime_ns]
        except FileNotFoundError:
            out += [-1, -1]
    return tuple(out)


def _reader(path: str) -> TokenMemory | None:
    """A read-only view of the shard at ``path`` as it is now; None when it holds no segments
    yet; ShardUnavailableError when the directory is gone."""
    root = Path(path)
    if not root.is_dir():
        raise ShardUnavailableError(f"{root} is not reachable from this node")
    token = _change_token(root)
    with _READERS_LOCK:
        cached = _READERS.get(path)
        if cached is not None and cached[0] == token:
            return cached[1]
        if cached is not None:
            cached[1].close()
            del _READERS[path]
        try:
            reader = TokenMemory(root, read_only=True, use_gpu_index=False)
        except MemoryNotFoundError:
            if not root.is_dir():
                raise ShardUnavailableError(f"{root} is not reachable from this node") from None
            return None  # the writer has not stored a segment yet
        _READERS[path] = (token, reader)
        return reader


def _hits(reader: TokenMemory, shard: ShardRef, hits: list[Hit]) -> list[tuple[float, SegmentInfo]]:
    return [(h.score, replace(h.segment, id=global_id(shard.shard_no, h.segment.id))) for h in hits]


def search_shard(
    shard: ShardRef,
    query: np.ndarray,
    k: int,
    time_range: tuple[float, float] | None,
    streams: Sequence[str] | None,
) -> list[tuple[float, SegmentInfo]]:
    """The shard's top ``k`` for one query vector [d], best first, with global ids."""
    reader = _reader(shard.path)
    if reader is None:
        return []
    (hits,) = reader.search(np.asarray(query, dtype=np.float32).reshape(1, -1), k=k, time_range=time_range,
                            streams=streams)  # fmt: skip
    return _hits(reader, shard, hits)


def cover_shard(
    shard: ShardRef, query: np.ndarray, count: int, time_range: tuple[float, float] | None
) -> list[tuple[float, SegmentInfo]]:
    """The shard's ``count`` segments evenly spaced in time (TokenMemory.cover), with global ids."""
    reader = _reader(shard.path)
    if reader is None:
        return []
    (hits,) = reader.cover(np.asarray(query, dtype=np.float32).reshape(1, -1), count, time_range, [shard.stream])
    return _hits(reader, shard, hits)


def timeline_shard(shard: ShardRef, start: float | None, end: float | None) -> list[SegmentInfo]:
    reader = _reader(shard.path)
    if reader is None:
        return []
    return [replace(s, id=global_id(shard.shard_no, s.id)) for s in reader.timeline(shard.stream, start, end)]


@dataclass(frozen=True)
class ShardFacts:
    """The cheap facts of a shard a question needs first (counts, "now", the newest segments)."""

    streams: list[str]
    live: int
    evicted: int
    end_time: float | None
    newest: SegmentInfo | None
    newest_live: SegmentInfo | None
    tokens_held: int
    token_cap: int | None


def describe_shard(shard: ShardRef) -> ShardFacts:
    reader = _reader(shard.path)
    if reader is None:
        return ShardFacts([], 0, 0, None, None, None, 0, None)
    live, evicted = reader.segment_counts()

    def gid(info: SegmentInfo | None) -> SegmentInfo | None:
        return None if info is None else replace(info, id=global_id(shard.shard_no, info.id))

    return ShardFacts(
        streams=reader.streams(),
        live=live,
        evicted=evicted,
        end_time=reader.end_time(),
        newest=gid(reader.newest(shard.stream)),
        newest_live=gid(reader.newest(shard.stream, live_only=True)),
        tokens_held=reader.tokens_held,
        token_cap=reader.token_cap,
    )


def get_segments(shard: ShardRef, ids: Sequence[int]) -> list[CompressedSegment]:
    """The stored segments of ``ids`` (the shard's own ids), on CPU."""
    reader = _reader(shard.path)
    if reader is None:
        raise ShardUnavailableError(f"{shard.path} holds no segments")
    return reader.get(ids)


def summarize_shard(shard: ShardRef) -> ShardSummary:
    """The CABA statistics of the shard's live segments, for the budget coordinator."""
    reader = _reader(shard.path)
    empty = torch.zeros(0)
    if reader is None or reader.dim is None:
        return ShardSummary(shard.stream, torch.zeros(0, 1), empty.long(), empty.double(), empty.long(), None, 0.0)
    live = reader.manifest.live_table(reader.dim)
    raw_sum, raw_len = reader.manifest.meta("global_sum"), reader.manifest.meta("global_len")
    global_sum = None if raw_sum is None else torch.from_numpy(np.frombuffer(raw_sum, dtype=np.float64).copy())
    return ShardSummary(
        stream=shard.stream,
        means=live.means,
        lengths=torch.tensor(live.lengths, dtype=torch.long),
        richness=torch.tensor(live.richness, dtype=torch.float64),
        tokens=torch.tensor(live.tokens, dtype=torch.long),
        global_sum=global_sum,
        global_len=float(raw_len or 0.0),
    )


# run(function, [args tuple per shard]) -> one result or the exception per shard, in order
FanOut = Callable[[Callable[..., Any], Sequence[tuple[Any, ...]]], list[Any]]


def local_fan_out(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run the per-shard calls in this process, one after another (tests, one machine)."""
    out: list[Any] = []
    for args in calls:
        try:
            out.append(fn(*args))
        except Exception as err:  # noqa: BLE001 - a shard's failure is reported, not raised
            out.append(err)
    return out


class ShardedMemory:
    """The read side of :class:`~memory.TokenMemory` (what :class:`~agents.qa.VideoQA` calls: search,
    get, timeline, streams, segment_counts, newest, end_time) over the shards of many streams.

    search fans out to every shard (``fan_out``: Ray tasks in a cluster) and merges the hits
    globally (:func:`~agents.cluster.plan.merge_hits`); ids are global. A shard that cannot be
    read is left out and recorded in :attr:`unavailable` ({stream: reason}), so the answer can
    say so instead of failing. The shards' cheap facts are read once, at construction.
    """

    read_only = True

    def __init__(self, shards: Sequence[ShardRef], fan_out: FanOut = local_fan_out) -> None:
        self.shards = {s.stream: s for s in shards}
        self.by_no = {s.shard_no: s for s in shards}
        self.fan_out = fan_out
        self.unavailable: dict[str, str] = {}
        self.facts: dict[str, ShardFacts] = {}
        for shard, result in zip(shards, fan_out(describe_shard, [(s,) for s in shards])):
            if isinstance(result, BaseException):
                self._lost(shard.stream, result)
            else:
                self.facts[shard.stream] = result

    def _lost(self, stream: str, err: BaseException) -> None:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.warning("shard of stream %s unavailable: %s", stream, reason)
        self.unavailable.setdefault(stream, reason)

    def _chosen(self, streams: Sequence[str] | None) -> list[ShardRef]:
        names = self.facts if streams is None else [s for s in streams if s in self.facts]
        return [self.shards[s] for s in names]

    # -- the TokenMemory read API ---------------------------------------------------------------

    def streams(self) -> list[str]:
        return sorted({name for f in self.facts.values() for name in f.streams})

    def segment_counts(self) -> tuple[int, int]:
        return sum(f.live for f in self.facts.values()), sum(f.evicted for f in self.facts.values())

    @property
    def tokens_held(self) -> int:
        return sum(f.tokens_held for f in self.facts.values())

    def end_time(self, streams: Sequence[str] | None = None) -> float | None:
        ends = [self.facts[s.stream].end_time for s in self._chosen(streams)]
        ends = [e for e in ends if e is not None]
        return max(ends) if ends else None

    def newest(self, stream: str, *, live_only: bool = False) -> SegmentInfo | None:
        f = self.facts.get(stream)
        if f is None:
            return None
        return f.newest_live if live_only else f.newest

    def timeline(
        self, stream: str | None = None, start: float | None = None, end: float | None = None
    ) -> list[SegmentInfo]:
        chosen = self._chosen(None if stream is None else [stream])
        out: list[SegmentInfo] = []
        for shard, result in zip(chosen, self.fan_out(timeline_shard, [(s, start, end) for s in chosen])):
            if isinstance(result, BaseException):
                self._lost(shard.stream, result)
            else:
                out += result
        out.sort(key=lambda s: (s.start, s.stream))
        return out

    def search(
        self,
        queries: torch.Tensor | np.ndarray,
        k: int = 5,
        time_range: tuple[float, float] | None = None,
        streams: Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        q = np.asarray(
            queries.detach().cpu().float() if isinstance(queries, torch.Tensor) else queries, dtype=np.float32
        )
        q = q.reshape(1, -1) if q.ndim == 1 else q
        chosen = [s for s in self._chosen(streams) if self.facts[s.stream].live + self.facts[s.stream].evicted]
        out: list[list[Hit]] = []
        for row in q:
            calls = [(s, row, k, time_range, None if streams is None else [s.stream]) for s in chosen]
            per_shard = []
            for shard, result in zip(chosen, self.fan_out(search_shard, calls)):
                if isinstance(result, BaseException):
                    self._lost(shard.stream, result)
                else:
                    per_shard.append(result)
            out.append([Hit(score, info) for score, info in merge_hits(per_shard, k)])
        return out

    def cover(
        self,
        queries: torch.Tensor | np.ndarray,
        count: int,
        time_range: tuple[float, float] | None = None,
        streams: Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        """TokenMemory.cover over every shard: each shard's even spread, then ``count`` of the
        union evenly spaced in time."""
        q = np.asarray(
            queries.detach().cpu().float() if isinstance(queries, torch.Tensor) else queries, dtype=np.float32
        )
        q = q.reshape(1, -1) if q.ndim == 1 else q
        chosen = [s for s in self._chosen(streams) if self.facts[s.stream].live + self.facts[s.stream].evicted]
        out: list[list[Hit]] = []
        for row in q:
            union: list[tuple[float, SegmentInfo]] = []
            calls = [(s, row, count, time_range) for s in chosen]
            for shard, result in zip(chosen, self.fan_out(cover_shard, calls)):
                if isinstance(result, BaseException):
                    self._lost(shard.stream, result)
                else:
                    union += result
            union.sort(key=lambda p: (p[1].start, p[1].id))
            if len(union) > count:
                union = [union[int((j + 0.5) * len(union) / count)] for j in range(count)]
            out.append([Hit(score, info) for score, info in union])
        return out

    def get(self, ids: Sequence[int], device: Any = None) -> list[CompressedSegment]:
        """Segments by global id, in the order asked (on CPU; the model moves them)."""
        wanted = [int(i) for i in ids]
        groups: dict[int, list[int]] = {}
        for gid in wanted:
            no, sid = local_id(gid)
            groups.setdefault(no, []).append(sid)
        nos = list(groups)
        calls = [(self.by_no[no], groups[no]) for no in nos]
        found: dict[int, CompressedSegment] = {}
        for no, result in zip(nos, self.fan_out(get_segments, calls)):
            if isinstance(result, BaseException):
                raise result
            for sid, seg in zip(groups[no], result):
                found[global_id(no, sid)] = seg
        return [found[g] for g in wanted]
