"""TokenMemory: compressed segments under a global cap, FAISS-indexed, crash safe.

Layout of a memory directory::

    manifest.sqlite      segment metadata, keys, CABA statistics (SQLite, WAL)
    shards/NNNNN/*.safetensors   tokens + provenance, one file per segment version
    index.<factory>.faiss  the key index (a cache of the keys in the manifest)

Write order (one writer): new shard files -> one manifest transaction -> index
update -> old shard files deleted. A crash (kill -9) at any point leaves the
manifest pointing at complete files; unreferenced files are swept and the index
is repaired from the manifest when the memory reopens.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from memory.config import PROVENANCE_BYTES, MemoryConfig
from memory.errors import CorruptShardError, MemoryStoreError, SegmentEvictedError, UnknownSegmentError
from memory.index import KeyIndex
from memory.rebalance import plan_rebalance, recency_factors
from memory.rwlock import RWLock
from memory.shards import ShardStore, _sizes
from streamvid.compress.remerge import remerge
from streamvid.errors import ConfigError, ShapeError
from streamvid.types import CompressedSegment

__all__ = ["TokenMemory", "SegmentInfo", "Hit", "MemoryStats", "RebalanceReport"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    seg_index INTEGER NOT NULL,
    start REAL NOT NULL,
    "end" REAL NOT NULL,
    frame_count INTEGER NOT NULL,
    grid_h INTEGER NOT NULL,
    grid_w INTEGER NOT NULL,
    frame_offset INTEGER NOT NULL,
    method TEXT NOT NULL,
    richness REAL NOT NULL,
    uniqueness REAL NOT NULL,
    original_tokens INTEGER NOT NULL,
    n_tokens INTEGER NOT NULL,
    status TEXT NOT NULL,
    shard TEXT,
    version INTEGER NOT NULL,
    nbytes INTEGER NOT NULL,
    mean_token BLOB NOT NULL,
    key BLOB NOT NULL,
    added REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS segments_time ON segments(stream, start);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, at REAL, kind TEXT, detail TEXT);
"""

_INFO_COLS = 'id, stream, seg_index, start, "end", frame_count, n_tokens, original_tokens, status, method'


@dataclass(frozen=True)
class SegmentInfo:
    """What the manifest knows of a segment (no tensors). status: 'live' or 'evicted'."""

    id: int
    stream: str
    segment_index: int
    start: float
    end: float
    frame_count: int
    tokens: int
    original_tokens: int
    status: str
    method: str

    @property
    def evicted(self) -> bool:
        return self.status == "evicted"


@dataclass(frozen=True)
class Hit:
    """A search result: the segment and its similarity score (higher is closer for 'ip')."""

    score: float
    segment: SegmentInfo


@dataclass(frozen=True)
class RebalanceReport:
    at: float
    seconds: float
    tokens_before: int
    tokens_after: int
    cap: int
    touched: int
    evicted: int


@dataclass(frozen=True)
class MemoryStats:
    """tokens_held <= token_cap always. bytes_held: the token payload (vectors in the
    stored dtype + 40 bytes of provenance per token), the quantity ``cap_bytes``
    bounds. disk_bytes: every file of the memory, including the manifest, whose
    per-segment keys and statistics are kept for evicted segments too."""

    tokens_held: int
    token_cap: int | None
    bytes_held: int
    disk_bytes: int
    segments_live: int
    segments_evicted: int
    streams: list[str]
    last_rebalance: RebalanceReport | None


class _LiveSet:
    """CABA statistics of the live segments (rows in id order), in buffers that grow by
    doubling, so appending is O(D) amortized and only a rebalance touches every row."""

    def __init__(self, dim: int) -> None:
        self.ids: list[int] = []
        self._means = torch.zeros(64, dim)
        self.lengths: list[int] = []
        self.richness: list[float] = []
        self.tokens: list[int] = []
        self.ends: list[float] = []
        self.streams: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def means(self) -> torch.Tensor:
        """[K, D] view of the live rows."""
        return self._means[: len(self.ids)]

    def append_many(self, rows: list[tuple[int, torch.Tensor, int, float, int, float, str]]) -> None:
        if not rows:
            return
        k, need = len(self.ids), len(self.ids) + len(rows)
        if need > self._means.shape[0]:
            grown = torch.zeros(max(need, 2 * self._means.shape[0]), self._means.shape[1])
            grown[:k] = self._means[:k]
            self._means = grown
        self._means[k:need] = torch.stack([r[1] for r in rows])
        for sid, _, length, rich, n, end, stream in rows:
            self.ids.append(sid)
            self.lengths.append(length)
            self.richness.append(rich)
            self.tokens.append(n)
            self.ends.append(end)
            self.streams.append(stream)

    def keep(self, mask: list[bool]) -> None:
        kept = self.means[torch.tensor(mask, dtype=torch.bool)]
        self._means[: kept.shape[0]] = kept
        for name in ("ids", "lengths", "richness", "tokens", "ends", "streams"):
            setattr(self, name, [v for v, m in zip(getattr(self, name), mask) if m])


