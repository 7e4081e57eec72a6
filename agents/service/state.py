"""What the service remembers across restarts: its streams, its alert rules, and where each live
stream's clock stood, in ``<memory>/service.sqlite`` beside the memory's own manifest.

The memory itself stays the memory's (segments, resume progress); this file only says which
streams to start again and which rules to check. Every change is one committed transaction
(SQLite WAL, synchronous=FULL), so a ``kill -9`` loses nothing that was acknowledged.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STATE_FILE", "AlertRule", "ServiceState", "StreamSpec"]

STATE_FILE = "service.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, kind TEXT NOT NULL, target TEXT NOT NULL,
    options TEXT NOT NULL, added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL, rule TEXT NOT NULL,
    threshold REAL NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS clocks (stream TEXT PRIMARY KEY, media REAL NOT NULL, wall REAL NOT NULL);
"""


@dataclass(frozen=True)
class StreamSpec:
    """A stream as it was added: the id, the source as given, its kind and resolved target, options."""

    id: str
    source: str
    kind: str
    target: str
    options: dict[str, Any] = field(default_factory=dict)
    added: float = 0.0


@dataclass(frozen=True)
class AlertRule:
    id: int
    stream: str
    rule: str
    threshold: float
    created: float


class ServiceState:
    """The service's SQLite file (one writer: the process holding the memory's writer lock)."""

    def __init__(self, memory_root: str | Path) -> None:
        self.path = Path(memory_root) / STATE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def _write(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self._conn.execute(sql, args)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            return cur

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -- streams --------------------------------------------------------------------------

    def add_stream(self, spec: StreamSpec) -> None:
        self._write(
            "INSERT OR REPLACE INTO streams (id, source, kind, target, options, added) VALUES (?, ?, ?, ?, ?, ?)",
            (spec.id, spec.source, spec.kind, spec.target, json.dumps(spec.options), spec.added or time.time()),
        )

    def remove_stream(self, stream_id: str) -> bool:
        return self._write("DELETE FROM streams WHERE id = ?", (stream_id,)).rowcount > 0

    def streams(self) -> list[StreamSpec]:
        rows = self._read("SELECT id, source, kind, target, options, added FROM streams ORDER BY added, id")
        return [StreamSpec(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows]

    # -- alert rules ----------------------------------------------------------------------

    def add_alert(self, stream: str, rule: str, threshold: float) -> AlertRule:
        now = time.time()
        cur = self._write(
            "INSERT INTO alerts (stream, rule, threshold, created) VALUES (?, ?, ?, ?)", (stream, rule, threshold, now)
        )
        return AlertRule(int(cur.lastrowid), stream, rule, threshold, now)

    def remove_alert(self, alert_id: int) -> bool:
        return self._write("DELETE FROM alerts WHERE id = ?", (alert_id,)).rowcount > 0

    def alerts(self) -> list[AlertRule]:
        rows = self._read("SELECT id, stream, rule, threshold, created FROM alerts ORDER BY id")
        return [AlertRule(int(r[0]), r[1], r[2], float(r[3]), float(r[4])) for r in rows]

    # -- live clocks ----------------------------------------------------------------------

    def set_clock(self, stream: str, media: float, wall: float | None = None) -> None:
        """A live stream reached ``media`` seconds on its timeline at ``wall`` (Unix time)."""
        self._write(
            "INSERT OR REPLACE INTO clocks (stream, media, wall) VALUES (?, ?, ?)",
            (stream, media, time.time() if wall is None else wall),
        )

    def clock(self, stream: str) -> tuple[float, float] | None:
        rows = self._read("SELECT media, wall FROM clocks WHERE stream = ?", (stream,))
        return (float(rows[0][0]), float(rows[0][1])) if rows else None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
