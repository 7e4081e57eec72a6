"""TokenMemory: compressed segments under a global cap, FAISS-indexed, crash safe.

Layout of a memory directory::

    manifest.sqlite      segment metadata, keys, CABA statistics, settings, ingest progress
                         (SQLite, WAL; memory/manifest.py, memory/settings.py)
    shards/NNNNN/*.safetensors   tokens + provenance, one file per segment version
    index.<factory>.faiss  the key index (a cache of the keys in the manifest)
    writer.lock          the writer's OS lock and PID (memory/lock.py)

One writer per directory, enforced across processes: a writer holds an exclusive flock
on ``writer.lock`` from open to close; a second writer fails at once with
:class:`MemoryLockedError`. Readers (``read_only=True``) take no lock and write nothing.

Write order (the writer): new shard files -> one manifest transaction -> index and
in-memory state -> old shard files deleted. A crash (kill -9) at any point leaves the
manifest pointing at complete files; the next writer sweeps unreferenced files and
repairs the index from the manifest (a reader repairs its in-memory index only).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from pydantic import ValidationError

from memory.config import INGEST_FIELDS, MemoryConfig, MemorySettings
from memory.errors import (
    CorruptShardError,
    MemoryNotFoundError,
    MemoryStoreError,
    ReadOnlyMemoryError,
    SegmentEvictedError,
    UnknownSegmentError,
)
from memory.index import FLAT, HNSW, KeyIndex
from memory.lock import WriterLock
from memory.manifest import LiveRow, LiveTable, Manifest, SegmentInfo, SegmentRow, SourceProgress, time_filter
from memory.quant import dequantize
from memory.rebalance import plan_rebalance, recency_factors
from memory.rwlock import RWLock
from memory.settings import (
    check_widths,
    drop_legacy_file,
    merge_settings,
    save_settings,
    stored_settings,
)
from memory.shards import ShardStore, _sizes
from streamvid.compress.remerge import remerge
from streamvid.errors import ConfigError, ShapeError
from streamvid.types import CompressedSegment

__all__ = ["Hit", "MemoryStats", "RebalanceReport", "SegmentInfo", "SourceProgress", "TokenMemory"]

log = logging.getLogger(__name__)

# what a read-only open may choose itself (everything else is the memory's stored config)
_READER_OPTIONS = {"use_gpu_index", "cache_segments"}


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


class _Pending(NamedTuple):
    """A segment being added: its new id, the segment, its key and the source key it came from."""

    id: int
    segment: CompressedSegment
    key: np.ndarray
    source: str | None = None


class _Rewrite(NamedTuple):
    """A segment's new tokens, already written to a shard nobody references yet."""

    segment: CompressedSegment
    shard: str
    version: int
    nbytes: int