class _Catalog:
    """Time range and stream of every segment (live or evicted), by id, for search filters."""

    def __init__(self) -> None:
        self.start = np.zeros(0)
        self.end = np.zeros(0)
        self.stream = np.zeros(0, dtype=np.int32)
        self.present = np.zeros(0, dtype=bool)
        self.codes: dict[str, int] = {}

    def add(self, ids: Sequence[int], starts: Sequence[float], ends: Sequence[float], streams: Sequence[str]) -> None:
        if not ids:
            return
        need = max(ids) + 1
        if need > len(self.present):
            size = max(need, 2 * len(self.present), 1024)
            for name, fill in (("start", 0.0), ("end", 0.0), ("stream", -1), ("present", False)):
                old = getattr(self, name)
                grown = np.full(size, fill, dtype=old.dtype)
                grown[: len(old)] = old
                setattr(self, name, grown)
        idx = np.asarray(ids)
        self.start[idx] = starts
        self.end[idx] = ends
        self.stream[idx] = [self.codes.setdefault(s, len(self.codes)) for s in streams]
        self.present[idx] = True

    def mask(self, time_range: tuple[float, float] | None, streams: Sequence[str] | None) -> np.ndarray:
        """bool [max id + 1]: segments overlapping ``time_range`` in ``streams``."""
        m = self.present.copy()
        if time_range is not None:
            m &= (self.end >= time_range[0]) & (self.start <= time_range[1])
        if streams is not None:
            codes = [self.codes[s] for s in streams if s in self.codes]
            m &= np.isin(self.stream, codes)
        return m


