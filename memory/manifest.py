"""The SQLite manifest of a token memory: schema, rows <-> values, filters, transactions.

One row per segment ever added (live or evicted), the ``meta`` key-value table (the
settings, the running global mean, the schema version), an ``events`` log (rebalances)
and a ``sources`` table: per (stream, source key), the end time of the last segment
stored from that source and whether its ingest completed (what resume reads). Column
order lives in this file only: code elsewhere reads named values, never ``row[11]``.

SQLite connections are not shared between threads: each thread gets its own, in WAL
mode, so readers never wait for the writer's transaction. A read-only manifest opens
its connections with ``mode=ro`` and never creates or migrates anything.

Schema versions: 1 (segments, meta with ``config``/``dim``/``key_dim``, events) and 2
(adds ``sources``; the settings become one ``settings`` row, see memory/settings.py).
A writer migrates 1 -> 2 when it opens the memory.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from streamvid.errors import ConfigError
from streamvid.types import CompressedSegment

__all__ = [
    "SCHEMA_VERSION",
    "LiveRow",
    "LiveTable",
    "Manifest",
    "SegmentInfo",
    "SegmentRow",
    "SourceProgress",
    "time_filter",
]

SCHEMA = """
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
CREATE TABLE IF NOT EXISTS sources (
    stream TEXT NOT NULL,
    source TEXT NOT NULL,
    last_time REAL,
    complete INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    PRIMARY KEY (stream, source)
);
"""

SCHEMA_VERSION = 2


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


# the manifest columns behind each SegmentInfo field, in field order
_INFO_COLUMNS = ", ".join(
    {
        "segment_index": "seg_index",
        "end": '"end"',
        "tokens": "n_tokens",
    }.get(f.name, f.name)
    for f in fields(SegmentInfo)
)


@dataclass(frozen=True)
class SegmentRow:
    """A whole manifest row, in column order (the only place that order is written down)."""

    id: int
    stream: str
    seg_index: int
    start: float
    end: float
    frame_count: int
    grid_h: int
    grid_w: int
    frame_offset: int
    method: str
    richness: float
    uniqueness: float
    original_tokens: int
    n_tokens: int
    status: str
    shard: str | None
    version: int
    nbytes: int
    mean_token: bytes
    key: bytes
    added: float

    @classmethod
    def of(
        cls,
        sid: int,
        seg: CompressedSegment,
        key: np.ndarray,
        *,
        status: str,
        shard: str | None,
        version: int,
        nbytes: int,
        n_tokens: int,
    ) -> SegmentRow:
        return cls(
            id=sid,
            stream=seg.stream_id,
            seg_index=seg.segment_index,
            start=seg.start_time,
            end=seg.end_time,
            frame_count=seg.frame_count,
            grid_h=seg.grid_size[0],
            grid_w=seg.grid_size[1],
            frame_offset=seg.frame_offset,
            method=seg.method,
            richness=seg.richness,
            uniqueness=seg.uniqueness,
            original_tokens=seg.original_tokens,
            n_tokens=n_tokens,
            status=status,
            shard=shard,
            version=version,
            nbytes=nbytes,
            mean_token=seg.mean_token.float().cpu().numpy().tobytes(),
            key=key.tobytes(),
            added=time.time(),
        )


@dataclass(frozen=True)
class LiveRow:
    """The CABA statistics of a live segment that rebalancing needs (kept in memory)."""

    id: int
    mean_token: torch.Tensor  # fp32 [D]
    frame_count: int
    richness: float
    tokens: int
    end: float
    stream: str


class LiveTable(NamedTuple):
    """The CABA statistics of many live segments, as columns (:meth:`Manifest.live_table`)."""

    ids: list[int]
    means: torch.Tensor  # fp32 [K, D]
    lengths: list[int]  # frame counts
    richness: list[float]
    tokens: list[int]
    ends: list[float]
    streams: list[str]


@dataclass(frozen=True)
class SourceProgress:
    """How far the ingest of ``source`` into ``stream`` got: ``last_time`` is the end time
    (s) of the last segment stored from it (None before the first), ``complete`` whether
    the source was read to its end; ``updated`` is a Unix time."""

    stream: str
    source: str
    last_time: float | None
    complete: bool
    updated: float


def time_filter(time_range: tuple[float, float] | None, streams: Sequence[str] | None) -> tuple[str, list[Any]]:
    """A WHERE clause (and its arguments) for segments overlapping ``time_range`` in ``streams``."""
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


def _in(ids: Sequence[int]) -> str:
    return f"({','.join('?' * len(ids))})"


class Manifest:
    """The manifest at ``root/manifest.sqlite``. Reads run on the calling thread's connection;
    writes go inside :meth:`transaction` (one IMMEDIATE transaction, all or nothing)."""

    def __init__(self, root: Path, *, read_only: bool = False) -> None:
        self.path = root / "manifest.sqlite"
        self.read_only = read_only
        self._local = threading.local()
        if not read_only:
            self.conn.executescript(SCHEMA)

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections are not shared between threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.read_only:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
            else:
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def has_table(self, name: str) -> bool:
        row = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone()
        return row is not None

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- meta ------------------------------------------------------------------------

    def meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def meta_int(self, key: str) -> int | None:
        value = self.meta(key)
        return None if value is None else int(value)

    def set_meta(self, key: str, value: Any, conn: sqlite3.Connection | None = None) -> None:
        (conn or self.conn).execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (key, value))

    def delete_meta(self, keys: Sequence[str], conn: sqlite3.Connection) -> None:
        conn.execute(f"DELETE FROM meta WHERE k IN {_in(keys)}", list(keys))

    # -- sources (resume) ------------------------------------------------------------

    @staticmethod
    def record_source(conn: sqlite3.Connection, stream: str, source: str, last_time: float | None, at: float) -> None:
        """The ingest of ``source`` stored a segment ending at ``last_time``: it is not complete."""
        conn.execute(
            "INSERT INTO sources (stream, source, last_time, complete, updated) VALUES (?, ?, ?, 0, ?) "
            "ON CONFLICT (stream, source) DO UPDATE SET "
            "last_time = MAX(COALESCE(last_time, excluded.last_time), excluded.last_time), complete = 0, "
            "updated = excluded.updated",
            (stream, source, last_time, at),
        )

    @staticmethod
    def set_source_complete(conn: sqlite3.Connection, stream: str, source: str, complete: bool, at: float) -> None:
        conn.execute(
            "INSERT INTO sources (stream, source, last_time, complete, updated) VALUES (?, ?, NULL, ?, ?) "
            "ON CONFLICT (stream, source) DO UPDATE SET complete = excluded.complete, updated = excluded.updated",
            (stream, source, int(complete), at),
        )

    def source_progress(self, stream: str, source: str) -> SourceProgress | None:
        if self.read_only and not self.has_table("sources"):  # a schema 1 memory nobody migrated yet
            return None
        row = self.conn.execute(
            "SELECT stream, source, last_time, complete, updated FROM sources WHERE stream = ? AND source = ?",
            (stream, source),
        ).fetchone()
        return None if row is None else SourceProgress(row[0], row[1], row[2], bool(row[3]), row[4])

    def sources(self) -> list[SourceProgress]:
        if self.read_only and not self.has_table("sources"):
            return []
        rows = self.conn.execute(
            "SELECT stream, source, last_time, complete, updated FROM sources ORDER BY stream, source"
        ).fetchall()
        return [SourceProgress(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows]

    @staticmethod
    def forget_sources(conn: sqlite3.Connection, stream: str) -> None:
        conn.execute("DELETE FROM sources WHERE stream = ?", (stream,))

    # -- segments ------------------------------------------------------------------------

    @staticmethod
    def insert(conn: sqlite3.Connection, row: SegmentRow) -> None:
        conn.execute(f"INSERT INTO segments VALUES ({','.join('?' * len(fields(SegmentRow)))})", astuple(row))

    @staticmethod
    def set_tokens(conn: sqlite3.Connection, sid: int, n_tokens: int, shard: str, version: int, nbytes: int) -> None:
        conn.execute(
            "UPDATE segments SET n_tokens = ?, shard = ?, version = ?, nbytes = ? WHERE id = ?",
            (n_tokens, shard, version, nbytes, sid),
        )

    @staticmethod
    def set_evicted(conn: sqlite3.Connection, sid: int) -> None:
        conn.execute(
            "UPDATE segments SET status = 'evicted', n_tokens = 0, shard = NULL, nbytes = 0 WHERE id = ?", (sid,)
        )

    @staticmethod
    def log_event(conn: sqlite3.Connection, at: float, kind: str, detail: dict[str, Any]) -> None:
        conn.execute("INSERT INTO events (at, kind, detail) VALUES (?, ?, ?)", (at, kind, json.dumps(detail)))

    def next_id(self) -> int:
        """One past the largest id ever used (ids of dropped segments are never reused)."""
        used = int(self.conn.execute("SELECT COALESCE(MAX(id), -1) FROM segments").fetchone()[0]) + 1
        return max(used, self.meta_int("next_id") or 0)

    def stream_rows(self, stream: str) -> list[tuple[int, str | None, int, bytes]]:
        """(id, shard, frame_count, mean_token bytes) of every segment of ``stream``."""
        return self.conn.execute(
            "SELECT id, shard, frame_count, mean_token FROM segments WHERE stream = ? ORDER BY id", (stream,)
        ).fetchall()

    @staticmethod
    def delete_segments(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            conn.execute(f"DELETE FROM segments WHERE id IN {_in(chunk)}", chunk)

    def shard_names(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT shard FROM segments WHERE shard IS NOT NULL")}

    def ids(self) -> np.ndarray:
        return np.array([r[0] for r in self.conn.execute("SELECT id FROM segments ORDER BY id")], dtype=np.int64)

    def keys(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int64 [n], keys float32 [n, d]) of the given segments."""
        rows = self.conn.execute(f"SELECT id, key FROM segments WHERE id IN {_in(ids)}", list(ids)).fetchall()
        return (
            np.array([r[0] for r in rows], dtype=np.int64),
            np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]),
        )

    def catalog(self) -> list[tuple[int, float, float, str]]:
        """(id, start, end, stream) of every segment, for the search filters."""
        return self.conn.execute('SELECT id, start, "end", stream FROM segments').fetchall()

    def live_table(self, dim: int) -> LiveTable:
        """The CABA statistics of every live segment, in id order, as columns: the mean tokens in
        one [K, dim] tensor (no tensor per row: a memory of 10^5 live segments would pass
        through 10^5 small tensors, tens of MB of heap, on every open)."""
        rows = self.conn.execute(
            'SELECT id, mean_token, frame_count, richness, n_tokens, "end", stream FROM segments '
            "WHERE status = 'live' ORDER BY id"
        ).fetchall()
        if not rows:
            return LiveTable([], torch.zeros(0, dim), [], [], [], [], [])
        ids, means, lengths, richness, tokens, ends, streams = (list(c) for c in zip(*rows))
        flat = np.frombuffer(b"".join(means), dtype=np.float32).reshape(len(rows), dim)
        return LiveTable(ids, torch.from_numpy(flat.copy()), lengths, richness, tokens, ends, streams)

    def versions(self, ids: Sequence[int]) -> dict[int, tuple[str | None, int]]:
        """id -> (shard name, version)."""
        if not ids:
            return {}
        rows = self.conn.execute(f"SELECT id, shard, version FROM segments WHERE id IN {_in(ids)}", list(ids))
        return {r[0]: (r[1], r[2]) for r in rows}

    def states(self, ids: Sequence[int]) -> dict[int, tuple[str, str | None, float, float]]:
        """id -> (status, shard, start, end)."""
        rows = self.conn.execute(
            f'SELECT id, status, shard, start, "end" FROM segments WHERE id IN {_in(ids)}', list(ids)
        )
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}

    def row(self, sid: int) -> SegmentRow:
        r = self.conn.execute("SELECT * FROM segments WHERE id = ?", (sid,)).fetchone()
        return SegmentRow(*r)

    def rows(self, ids: Sequence[int]) -> dict[int, SegmentRow]:
        """id -> whole row, in one query (unknown ids are left out)."""
        if not ids:
            return {}
        found = self.conn.execute(f"SELECT * FROM segments WHERE id IN {_in(ids)}", list(ids))
        return {r[0]: SegmentRow(*r) for r in found}

    def infos(self, ids: Sequence[int]) -> dict[int, SegmentInfo]:
        if not ids:
            return {}
        rows = self.conn.execute(f"SELECT {_INFO_COLUMNS} FROM segments WHERE id IN {_in(ids)}", list(ids))
        return {r[0]: SegmentInfo(*r) for r in rows}

    def timeline(self, time_range: tuple[float, float], streams: Sequence[str] | None) -> list[SegmentInfo]:
        where, args = time_filter(time_range, streams)
        rows = self.conn.execute(f"SELECT {_INFO_COLUMNS} FROM segments WHERE {where} ORDER BY start, id", args)
        return [SegmentInfo(*r) for r in rows]

    def newest(self, stream: str, live_only: bool) -> SegmentInfo | None:
        """The segment of ``stream`` that starts last (only live ones with ``live_only``)."""
        status = "AND status = 'live'" if live_only else ""
        row = self.conn.execute(
            f"SELECT {_INFO_COLUMNS} FROM segments WHERE stream = ? {status} ORDER BY start DESC, id DESC LIMIT 1",
            (stream,),
        ).fetchone()
        return None if row is None else SegmentInfo(*row)

    def counts(self) -> tuple[int, int, int]:
        """(live segments, tokens they hold, evicted segments)."""
        live, tokens = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(n_tokens), 0) FROM segments WHERE status = 'live'"
        ).fetchone()
        evicted = self.conn.execute("SELECT COUNT(*) FROM segments WHERE status = 'evicted'").fetchone()[0]
        return int(live), int(tokens), int(evicted)

    def last_event(self, kind: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT detail FROM events WHERE kind = ? ORDER BY id DESC LIMIT 1", (kind,)).fetchone()
        return None if row is None else json.loads(row[0])