@dataclass
class _Plan:
    """What a write will do: every live segment (plus the pending one, last), its token count
    now and after, and which are evicted; the global mean after the write."""

    ids: list[int]
    current: list[int]
    targets: list[int]
    evict: list[bool]
    global_sum: torch.Tensor
    global_len: float
    cap: int

    @property
    def evicted_ids(self) -> list[int]:
        return [sid for sid, e in zip(self.ids, self.evict) if e]


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

    def append_many(self, rows: Sequence[LiveRow]) -> None:
        if rows:
            self.extend(
                LiveTable(
                    [r.id for r in rows], torch.stack([r.mean_token for r in rows]), [r.frame_count for r in rows],
                    [r.richness for r in rows], [r.tokens for r in rows], [r.end for r in rows],
                    [r.stream for r in rows],
                )
            )  # fmt: skip

    def extend(self, table: LiveTable) -> None:
        """Append the rows of ``table`` (ids after the ones held)."""
        k, need = len(self.ids), len(self.ids) + len(table.ids)
        if need == k:
            return
        if need > self._means.shape[0]:
            grown = torch.zeros(max(need, 2 * self._means.shape[0]), self._means.shape[1])
            grown[:k] = self._means[:k]
            self._means = grown
        self._means[k:need] = table.means
        self.ids += table.ids
        self.lengths += table.lengths
        self.richness += table.richness
        self.tokens += table.tokens
        self.ends += table.ends
        self.streams += table.streams

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
        self._next_code = 0

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
        self.stream[idx] = [self._code(s) for s in streams]
        self.present[idx] = True

    def _code(self, stream: str) -> int:
        if stream not in self.codes:
            self.codes[stream] = self._next_code  # codes are never reused, even after drop()
            self._next_code += 1
        return self.codes[stream]

    def drop(self, ids: Sequence[int], stream: str) -> None:
        """Forget ``ids``, all of ``stream``'s segments."""
        if ids:
            self.present[np.asarray(ids)] = False
        self.codes.pop(stream, None)

    def end_time(self, streams: Sequence[str] | None) -> float | None:
        m = self.mask(None, streams)
        return float(self.end[m].max()) if m.any() else None

    def spread(self, count: int, time_range: tuple[float, float] | None, streams: Sequence[str] | None) -> list[int]:
        """Ids of up to ``count`` segments of the filter evenly spaced in time (by start), in time order."""
        ids = np.flatnonzero(self.mask(time_range, streams))
        ordered = ids[np.argsort(self.start[ids], kind="stable")]
        if len(ordered) > count:
            ordered = ordered[((np.arange(count) + 0.5) * len(ordered) / count).astype(np.int64)]
        return ordered.tolist()

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
    """Open or create a token memory at ``path``: as its one writer (the default) or read-only.

    >>> mem = TokenMemory("runs/cam1", cap_tokens=50_000)      # the writer: holds writer.lock
    >>> sid = mem.add(compressed_segment, key)          # key: [d] retrieval vector
    >>> reader = TokenMemory("runs/cam1", read_only=True)  # no lock, never writes
    >>> hits = reader.search(query_vectors, k=5, time_range=(0, 600), streams=["cam1"])
    >>> segments = reader.get([h.segment.id for h in hits[0] if not h.segment.evicted])

    Writer: config comes from keyword arguments (see :class:`MemoryConfig`); reopening an
    existing memory without them uses the stored config, and a new cap given at reopen
    takes effect at once. A second writer on the same directory, in any process, fails
    at once with :class:`MemoryLockedError` naming the holder's PID; the lock of a
    killed writer is released by the kernel and taken over by the next one, which then
    sweeps what the dead writer left.

    Read-only (``read_only=True``): the memory must exist; the stored settings are used
    (only ``use_gpu_index`` may be given); nothing is written: no settings migration, no
    sweep, no rebalance, no index file. It sees the memory as of the open (search uses
    that snapshot of the key index; :meth:`refresh` takes a new one), while get(),
    timeline() and stats() read the manifest as it is now.

    One writer and many readers may share one object across threads.
    """

    def __init__(
        self, path: str | Path, config: MemoryConfig | None = None, *, read_only: bool = False, **cfg: Any
    ) -> None:
        self.root = Path(path)
        if "token_dtype" in cfg:  # the name the docs use for MemoryConfig.dtype
            cfg["dtype"] = cfg.pop("token_dtype")
        self.read_only = read_only
        self._lock = RWLock()
        self._write_mutex = threading.Lock()
        self._writer: WriterLock | None = None
        self._closed = False
        self._cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._cache_lock = threading.Lock()
        if read_only:
            if not (self.root / "manifest.sqlite").is_file():
                raise MemoryNotFoundError(
                    f"{self.root} holds no streamvid memory; create one with 'streamvid ingest' or open it for writing"
                )
            if config is not None or set(cfg) - _READER_OPTIONS:
                given = sorted(set(cfg) - _READER_OPTIONS) or ["config"]
                raise ConfigError(
                    f"a read-only open uses the memory's stored settings; open it for writing to change {given}"
                )
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self._writer = WriterLock(self.root).acquire()  # before anything reads state a writer may change
        try:
            self._open(config, cfg)
        except BaseException:
            self._release()
            raise

    @classmethod
    def exists(cls, path: str | Path) -> bool:
        """Whether ``path`` holds a memory (a manifest); touches nothing."""
        return (Path(path) / "manifest.sqlite").is_file()

    def _open(self, config: MemoryConfig | None, cfg: dict[str, Any]) -> None:
        self.shards = ShardStore(self.root, create=not self.read_only)
        self.manifest = Manifest(self.root, read_only=self.read_only)
        stored, needs_migration = stored_settings(self.manifest, self.root)
        if config is None:
            base = stored.store.model_dump() if stored.store is not None else {}
            if self.read_only and stored.store is None:
                raise MemoryNotFoundError(f"{self.root} holds no segments yet; ingest into it first")
            try:
                config = MemoryConfig(**{**base, **cfg})
            except ValueError as err:
                raise ConfigError(f"bad memory options: {err}") from None
        settings = stored.model_copy(update={"store": config})
        if not self.read_only and (settings != stored or needs_migration):
            with self.manifest.transaction() as conn:
                save_settings(self.manifest, conn, settings)
            drop_legacy_file(self.root)
        self._settings = settings
        self.config = config
        self.dim: int | None = settings.token_dim
        self.key_dim: int | None = settings.key_dim
        self._index: KeyIndex | None = None
        self._factory = self._recorded_factory()
        self._migration: threading.Thread | None = None
        self._stop_migration = threading.Event()
        self._live: _LiveSet | None = None
        self._catalog = _Catalog()
        self._adds_since_save = 0
        self._recover()

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def _check_writable(self) -> None:
        if self._closed:
            raise MemoryStoreError("this TokenMemory is closed; open it again")
        if self.read_only:
            raise ReadOnlyMemoryError(
                f"{self.root} was opened read-only; open it without read_only=True to write (one writer at a time)"
            )

    # -- settings --------------------------------------------------------------------

    @property
    def settings(self) -> MemorySettings:
        """What this memory remembers (model, embedder, compressor, ratio, fps, widths, store config)."""
        return self._settings

    def check_settings(self, **given: Any) -> MemorySettings:
        """The stored settings updated with ``given`` (model, embedder, compressor, ratio, fps;
        None keeps the stored value), validated; nothing is saved. Raises ConfigError."""
        unknown = sorted(set(given) - set(INGEST_FIELDS))
        if unknown:
            raise ConfigError(
                f"unknown memory settings {unknown}; choose from {list(INGEST_FIELDS)} "
                "(cap and index options are given when the writer opens the memory)"
            )
        return merge_settings(self._settings, self.root, **given)

    def set_cap(self, cap_tokens: int | None = None, cap_bytes: int | None = None) -> RebalanceReport | None:
        """A new cap (in tokens and/or bytes; the other unit kept as it is), saved with the memory's
        settings and enforced at once: segments are re-merged (or evicted) under a smaller cap, none
        grows under a larger one. Writer only. Returns the rebalance done (None if none was needed)."""
        self._check_writable()
        update = {k: v for k, v in (("cap_tokens", cap_tokens), ("cap_bytes", cap_bytes)) if v is not None}
        if not update:
            raise ConfigError("set_cap needs cap_tokens or cap_bytes; pass the new cap")
        try:
            config = MemoryConfig(**{**self.config.model_dump(), **update})
        except ValidationError as err:
            raise ConfigError(f"invalid cap {update}: {err.errors()[0]['msg']}; give a positive number") from None
        with self._write_mutex:
            settings = self._settings.model_copy(update={"store": config})
            with self.manifest.transaction() as conn:
                save_settings(self.manifest, conn, settings)
            self._settings, self.config = settings, config
            if self._live is None:
                return None
            return self._write(None)

    def update_settings(self, **given: Any) -> MemorySettings:
        """Validate (see :meth:`check_settings`) and save; writer only. Returns the stored settings."""
        self._check_writable()
        merged = self.check_settings(**given)
        with self._write_mutex:
            if merged != self._settings:
                with self.manifest.transaction() as conn:
                    save_settings(self.manifest, conn, merged)
                self._settings = merged
        return merged

    def check_widths(
        self,
        *,
        token_dim: int | None = None,
        key_dim: int | None = None,
        model: str | None = None,
        embedder: str | None = None,
    ) -> None:
        """Raise SettingsConflictError (one line: which memory setting, what to do) when a model
        making ``token_dim``-wide tokens or an embedder making ``key_dim``-wide keys does not
        fit this memory. Call it after loading the components, before ingesting or asking."""
        check_widths(self._settings, self.root, token_dim=token_dim, key_dim=key_dim, model=model, embedder=embedder)

    # -- ingest progress (resume) ------------------------------------------------------

    def source_progress(self, stream_id: str, source_key: str) -> SourceProgress | None:
        """How far the ingest of ``source_key`` into ``stream_id`` got (None: never started)."""
        with self._lock.read():
            return self.manifest.source_progress(stream_id, source_key)

    def sources(self) -> list[SourceProgress]:
        """The progress of every (stream, source) ingested into this memory."""
        with self._lock.read():
            return self.manifest.sources()

    def ingest_complete(self, stream_id: str, source_key: str) -> bool:
        """Whether the ingest of ``source_key`` into ``stream_id`` was read to its end."""
        progress = self.source_progress(stream_id, source_key)
        return progress is not None and progress.complete

    def mark_source(self, stream_id: str, source_key: str, *, complete: bool = True) -> None:
        """Record that the ingest of ``source_key`` into ``stream_id`` completed (or not).
        Each ``add(..., source=...)`` records the time reached and clears ``complete``."""
        self._check_writable()
        with self._write_mutex, self._lock.write():
            with self.manifest.transaction() as conn:
                self.manifest.set_source_complete(conn, stream_id, source_key, complete, time.time())

    def drop_stream(self, stream_id: str) -> int:
        """Delete every segment of ``stream_id`` (live or evicted) and its ingest progress, in
        one transaction (for a deliberate re-ingest from the start). Returns the count removed.
        Segment ids are never reused."""
        self._check_writable()
        with self._write_mutex:
            rows = self.manifest.stream_rows(stream_id)
            ids = [r[0] for r in rows]
            global_sum = None
            if self.dim is not None:
                global_sum, global_len = self._global_sum.clone(), self._global_len
                for _, _, frames, mean in rows:
                    global_sum -= frames * torch.from_numpy(np.frombuffer(mean, dtype=np.float32).copy()).double()
                    global_len -= frames
                if global_len <= 1e-9:  # nothing left: start the running mean afresh
                    global_sum, global_len = torch.zeros_like(global_sum), 0.0
            with self._lock.write():
                with self.manifest.transaction() as conn:
                    self.manifest.delete_segments(conn, ids)
                    self.manifest.forget_sources(conn, stream_id)
                    self.manifest.set_meta("next_id", self._next_id, conn)
                    if global_sum is not None:
                        self._store_global(conn, global_sum, global_len)
                    detail = {"stream": stream_id, "segments": len(ids)}
                    self.manifest.log_event(conn, time.time(), "drop_stream", detail)
                if global_sum is not None:
                    self._global_sum, self._global_len = global_sum, global_len
                self._catalog.drop(ids, stream_id)
                if self._live is not None:
                    gone = set(ids)
                    self._live.keep([sid not in gone for sid in self._live.ids])
                if self._index is not None and ids and not self._index.remove(np.asarray(ids, dtype=np.int64)):
                    # this index type cannot remove: rebuild from the manifest ("auto": exact now, graph later)
                    if self.config.index_factory == "auto":
                        self._stop_migration.set()
                        self._factory = FLAT
                        with self.manifest.transaction() as conn:
                            self.manifest.set_meta("index_factory", FLAT, conn)
                    self._index = self._new_index()
                    self._fill_index(self._index, self.manifest.ids())
            for _, shard, _, _ in rows:
                if shard is not None:
                    self.shards.delete(shard)
            if ids:
                self._save_index()
        self._maybe_migrate()
        return len(ids)

    @property
    def token_cap(self) -> int | None:
        return None if self.dim is None else self._cap()

    @property
    def tokens_held(self) -> int:
        """Tokens held by live segments now (from memory, no disk access)."""
        return 0 if self._live is None else sum(self._live.tokens)

    def streams(self) -> list[str]:
        """Every stream with a segment (live or evicted), sorted (from memory, no disk access)."""
        with self._lock.read():
            return sorted(self._catalog.codes)

    def _index_path(self, factory: str | None = None) -> Path:
        """One file per factory string, so a memory reopened with another factory rebuilds."""
        slug = "".join(c if c.isalnum() else "_" for c in (factory or self._factory))
        return self.root / f"index.{slug}.faiss"

    @property
    def index_factory(self) -> str:
        """The FAISS factory string of the key index in use (with ``index_factory="auto"``: Flat
        while small, HNSW once the background build has been swapped in)."""
        return self._factory

    def _recorded_factory(self) -> str:
        if self.config.index_factory != "auto":
            return self.config.index_factory
        recorded = self.manifest.meta("index_factory")
        return recorded if recorded in (FLAT, HNSW) else FLAT

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait for a background index build to finish; True when none is running."""
        thread = self._migration
        if thread is not None:
            thread.join(timeout)
        return self._migration is None or not self._migration.is_alive()

    def _maybe_migrate(self) -> None:
        """Writer, ``index_factory="auto"``: past ``index_switch_at`` keys, build the HNSW index
        in the background (memory/index.py); a no-op while one is being built or once switched."""
        if (
            self.read_only
            or self.config.index_factory != "auto"
            or self._factory != FLAT
            or self._index is None
            or self._index.ntotal < self.config.index_switch_at
            or (self._migration is not None and self._migration.is_alive())
        ):
            return
        self._stop_migration.clear()
        self._migration = threading.Thread(target=self._migrate, name="streamvid-index-build", daemon=True)
        self._migration.start()

    def _migrate(self) -> None:
        """Build the HNSW index from the manifest's keys without any lock (readers and the writer
        go on with the Flat index), save it (a new file, atomically), then under the locks: add
        the keys written meanwhile, swap it in, record the choice in one transaction, and only
        then delete the Flat index file. A kill at any point leaves a recorded index whose file
        is complete, or a missing file that the next open rebuilds from the manifest."""
        try:
            index = self._new_index(HNSW)
            ids = self.manifest.ids()
            for chunk in np.array_split(ids, max(1, len(ids) // 4096)):
                if self._stop_migration.is_set():
                    return
                self._fill_index(index, chunk)
            index.save(self._index_path(HNSW))
            with self._write_mutex:
                if self._stop_migration.is_set() or self._closed:
                    return
                with self._lock.write():
                    now = self.manifest.ids()
                    have = index.ids()
                    if len(np.setdiff1d(have, now)):  # a stream was dropped meanwhile: try again later
                        return
                    self._fill_index(index, np.setdiff1d(now, have))
                    with self.manifest.transaction() as conn:
                        self.manifest.set_meta("index_factory", HNSW, conn)
                    old = self._index_path()
                    self._index, self._factory = index, HNSW
                old.unlink(missing_ok=True)
            trim_heap()  # the Flat index just dropped
            log.info("%s: switched the key index to %s at %d keys", self.root, HNSW, index.ntotal)
        except Exception:  # the Flat index keeps serving; the next add tries again
            log.exception("%s: background index build failed", self.root)

    # -- open / recover ------------------------------------------------------------

    def _recover(self) -> None:
        if not self.read_only:  # only the writer may remove files: a reader could race a live writer
            swept = self.shards.sweep(self.manifest.shard_names())
            if swept:
                log.info("%s: removed %d unreferenced shard file(s) left by an interrupted write", self.root, swept)
        self._load_state()
        if self.dim is not None and not self.read_only and self.tokens_held > (self.token_cap or 0):
            with self._write_mutex:
                self._write(None)

    def refresh(self) -> None:
        """Read-only: take a new snapshot of the memory (catalog, live set, key index) as the
        writer has left it now. A writer's state is always current; this is a no-op there."""
        if not self.read_only:
            return
        with self._lock.write():
            self._settings, _ = stored_settings(self.manifest, self.root)
            self.dim, self.key_dim = self._settings.token_dim, self._settings.key_dim
            if self._settings.store is not None:  # the writer may have reopened with a new cap
                own = {name: getattr(self.config, name) for name in _READER_OPTIONS}
                self.config = self._settings.store.model_copy(update=own)
            self._catalog = _Catalog()
            self._live, self._index = None, None
            self._load_state()

    def _load_state(self) -> None:
        """Catalog, live set, global mean and key index from the manifest."""
        self._next_id = self.manifest.next_id()
        rows = self.manifest.catalog()
        if rows:
            self._catalog.add(*zip(*rows))
        if self.dim is None:
            return
        self._live = _LiveSet(self.dim)
        self._live.extend(self.manifest.live_table(self.dim))
        self._global_sum = torch.from_numpy(np.frombuffer(self.manifest.meta("global_sum"), dtype=np.float64).copy())
        self._global_len = float(self.manifest.meta("global_len"))
        self._open_index()
        trim_heap()  # what opening read in passing (rows, the index file) goes back to the OS

    def _new_index(self, factory: str | None = None) -> KeyIndex:
        assert self.key_dim is not None
        cfg = self.config
        return KeyIndex(self.key_dim, factory or self._factory, cfg.metric, cfg.use_gpu_index)

    def _open_index(self) -> None:
        assert self.key_dim is not None
        cfg = self.config
        self._factory = self._recorded_factory()
        index = KeyIndex.load(self._index_path(), self.key_dim, self._factory, cfg.metric, cfg.use_gpu_index)
        if index is None and self.config.index_factory == "auto" and self._factory != FLAT:
            self._factory = FLAT  # the graph's file is gone: serve exactly, rebuild the graph in the background
            index = KeyIndex.load(self._index_path(), self.key_dim, self._factory, cfg.metric, cfg.use_gpu_index)
        manifest_ids = self.manifest.ids()
        if index is None:
            index = self._new_index()
            missing = manifest_ids
            log.info("%s: building the key index from %d stored keys", self.root, len(missing))
        else:
            have = index.ids()
            extra = np.setdiff1d(have, manifest_ids)
            if len(extra) and not index.remove(extra):  # this index type cannot remove: rebuild
                index = self._new_index()
                have = np.zeros(0, dtype=np.int64)
            missing = np.setdiff1d(manifest_ids, have)
            if len(missing) or len(extra):
                log.info("%s: index repaired (+%d, -%d keys)", self.root, len(missing), len(extra))
        self._fill_index(index, missing)
        self._index = index
        if not self.read_only:
            if len(missing):
                index.save(self._index_path())
            for stale in self.root.glob("index.*"):  # interrupted saves and other factories' files
                if stale != self._index_path() and (stale.suffix == ".tmp" or self.config.index_factory == "auto"):
                    stale.unlink(missing_ok=True)
            self._maybe_migrate()

    def _fill_index(self, index: KeyIndex, ids: np.ndarray) -> None:
        for chunk in np.array_split(ids, max(1, len(ids) // 4096)):
            if len(chunk):
                found, keys = self.manifest.keys(chunk.tolist())
                index.add(keys, found)

    # -- writing -------------------------------------------------------------------

    def add(
        self,
        segment: CompressedSegment,
        key: torch.Tensor | np.ndarray | Sequence[float],
        *,
        source: str | None = None,
    ) -> int:
        """Store ``segment`` with its retrieval ``key`` [d]; returns the segment id.

        If the memory would exceed its cap, budgets are rebalanced first (see
        :func:`memory.rebalance.plan_rebalance`), so the cap holds after every add.
        ``source``: the source key the segment came from (see agents/ingest.py,
        ``source_key``); its progress (the segment's end time) is recorded in the same
        transaction as the segment, so a kill never separates the two.
        """
        self._check_writable()
        if not isinstance(segment, CompressedSegment):
            raise ShapeError(f"add() takes a CompressedSegment, got {type(segment).__name__}")
        key_np = np.asarray(key.detach().cpu().float() if isinstance(key, torch.Tensor) else key, dtype=np.float32)
        key_np = key_np.reshape(-1)
        if not np.isfinite(key_np).all() or not torch.isfinite(segment.tokens.float()).all():
            raise ShapeError("the segment's tokens and key must be finite (no NaN/inf)")
        with self._write_mutex:
            self._ensure_dims(segment.dim, key_np.shape[0], segment.deepstack_levels)
            sid = self._next_id
            self._next_id += 1
            self._write(_Pending(sid, segment, key_np, source))
            self._adds_since_save += 1
            if self._adds_since_save >= self.config.index_save_every:
                self._save_index()
        self._maybe_migrate()
        return sid

    def add_many(
        self,
        segments: Sequence[CompressedSegment],
        keys: torch.Tensor | np.ndarray | Sequence[Sequence[float]],
        *,
        source: str | None = None,
    ) -> list[int]:
        """Store many segments at once (an import, a benchmark, a shard merge); returns their ids.

        Equal to calling :meth:`add` for each in order, but the segments that fit under the cap
        are written in one transaction with one index update (tens of thousands per second on a
        CPU instead of one fsync-bound transaction each); those past the cap go through :meth:`add`
        one by one, so the cap holds after every segment as always. ``keys``: [n, d].
        """
        self._check_writable()
        keys_np = np.asarray(keys.detach().cpu().float() if isinstance(keys, torch.Tensor) else keys, dtype=np.float32)
        if keys_np.ndim != 2 or keys_np.shape[0] != len(segments):
            raise ShapeError(
                f"add_many needs one key per segment: {len(segments)} segments, keys {list(keys_np.shape)}"
            )
        for seg in segments:
            if not isinstance(seg, CompressedSegment):
                raise ShapeError(f"add_many() takes CompressedSegments, got {type(seg).__name__}")
            if not torch.isfinite(seg.tokens.float()).all():
                raise ShapeError("the segment's tokens and key must be finite (no NaN/inf)")
        if not np.isfinite(keys_np).all():
            raise ShapeError("the segment's tokens and key must be finite (no NaN/inf)")
        if not segments:
            return []
        ids: list[int] = []
        with self._write_mutex:
            for seg in segments:
                self._ensure_dims(seg.dim, keys_np.shape[1], seg.deepstack_levels)
            assert self.dim is not None
            room = self._cap() - self.tokens_held
            fits = 0
            for seg in segments:
                if seg.budget > room:
                    break
                room -= seg.budget
                fits += 1
            if fits:
                pending = [
                    _Pending(self._next_id + j, seg, keys_np[j], source) for j, seg in enumerate(segments[:fits])
                ]
                self._next_id += fits
                self._add_many_within_cap(pending)
                ids += [p.id for p in pending]
        for j in range(fits, len(segments)):
            ids.append(self.add(segments[j], keys_np[j], source=source))
        self._maybe_migrate()
        return ids

    def _add_many_within_cap(self, pending: Sequence[_Pending]) -> None:
        """:meth:`_add_within_cap` for many: every shard written (and fsynced) first, then one transaction."""
        global_sum, global_len = self._global_sum.clone(), self._global_len
        rows = []
        for sid, seg, key, _ in pending:
            name, nbytes = self.shards.write(sid, 0, seg, self.config.dtype)
            global_sum += seg.frame_count * seg.mean_token.float().cpu().double()
            global_len += seg.frame_count
            rows.append(
                SegmentRow.of(sid, seg, key, status="live", shard=name, version=0, nbytes=nbytes, n_tokens=seg.budget)
            )
        ids = np.array([p.id for p in pending], dtype=np.int64)
        with self._lock.write():
            with self.manifest.transaction() as conn:
                for row in rows:
                    self.manifest.insert(conn, row)
                self._store_global(conn, global_sum, global_len)
                for p in pending:
                    self._record_source(conn, p)
            self._index.add(np.stack([p.key for p in pending]), ids)
            segs = [p.segment for p in pending]
            starts, ends = [s.start_time for s in segs], [s.end_time for s in segs]
            self._catalog.add(list(ids), starts, ends, [s.stream_id for s in segs])
            self._global_sum, self._global_len = global_sum, global_len
            self._live.append_many([_live_row(p.id, p.segment, p.segment.budget) for p in pending])
        self._adds_since_save += len(pending)
        if self._adds_since_save >= self.config.index_save_every:
            self._save_index()

    def _ensure_dims(self, dim: int, key_dim: int, levels: int = 0) -> None:
        if self.dim is None:
            update = {"token_dim": dim, "key_dim": key_dim, "deepstack_levels": levels}
            settings = self._settings.model_copy(update=update)
            with self.manifest.transaction() as conn:
                save_settings(self.manifest, conn, settings)
                self.manifest.set_meta("global_sum", np.zeros(dim, dtype=np.float64).tobytes(), conn)
                self.manifest.set_meta("global_len", 0.0, conn)
            self._global_sum = torch.zeros(dim, dtype=torch.float64)
            self._global_len = 0.0
            self._settings, self.dim, self.key_dim = settings, dim, key_dim
            self._live = _LiveSet(dim)
            self._index = self._new_index()
            return
        self.check_widths(token_dim=dim, key_dim=key_dim)  # SettingsConflictError, a ShapeError
        if levels != self.deepstack_levels:
            raise ShapeError(
                f"memory {self.root} holds tokens with {self.deepstack_levels} DeepStack levels; this segment "
                f"has {levels}. Use one memory per model family (a new --memory directory)"
            )

    @property
    def deepstack_levels(self) -> int:
        """DeepStack levels stored with every token (0 for towers without them)."""
        return self._settings.deepstack_levels or 0

    def _cap(self) -> int:
        assert self.dim is not None
        return self.config.token_cap(self.dim, self.deepstack_levels)

    def rebalance(self) -> RebalanceReport | None:
        """Enforce the cap now (normally automatic on add). Returns what was done."""
        self._check_writable()
        with self._write_mutex:
            if self._live is None:
                return None
            return self._write(None)

    def _write(self, pending: _Pending | None) -> RebalanceReport | None:
        """Add ``pending`` (if any) and bring the memory under the cap, crash-safely:
        plan -> rewrite shards -> commit (one transaction) -> apply (in-memory state)."""
        assert self._live is not None and self.dim is not None
        started = time.perf_counter()
        cap = self._cap()
        if pending is not None and self.tokens_held + pending.segment.budget <= cap:
            self._add_within_cap(pending)  # O(1): nothing else changes
            return None
        plan = self._plan(pending, cap)
        rewrites, old_files = self._rewrite(plan, pending)
        report = None
        total = sum(plan.current)
        if total > cap:
            report = RebalanceReport(
                at=time.time(),
                seconds=time.perf_counter() - started,
                tokens_before=total,
                tokens_after=sum(t for t, e in zip(plan.targets, plan.evict) if not e),
                cap=cap,
                touched=sum(1 for sid in rewrites if pending is None or sid != pending.id),
                evicted=len(plan.evicted_ids),
            )
        # readers see the state before or after, never between
        with self._lock.write():
            with self.manifest.transaction() as conn:
                self._commit(conn, plan, pending, rewrites, report)
            self._apply(plan, pending, rewrites)
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

    def _plan(self, pending: _Pending | None, cap: int) -> _Plan:
        """Budgets of every live segment (and the pending one) under ``cap``; nothing written."""
        live = self._live
        ids, means = list(live.ids), live.means
        lengths, rich = list(live.lengths), list(live.richness)
        current, ends, streams = list(live.tokens), list(live.ends), list(live.streams)
        global_sum, global_len = self._global_sum.clone(), self._global_len
        if pending is not None:
            seg = pending.segment
            mean = seg.mean_token.float().cpu()
            ids.append(pending.id)
            means = torch.cat([means, mean[None]])
            lengths.append(seg.frame_count)
            rich.append(seg.richness)
            current.append(seg.budget)
            ends.append(seg.end_time)
            streams.append(seg.stream_id)
            global_sum += seg.frame_count * mean.double()
            global_len += seg.frame_count
        plan = _Plan(ids, current, list(current), [False] * len(ids), global_sum, global_len, cap)
        if sum(current) > cap:
            recency = None
            if self.config.recency_half_life_s is not None:
                end_t = torch.tensor(ends, dtype=torch.float64)
                newest = {s: max(e for e, t in zip(ends, streams) if t == s) for s in set(streams)}
                now = torch.tensor([newest[s] for s in streams], dtype=torch.float64)
                recency = recency_factors(end_t, now, self.config.recency_half_life_s)
            budgets = plan_rebalance(
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
            plan.targets, plan.evict = budgets.targets.tolist(), budgets.evict.tolist()
        return plan

    def _rewrite(self, plan: _Plan, pending: _Pending | None) -> tuple[dict[int, _Rewrite], list[str]]:
        """New shard files for every segment that shrinks (and the pending one); files no
        manifest row names yet, so a crash here leaves orphans that the next open sweeps.
        Returns the rewrites and the shard files they (and evictions) make obsolete."""
        stored = self.manifest.versions([sid for sid in plan.ids if pending is None or sid != pending.id])
        rewrites: dict[int, _Rewrite] = {}
        old_files: list[str] = []
        for sid, current, target, evict in zip(plan.ids, plan.current, plan.targets, plan.evict):
            is_new = pending is not None and sid == pending.id
            if evict:
                if not is_new:
                    old_files.append(stored[sid][0])
                continue
            if target >= current and not is_new:
                continue
            if is_new:
                seg, version = pending.segment, 0
            else:
                shard, old_version = stored[sid]
                seg, version = self._load(sid, shard), old_version + 1
                old_files.append(shard)
            seg = remerge(seg, target)
            name, nbytes = self.shards.write(sid, version, seg, self.config.dtype)
            rewrites[sid] = _Rewrite(seg, name, version, nbytes)
        return rewrites, old_files

    def _commit(
        self,
        conn: Any,
        plan: _Plan,
        pending: _Pending | None,
        rewrites: dict[int, _Rewrite],
        report: RebalanceReport | None,
    ) -> None:
        """The manifest rows of the plan, inside the caller's transaction."""
        evicted = plan.evicted_ids
        if pending is not None:
            new = rewrites.get(pending.id)
            row = SegmentRow.of(
                pending.id,
                pending.segment,
                pending.key,
                status="evicted" if pending.id in evicted else "live",
                shard=None if new is None else new.shard,
                version=0 if new is None else new.version,
                nbytes=0 if new is None else new.nbytes,
                n_tokens=0 if new is None else new.segment.budget,
            )
            self.manifest.insert(conn, row)
            self._store_global(conn, plan.global_sum, plan.global_len)
            self._record_source(conn, pending)
        for sid, new in rewrites.items():
            if pending is None or sid != pending.id:
                self.manifest.set_tokens(conn, sid, new.segment.budget, new.shard, new.version, new.nbytes)
        for sid in evicted:
            if pending is None or sid != pending.id:
                self.manifest.set_evicted(conn, sid)
        if report is not None:
            self.manifest.log_event(conn, report.at, "rebalance", {**report.__dict__, "evicted_ids": evicted[:1000]})

    def _apply(self, plan: _Plan, pending: _Pending | None, rewrites: dict[int, _Rewrite]) -> None:
        """In-memory state follows the committed manifest (under the write lock)."""
        live = self._live
        if pending is not None:
            self._index.add(pending.key[None], np.array([pending.id], dtype=np.int64))
            seg = pending.segment
            self._catalog.add([pending.id], [seg.start_time], [seg.end_time], [seg.stream_id])
            self._global_sum, self._global_len = plan.global_sum, plan.global_len
        n_old = len(live)
        new_tokens = [rewrites[s].segment.budget if s in rewrites else c for s, c in zip(plan.ids, plan.current)]
        live.tokens = new_tokens[:n_old]
        live.keep([not e for e in plan.evict[:n_old]])
        if pending is not None and not plan.evict[-1]:
            live.append_many([_live_row(pending.id, pending.segment, new_tokens[-1])])

    def _add_within_cap(self, pending: _Pending) -> None:
        """Store a segment when the cap is not reached: one shard, one insert, no rebalance."""
        sid, seg, key, _ = pending
        name, nbytes = self.shards.write(sid, 0, seg, self.config.dtype)
        global_sum = self._global_sum + seg.frame_count * seg.mean_token.float().cpu().double()
        global_len = self._global_len + seg.frame_count
        row = SegmentRow.of(sid, seg, key, status="live", shard=name, version=0, nbytes=nbytes, n_tokens=seg.budget)
        with self._lock.write():
            with self.manifest.transaction() as conn:
                self.manifest.insert(conn, row)
                self._store_global(conn, global_sum, global_len)
                self._record_source(conn, pending)
            self._index.add(key[None], np.array([sid], dtype=np.int64))
            self._catalog.add([sid], [seg.start_time], [seg.end_time], [seg.stream_id])
            self._global_sum, self._global_len = global_sum, global_len
            self._live.append_many([_live_row(sid, seg, seg.budget)])

    def _record_source(self, conn: Any, pending: _Pending) -> None:
        if pending.source is not None:
            seg = pending.segment
            self.manifest.record_source(conn, seg.stream_id, pending.source, seg.end_time, time.time())

    def _store_global(self, conn: Any, global_sum: torch.Tensor, global_len: float) -> None:
        self.manifest.set_meta("global_sum", global_sum.numpy().tobytes(), conn)
        self.manifest.set_meta("global_len", global_len, conn)

    def _save_index(self) -> None:
        if self._index is not None and not self.read_only:
            with self._lock.read():
                self._index.save(self._index_path())
        self._adds_since_save = 0
        trim_heap()  # every index_save_every adds: what the adds freed (rows, shards) goes back

    # -- reading -------------------------------------------------------------------

    def _load(
        self, sid: int, shard: str, device: torch.device | str | None = None, row: SegmentRow | None = None
    ) -> CompressedSegment:
        """Segment ``sid`` from ``shard``: tokens dequantized to float16 on ``device`` (default CPU).
        Recently read shards come from a small LRU (``cache_segments``), keyed by shard name, which
        names one version of one segment, so an entry is never stale. ``row``: its manifest row,
        when the caller has read it already."""
        row = row if row is not None else self.manifest.row(sid)
        t = self._cache_get(shard)
        if t is None:
            t = self.shards.read(sid, shard)
            self._cache_put(shard, t)
        try:
            return CompressedSegment(
                tokens=dequantize(t, row_dim(t, self.dim), device),
                sizes=t["sizes"].clone(),
                positions=t["positions"].clone(),
                times=t["times"].clone(),
                grid_size=(row.grid_h, row.grid_w),
                frame_count=row.frame_count,
                start_time=row.start,
                end_time=row.end,
                mean_token=torch.from_numpy(np.frombuffer(row.mean_token, dtype=np.float32).copy()),
                richness=row.richness,
                uniqueness=row.uniqueness,
                stream_id=row.stream,
                segment_index=row.seg_index,
                frame_offset=row.frame_offset,
                method=row.method,
                deepstack=self.shards.deepstack(t, row_dim(t, self.dim), device),
            )
        except (ShapeError, ValueError, RuntimeError) as err:
            raise CorruptShardError(f"segment {sid}: shard {shard} holds inconsistent tensors ({err})", [sid]) from None

    def _cache_get(self, shard: str) -> dict[str, torch.Tensor] | None:
        with self._cache_lock:
            t = self._cache.get(shard)
            if t is not None:
                self._cache.move_to_end(shard)
            return t

    def _cache_put(self, shard: str, tensors: dict[str, torch.Tensor]) -> None:
        size = self.config.cache_segments
        if size <= 0:
            return
        with self._cache_lock:
            self._cache[shard] = tensors
            self._cache.move_to_end(shard)
            while len(self._cache) > size:
                self._cache.popitem(last=False)

    def get(self, ids: Iterable[int], device: torch.device | str | None = None) -> list[CompressedSegment]:
        """The stored segments, in the order asked, tokens float16 [n, D] dequantized on ``device``
        (default CPU; pass the model's). Evicted ids raise SegmentEvictedError, unknown ids
        UnknownSegmentError, an unreadable shard CorruptShardError."""
        ids = [int(i) for i in ids]
        if not ids:
            return []
        with self._lock.read():
            rows = self.manifest.rows(ids)  # one query for all
            unknown = [i for i in ids if i not in rows]
            if unknown:
                raise UnknownSegmentError(f"no segment with id(s) {unknown} in {self.root}")
            evicted = [i for i in ids if rows[i].status == "evicted"]
            if evicted:
                spans = ", ".join(f"{rows[i].start:.1f}-{rows[i].end:.1f} s" for i in evicted)
                raise SegmentEvictedError(
                    f"segment(s) {evicted} ({spans}) were evicted under the memory cap; nothing was "
                    "retained for that time. Raise the cap to keep more",
                    evicted,
                )
            return [self._load_fresh(i, rows[i].shard, device, rows[i]) for i in ids]

    def _load_fresh(
        self, sid: int, shard: str, device: torch.device | str | None = None, row: SegmentRow | None = None
    ) -> CompressedSegment:
        """Load a segment; a reader racing the writer in another process may find that the
        writer has just replaced the shard it was told of: it then follows the manifest."""
        for attempt in range(3):
            try:
                return self._load(sid, shard, device, row if attempt == 0 else None)
            except CorruptShardError:
                if not self.read_only:
                    raise
                now = self.manifest.states([sid]).get(sid)
                if now is None or now[0] == "evicted" or now[1] == shard:
                    raise
                shard = now[1]
        return self._load(sid, shard, device)

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
            time_filter(time_range, None)  # validates the range
        with self._lock.read():
            allowed = None
            if time_range is not None or streams is not None:
                allowed = self._catalog.mask(time_range, streams)
                if not allowed.any():
                    return [[] for _ in range(q.shape[0])]
            scores, found = self._index.search(q, k, allowed)
            infos = self.manifest.infos(sorted({int(i) for i in found.flatten() if i >= 0}))
        return [
            [Hit(float(s), infos[int(i)]) for s, i in zip(srow, irow) if i >= 0 and int(i) in infos]
            for srow, irow in zip(scores, found)
        ]

    def cover(
        self,
        queries: torch.Tensor | np.ndarray,
        count: int,
        time_range: tuple[float, float] | None = None,
        streams: Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        """Up to ``count`` segments (live or evicted) evenly spaced in time over the filter, scored
        against each query, in time order: what a coarse view of a long range draws from, beside
        the top-k of :meth:`search`. Reads the in-memory catalog and scores just those keys (an
        exact scan), so its cost does not grow with the memory."""
        q = np.asarray(
            queries.detach().cpu().float() if isinstance(queries, torch.Tensor) else queries, dtype=np.float32
        )
        q = q.reshape(1, -1) if q.ndim == 1 else q
        if self._index is None or count < 1:
            return [[] for _ in range(q.shape[0])]
        if q.shape[1] != self.key_dim:
            raise ShapeError(f"queries must have {self.key_dim} dims (the memory's keys), got {q.shape[1]}")
        if time_range is not None:
            time_filter(time_range, None)
        with self._lock.read():
            ids = self._catalog.spread(count, time_range, streams)
            if not ids:
                return [[] for _ in range(q.shape[0])]
            allowed = np.zeros(len(self._catalog.present), dtype=bool)
            allowed[ids] = True
            scores, found = self._index.search(q, len(ids), allowed)
            infos = self.manifest.infos(ids)
        rank = {sid: j for j, sid in enumerate(ids)}  # time order
        return [
            sorted(
                (Hit(float(sc), infos[int(i)]) for sc, i in zip(srow, irow) if i >= 0 and int(i) in infos),
                key=lambda h: rank[h.segment.id],
            )
            for srow, irow in zip(scores, found)
        ]

    def timeline(
        self, stream: str | None = None, start: float | None = None, end: float | None = None
    ) -> list[SegmentInfo]:
        """Segments (live and evicted) overlapping [start, end], in time order."""
        lo = -float("inf") if start is None else start
        hi = float("inf") if end is None else end
        with self._lock.read():
            return self.manifest.timeline((lo, hi), None if stream is None else [stream])

    def segment_counts(self) -> tuple[int, int]:
        """(live, evicted) segments, from the manifest without touching the shards."""
        with self._lock.read():
            live, _, evicted = self.manifest.counts()
        return live, evicted

    def newest(self, stream: str, *, live_only: bool = False) -> SegmentInfo | None:
        """The latest segment of ``stream`` (None when it has none)."""
        with self._lock.read():
            return self.manifest.newest(stream, live_only)

    def end_time(self, streams: Sequence[str] | None = None) -> float | None:
        """The latest end time over ``streams`` (all by default): "now" on the memory's timeline."""
        with self._lock.read():
            return self._catalog.end_time(streams)

    def stats(self) -> MemoryStats:
        """Counts from the manifest and the bytes on disk (walks the shard directory:
        use :attr:`tokens_held` and :meth:`streams` on hot paths)."""
        with self._lock.read():
            live, tokens, evicted = self.manifest.counts()
            event = self.manifest.last_event("rebalance")
        last = None
        if event is not None:
            last = RebalanceReport(**{k: event[k] for k in RebalanceReport.__dataclass_fields__})
        disk = self.shards.disk_bytes() + _sizes(p for p in self.root.iterdir() if p.is_file())
        per_token = 0 if self.dim is None else self.config.token_bytes(self.dim, self.deepstack_levels)
        return MemoryStats(
            tokens_held=tokens,
            token_cap=self.token_cap,
            bytes_held=tokens * per_token,
            disk_bytes=disk,
            segments_live=live,
            segments_evicted=evicted,
            streams=self.streams(),
            last_rebalance=last,
        )

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        """Save the index (writer), close this thread's connection and release the writer
        lock. Idempotent."""
        if self._closed:
            return
        self._stop_migration.set()
        if self._migration is not None:
            self._migration.join()
        with self._write_mutex:
            self._save_index()
            self._closed = True
        self.manifest.close()
        self._release()

    def __enter__(self) -> TokenMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def row_dim(tensors: dict[str, torch.Tensor], dim: int | None) -> int:
    """The token width of a shard: the memory's width (int4 shards are padded to whole groups)."""
    return int(tensors["tokens"].shape[1]) if dim is None else dim


def trim_heap() -> bool:
    """Hand the heap pages freed so far back to the operating system (glibc's ``malloc_trim``).

    glibc keeps freed memory for later allocations, so a process that once held something large
    (the rows read while opening a memory, the Flat index dropped when the HNSW index is swapped
    in) would keep that RSS for good. Called after such one-off work, so a long-running process's
    RSS follows what it holds. -> whether it ran (False where the C library has no malloc_trim)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM is False:
        return False
    _MALLOC_TRIM(0)
    return True


_MALLOC_TRIM: Any = None


def _live_row(sid: int, seg: CompressedSegment, tokens: int) -> LiveRow:
    return LiveRow(
        sid, seg.mean_token.float().cpu(), seg.frame_count, seg.richness, tokens, seg.end_time, seg.stream_id
    )