class TokenMemory:
    """Open or create a token memory at ``path``.

    >>> mem = TokenMemory("runs/cam1", cap_tokens=50_000)
    >>> sid = mem.add(compressed_segment, key)          # key: [d] retrieval vector
    >>> hits = mem.search(query_vectors, k=5, time_range=(0, 600), streams=["cam1"])
    >>> segments = mem.get([h.segment.id for h in hits[0] if not h.segment.evicted])

    Config comes from keyword arguments (see :class:`MemoryConfig`); reopening an
    existing memory without them uses the stored config, and a new cap given at
    reopen takes effect at once. One writer and many readers may share the object
    across threads.
    """

    def __init__(self, path: str | Path, config: MemoryConfig | None = None, **cfg: Any) -> None:
        self.root = Path(path)
        self.root.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = RWLock()
        self._write_mutex = threading.Lock()
        self.shards = ShardStore(self.root)
        self._db().conn.executescript(_SCHEMA)
        stored = self._meta("config")
        try:
            if config is None:
                base = json.loads(stored) if stored else {}
                config = MemoryConfig(**{**base, **cfg})
        except ValueError as err:
            raise ConfigError(f"bad memory options: {err}") from None
        self.config = config
        self._set_meta("config", config.model_dump_json())
        self.dtype = torch.float16 if config.dtype == "float16" else torch.bfloat16
        self.dim: int | None = self._meta_int("dim")
        self.key_dim: int | None = self._meta_int("key_dim")
        self._index: KeyIndex | None = None
        self._live: _LiveSet | None = None
        self._catalog = _Catalog()
        self._adds_since_save = 0
        self._closed = False
        self._recover()

    # -- plumbing ----------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        """A connection for this thread (SQLite connections are not shared between threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.root / "manifest.sqlite", timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return _Tx(conn)

    def _meta(self, key: str) -> Any:
        row = self._db().conn.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _meta_int(self, key: str) -> int | None:
        v = self._meta(key)
        return None if v is None else int(v)

    def _set_meta(self, key: str, value: Any, conn: sqlite3.Connection | None = None) -> None:
        (conn or self._db().conn).execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))

    @property
    def token_cap(self) -> int | None:
        return None if self.dim is None else self.config.token_cap(self.dim)

    def _index_path(self) -> Path:
        """One file per factory string, so a memory reopened with another factory rebuilds."""
        slug = "".join(c if c.isalnum() else "_" for c in self.config.index_factory)
        return self.root / f"index.{slug}.faiss"

    # -- open / recover ------------------------------------------------------------

    def _recover(self) -> None:
        conn = self._db().conn
        referenced = {r[0] for r in conn.execute("SELECT shard FROM segments WHERE shard IS NOT NULL")}
        swept = self.shards.sweep(referenced)
        if swept:
            log.info("%s: removed %d unreferenced shard file(s) left by an interrupted write", self.root, swept)
        row = conn.execute("SELECT COALESCE(MAX(id), -1) FROM segments").fetchone()
        self._next_id = int(row[0]) + 1
        rows = conn.execute('SELECT id, start, "end", stream FROM segments').fetchall()
        if rows:
            self._catalog.add(*zip(*rows))
        if self.dim is None:
            return
        self._live = _LiveSet(self.dim)
        rows = conn.execute(
            'SELECT id, mean_token, frame_count, richness, n_tokens, "end", stream FROM segments '
            "WHERE status = 'live' ORDER BY id"
        ).fetchall()
        self._live.append_many(
            [
                (r[0], torch.from_numpy(np.frombuffer(r[1], dtype=np.float32).copy()), r[2], r[3], r[4], r[5], r[6])
                for r in rows
            ]
        )
        self._global_sum = torch.from_numpy(np.frombuffer(self._meta("global_sum"), dtype=np.float64).copy())
        self._global_len = float(self._meta("global_len"))
        self._open_index()
        if sum(self._live.tokens) > (self.token_cap or 0):
            with self._write_mutex:
                self._rebalance_locked(pending=None)

    def _open_index(self) -> None:
        assert self.key_dim is not None
        cfg = self.config
        index = KeyIndex.load(self._index_path(), self.key_dim, cfg.index_factory, cfg.metric, cfg.use_gpu_index)
        conn = self._db().conn
        manifest_ids = np.array([r[0] for r in conn.execute("SELECT id FROM segments ORDER BY id")], dtype=np.int64)
        if index is None:
            index = KeyIndex(self.key_dim, cfg.index_factory, cfg.metric, cfg.use_gpu_index)
            missing = manifest_ids
            log.info("%s: building the key index from %d stored keys", self.root, len(missing))
        else:
            have = index.ids()
            extra = np.setdiff1d(have, manifest_ids)
            if len(extra) and not index.remove(extra):  # this index type cannot remove: rebuild
                index = KeyIndex(self.key_dim, cfg.index_factory, cfg.metric, cfg.use_gpu_index)
                have = np.zeros(0, dtype=np.int64)
            missing = np.setdiff1d(manifest_ids, have)
            if len(missing) or len(extra):
                log.info("%s: index repaired (+%d, -%d keys)", self.root, len(missing), len(extra))
        for chunk in np.array_split(missing, max(1, len(missing) // 4096)):
            if len(chunk) == 0:
                continue
            q = ",".join("?" * len(chunk))
            rows = conn.execute(f"SELECT id, key FROM segments WHERE id IN ({q})", chunk.tolist()).fetchall()
            index.add(
                np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]),
                np.array([r[0] for r in rows], dtype=np.int64),
            )
        self._index = index
        if len(missing):
            index.save(self._index_path())

    # -- writing -------------------------------------------------------------------

    def add(self, segment: CompressedSegment, key: torch.Tensor | np.ndarray | Sequence[float]) -> int:
        """Store ``segment`` with its retrieval ``key`` [d]; returns the segment id.

        If the memory would exceed its cap, budgets are rebalanced first (see
        :func:`memory.rebalance.plan_rebalance`), so the cap holds after every add.
        """
        if self._closed:
            raise MemoryStoreError("this TokenMemory is closed; open it again")
        if not isinstance(segment, CompressedSegment):
            raise ShapeError(f"add() takes a CompressedSegment, got {type(segment).__name__}")
        key_np = np.asarray(key.detach().cpu().float() if isinstance(key, torch.Tensor) else key, dtype=np.float32)
        key_np = key_np.reshape(-1)
        if not np.isfinite(key_np).all() or not torch.isfinite(segment.tokens.float()).all():
            raise ShapeError("the segment's tokens and key must be finite (no NaN/inf)")
        with self._write_mutex:
            self._ensure_dims(segment.dim, key_np.shape[0])
            sid = self._next_id
            self._next_id += 1
            self._rebalance_locked(pending=(sid, segment, key_np))
            self._adds_since_save += 1
            if self._adds_since_save >= self.config.index_save_every:
                self._save_index()
        return sid

    def _ensure_dims(self, dim: int, key_dim: int) -> None:
        if self.dim is None:
            self.dim, self.key_dim = dim, key_dim
            with self._db() as db:
                self._set_meta("dim", dim, db.conn)
                self._set_meta("key_dim", key_dim, db.conn)
                self._set_meta("global_sum", np.zeros(dim, dtype=np.float64).tobytes(), db.conn)
                self._set_meta("global_len", 0.0, db.conn)
            self._global_sum = torch.zeros(dim, dtype=torch.float64)
            self._global_len = 0.0
            self._live = _LiveSet(dim)
            self._index = KeyIndex(key_dim, self.config.index_factory, self.config.metric, self.config.use_gpu_index)
            return
        if dim != self.dim:
            raise ShapeError(f"this memory holds tokens of width {self.dim}; got {dim}. Use one memory per model")
        if key_dim != self.key_dim:
            raise ShapeError(f"this memory's keys have {self.key_dim} dims; got {key_dim}. Use the same embedder")

    def rebalance(self) -> RebalanceReport | None:
        """Enforce the cap now (normally automatic on add). Returns what was done."""
        with self._write_mutex:
            if self._live is None:
                return None
            return self._rebalance_locked(pending=None)

    def _rebalance_locked(self, pending: tuple[int, CompressedSegment, np.ndarray] | None) -> RebalanceReport | None:
        """Add ``pending`` (if any) and bring the memory under the cap, crash-safely."""
        assert self._live is not None and self.dim is not None
        started = time.perf_counter()
        live = self._live
        cap = self.config.token_cap(self.dim)
        if pending is not None and sum(live.tokens) + pending[1].budget <= cap:
            self._add_within_cap(*pending)  # O(1): nothing else changes
            return None
        ids = list(live.ids)
        means, lengths, rich = live.means, list(live.lengths), list(live.richness)
        current, ends, streams = list(live.tokens), list(live.ends), list(live.streams)
        global_sum, global_len = self._global_sum.clone(), self._global_len
        if pending is not None:
            sid, seg, _ = pending
            mean = seg.mean_token.float().cpu()
            ids.append(sid)
            means = torch.cat([means, mean[None]])
            lengths.append(seg.frame_count)
            rich.append(seg.richness)
            current.append(seg.budget)
            ends.append(seg.end_time)
            streams.append(seg.stream_id)
            global_sum += seg.frame_count * mean.double()
            global_len += seg.frame_count
        total = sum(current)
        targets = list(current)
        evict = [False] * len(ids)
        if total > cap:
            recency = None
            if self.config.recency_half_life_s is not None:
                end_t = torch.tensor(ends, dtype=torch.float64)
                newest = {s: max(e for e, t in zip(ends, streams) if t == s) for s in set(streams)}
                now = torch.tensor([newest[s] for s in streams], dtype=torch.float64)
                recency = recency_factors(end_t, now, self.config.recency_half_life_s)
            plan = plan_rebalance(
                means,
                torch.tensor(lengths),
                torch.tensor(rich),
                torch.tensor(current),
                cap,
                global_mean=global_sum / max(global_len, 1e-12),
                tau=self.config.tau,
                alpha=self.config.alpha,
                beta=self.config.beta,
                recency=recency,
                hysteresis=self.config.hysteresis,
            )
            targets, evict = plan.targets.tolist(), plan.evict.tolist()
        # new tensors first (files nobody references yet)
        conn = self._db().conn
        stored = (
            {
                r[0]: r
                for r in conn.execute(
                    f"SELECT id, shard, version FROM segments WHERE id IN ({','.join('?' * len(ids))})", ids
                )
            }
            if ids
            else {}
        )
        rewrites: dict[int, tuple[CompressedSegment, str, int, int]] = {}  # id -> (seg, shard, version, bytes)
        old_files: list[str] = []
        for i, sid in enumerate(ids):
            is_new = pending is not None and sid == pending[0]
            if evict[i]:
                if not is_new:
                    old_files.append(stored[sid][1])
                continue
            if targets[i] >= current[i] and not is_new:
                continue
            if is_new:
                seg, version = pending[1], 0
            else:
                seg, version = self._load(sid, stored[sid][1]), stored[sid][2] + 1
                old_files.append(stored[sid][1])
            seg = remerge(seg, targets[i])
            name, nbytes = self.shards.write(sid, version, seg, self.dtype)
            rewrites[sid] = (seg, name, version, nbytes)
        evicted_ids = [sid for sid, e in zip(ids, evict) if e]
        touched = [sid for sid in rewrites if pending is None or sid != pending[0]]
        report = None
        if total > cap:
            report = RebalanceReport(
                at=time.time(),
                seconds=time.perf_counter() - started,
                tokens_before=total,
                tokens_after=sum(t for t, e in zip(targets, evict) if not e),
                cap=cap,
                touched=len(touched),
                evicted=len(evicted_ids),
            )
        # one transaction makes it all visible; readers see before or after, never between
        with self._lock.write(), self._db() as db:
            if pending is not None:
                sid, seg, key = pending
                new_status = "evicted" if sid in evicted_ids else "live"
                _, name, version, nbytes = rewrites.get(sid, (None, None, 0, 0))
                n_tokens = rewrites[sid][0].budget if sid in rewrites else 0
                self._insert(db.conn, sid, seg, key, new_status, name, version, nbytes, n_tokens)
                self._set_meta("global_sum", global_sum.numpy().tobytes(), db.conn)
                self._set_meta("global_len", global_len, db.conn)
            for sid in touched:
                seg, name, version, nbytes = rewrites[sid]
                db.conn.execute(
                    "UPDATE segments SET n_tokens = ?, shard = ?, version = ?, nbytes = ? WHERE id = ?",
                    (seg.budget, name, version, nbytes, sid),
                )
            for sid in evicted_ids:
                if pending is None or sid != pending[0]:
                    db.conn.execute(
                        "UPDATE segments SET status = 'evicted', n_tokens = 0, shard = NULL, nbytes = 0 WHERE id = ?",
                        (sid,),
                    )
            if report is not None:
                db.conn.execute(
                    "INSERT INTO events (at, kind, detail) VALUES (?, 'rebalance', ?)",
                    (report.at, json.dumps({**report.__dict__, "evicted_ids": evicted_ids[:1000]})),
                )
            # in-memory state follows the committed manifest
            if pending is not None:
                self._index.add(pending[2][None], np.array([pending[0]], dtype=np.int64))
                self._catalog.add([pending[0]], [pending[1].start_time], [pending[1].end_time], [pending[1].stream_id])
                self._global_sum, self._global_len = global_sum, global_len
            keep_mask = [not e for e in evict]
            n_old = len(live)
            new_tokens = [rewrites[s][0].budget if s in rewrites else c for s, c in zip(ids, current)]
            live.tokens = new_tokens[:n_old]
            live.keep(keep_mask[:n_old])
            if pending is not None and not evict[-1]:
                sid, seg, _ = pending
                live.append_many(
                    [
                        (
                            sid,
                            seg.mean_token.float().cpu(),
                            seg.frame_count,
                            seg.richness,
                            new_tokens[-1],
                            seg.end_time,
                            seg.stream_id,
                        )
                    ]
                )
        for name in old_files:
            self.shards.delete(name)
        if report is not None:
            log.info(
                "rebalance: %d -> %d tokens (cap %d), %d re-merged, %d evicted in %.3f s",
                report.tokens_before,
                report.tokens_after,
                cap,
                report.touched,
                report.evicted,
                report.seconds,
            )
        return report

    def _add_within_cap(self, sid: int, seg: CompressedSegment, key: np.ndarray) -> None:
        """Store a segment when the cap is not reached: one shard, one insert, no rebalance."""
        name, nbytes = self.shards.write(sid, 0, seg, self.dtype)
        mean = seg.mean_token.float().cpu()
        global_sum = self._global_sum + seg.frame_count * mean.double()
        global_len = self._global_len + seg.frame_count
        with self._lock.write(), self._db() as db:
            self._insert(db.conn, sid, seg, key, "live", name, 0, nbytes, seg.budget)
            self._set_meta("global_sum", global_sum.numpy().tobytes(), db.conn)
            self._set_meta("global_len", global_len, db.conn)
            self._index.add(key[None], np.array([sid], dtype=np.int64))
            self._catalog.add([sid], [seg.start_time], [seg.end_time], [seg.stream_id])
            self._global_sum, self._global_len = global_sum, global_len
            self._live.append_many(
                [(sid, mean, seg.frame_count, seg.richness, seg.budget, seg.end_time, seg.stream_id)]
            )

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        sid: int,
        seg: CompressedSegment,
        key: np.ndarray,
        status: str,
        shard: str | None,
        version: int,
        nbytes: int,
        n_tokens: int,
    ) -> None:
        conn.execute(
            "INSERT INTO segments VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                sid,
                seg.stream_id,
                seg.segment_index,
                seg.start_time,
                seg.end_time,
                seg.frame_count,
                seg.grid_size[0],
                seg.grid_size[1],
                seg.frame_offset,
                seg.method,
                seg.richness,
                seg.uniqueness,
                seg.original_tokens,
                n_tokens,
                status,
                shard,
                version,
                nbytes,
                seg.mean_token.float().cpu().numpy().tobytes(),
                key.tobytes(),
                time.time(),
            ),
        )

    def _save_index(self) -> None:
        if self._index is not None:
            with self._lock.read():
                self._index.save(self._index_path())
        self._adds_since_save = 0

    # -- reading -------------------------------------------------------------------

    def _load(self, sid: int, shard: str) -> CompressedSegment:
        row = (
            self._db()
            .conn.execute(
                'SELECT stream, seg_index, start, "end", frame_count, grid_h, grid_w, frame_offset, method, '
                "richness, uniqueness, mean_token FROM segments WHERE id = ?",
                (sid,),
            )
            .fetchone()
        )
        t = self.shards.read(sid, shard)
        try:
            return CompressedSegment(
                tokens=t["tokens"],
                sizes=t["sizes"],
                positions=t["positions"],
                times=t["times"],
                grid_size=(row[5], row[6]),
                frame_count=row[4],
                start_time=row[2],
                end_time=row[3],
                mean_token=torch.from_numpy(np.frombuffer(row[11], dtype=np.float32).copy()),
                richness=row[9],
                uniqueness=row[10],
                stream_id=row[0],
                segment_index=row[1],
                frame_offset=row[7],
                method=row[8],
            )
        except ShapeError as err:
            raise CorruptShardError(f"segment {sid}: shard {shard} holds inconsistent tensors ({err})", [sid]) from None

    def get(self, ids: Iterable[int]) -> list[CompressedSegment]:
        """The stored segments, in the order asked. Evicted ids raise SegmentEvictedError,
        unknown ids UnknownSegmentError, an unreadable shard CorruptShardError."""
        ids = [int(i) for i in ids]
        if not ids:
            return []
        with self._lock.read():
            conn = self._db().conn
            rows = {
                r[0]: r
                for r in conn.execute(
                    f'SELECT id, status, shard, start, "end" FROM segments WHERE id IN ({",".join("?" * len(ids))})',
                    ids,
                )
            }
            unknown = [i for i in ids if i not in rows]
            if unknown:
                raise UnknownSegmentError(f"no segment with id(s) {unknown} in {self.root}")
            evicted = [i for i in ids if rows[i][1] == "evicted"]
            if evicted:
                spans = ", ".join(f"{rows[i][3]:.1f}-{rows[i][4]:.1f} s" for i in evicted)
                raise SegmentEvictedError(
                    f"segment(s) {evicted} ({spans}) were evicted under the memory cap; nothing was "
                    "retained for that time. Raise the cap to keep more",
                    evicted,
                )
            return [self._load(i, rows[i][2]) for i in ids]

    def search(
        self,
        queries: torch.Tensor | np.ndarray,
        k: int = 5,
        time_range: tuple[float, float] | None = None,
        streams: Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        """Top-k segments per query. queries: [q, d] (or [d]) -> q lists of Hits, best first.

        Evicted segments can be hits (``hit.segment.evicted``): their keys stay so a
        question about their time learns that nothing was retained. ``time_range``
        keeps segments overlapping [start, end] seconds; ``streams`` keeps those streams.
        """
        q = np.asarray(
            queries.detach().cpu().float() if isinstance(queries, torch.Tensor) else queries, dtype=np.float32
        )
        q = q.reshape(1, -1) if q.ndim == 1 else q
        if self._index is None:
            return [[] for _ in range(q.shape[0])]
        if q.shape[1] != self.key_dim:
            raise ShapeError(f"queries must have {self.key_dim} dims (the memory's keys), got {q.shape[1]}")
        if time_range is not None:
            self._filter(time_range, None)  # validates the range
        with self._lock.read():
            conn = self._db().conn
            allowed = None
            if time_range is not None or streams is not None:
                allowed = self._catalog.mask(time_range, streams)
                if not allowed.any():
                    return [[] for _ in range(q.shape[0])]
            scores, found = self._index.search(q, k, allowed)
            hit_ids = sorted({int(i) for i in found.flatten() if i >= 0})
            infos = {}
            if hit_ids:
                infos = {
                    r[0]: _info(r)
                    for r in conn.execute(
                        f"SELECT {_INFO_COLS} FROM segments WHERE id IN ({','.join('?' * len(hit_ids))})", hit_ids
                    )
                }
        return [
            [Hit(float(s), infos[int(i)]) for s, i in zip(srow, irow) if i >= 0 and int(i) in infos]
            for srow, irow in zip(scores, found)
        ]

    @staticmethod
    def _filter(time_range: tuple[float, float] | None, streams: Sequence[str] | None) -> tuple[str, list[Any]]:
        clauses, args = ["1"], []
        if time_range is not None:
            start, end = time_range
            if end < start:
                raise ConfigError(f"time_range must be (start, end) with start <= end, got {time_range}")
            clauses.append('"end" >= ? AND start <= ?')
            args += [start, end]
        if streams is not None:
            streams = list(streams)
            clauses.append(f"stream IN ({','.join('?' * len(streams))})" if streams else "0")
            args += streams
        return " AND ".join(clauses), args

    def timeline(
        self, stream: str | None = None, start: float | None = None, end: float | None = None
    ) -> list[SegmentInfo]:
        """Segments (live and evicted) overlapping [start, end], in time order."""
        lo = -float("inf") if start is None else start
        hi = float("inf") if end is None else end
        where, args = self._filter((lo, hi), None if stream is None else [stream])
        with self._lock.read():
            rows = (
                self._db()
                .conn.execute(f"SELECT {_INFO_COLS} FROM segments WHERE {where} ORDER BY start, id", args)
                .fetchall()
            )
        return [_info(r) for r in rows]

    def stats(self) -> MemoryStats:
        with self._lock.read():
            conn = self._db().conn
            live = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(n_tokens), 0) FROM segments WHERE status = 'live'"
            ).fetchone()
            evicted = conn.execute("SELECT COUNT(*) FROM segments WHERE status = 'evicted'").fetchone()[0]
            streams = [r[0] for r in conn.execute("SELECT DISTINCT stream FROM segments ORDER BY stream")]
            event = conn.execute(
                "SELECT detail FROM events WHERE kind = 'rebalance' ORDER BY id DESC LIMIT 1"
            ).fetchone()
        last = None
        if event is not None:
            d = json.loads(event[0])
            last = RebalanceReport(**{k: d[k] for k in RebalanceReport.__dataclass_fields__})
        disk = self.shards.disk_bytes() + _sizes(p for p in self.root.iterdir() if p.is_file())
        per_token = 0 if self.dim is None else self.dim * 2 + PROVENANCE_BYTES
        return MemoryStats(
            tokens_held=int(live[1]),
            token_cap=self.token_cap,
            bytes_held=int(live[1]) * per_token,
            disk_bytes=disk,
            segments_live=int(live[0]),
            segments_evicted=int(evicted),
            streams=streams,
            last_rebalance=last,
        )

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Save the index and close this thread's connection. Idempotent."""
        if self._closed:
            return
        with self._write_mutex:
            self._save_index()
            self._closed = True
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __enter__(self) -> TokenMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _info(r: tuple) -> SegmentInfo:
    return SegmentInfo(
        id=r[0],
        stream=r[1],
        segment_index=r[2],
        start=r[3],
        end=r[4],
        frame_count=r[5],
        tokens=r[6],
        original_tokens=r[7],
        status=r[8],
        method=r[9],
    )


class _Tx:
    """``with memory._db() as db:`` runs one IMMEDIATE transaction on this thread's connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> _Tx:
        self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
