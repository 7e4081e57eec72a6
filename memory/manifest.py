"""The SQLite manifest of a token memory: schema, rows <-> values, filters, transactions.

One row per segment ever added (live or evicted), the ``meta`` key-value table (config,
dimensions, the running global mean) and an ``events`` log (rebalances). Column order
lives in this file only: code elsewhere reads named values, never ``row[11]``.

SQLite connections are not shared between threads: each thread gets its own, in WAL
mode, so readers never wait for the writer's transaction.
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
from typing import Any

import numpy as np
import torch

from streamvid.errors import ConfigError
from streamvid.types import CompressedSegment

__all__ = ["Manifest", "SegmentInfo", "SegmentRow", "LiveRow", "time_filter"]

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
"""


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

    def __init__(self, root: Path) -> None:
        self.path = root / "manifest.sqlite"
        self._local = threading.local()
        self.conn.executescript(SCHEMA)

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (SQLite connections are not shared between threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

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
        return int(self.conn.execute("SELECT COALESCE(MAX(id), -1) FROM segments").fetchone()[0]) + 1

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

    def live_rows(self) -> list[LiveRow]:
        rows = self.conn.execute(
            'SELECT id, mean_token, frame_count, richness, n_tokens, "end", stream FROM segments '
            "WHERE status = 'live' ORDER BY id"
        ).fetchall()
        return [
            LiveRow(r[0], torch.from_numpy(np.frombuffer(r[1], dtype=np.float32).copy()), r[2], r[3], r[4], r[5], r[6])
            for r in rows
        ]

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
