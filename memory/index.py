"""The key index: one strict boundary to FAISS.

Contiguous float32 (n, d) keys, int64 segment ids, -1 means no hit; the index is
described by a factory string and lives on the GPU when FAISS sees one. It is a
cache of the keys in the manifest: saved atomically now and then, and repaired
(missing ids added, extra ids removed) or rebuilt from the manifest at open.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["FLAT", "HNSW", "KeyIndex", "exact_search"]

FLAT = "IDMap2,Flat"
HNSW = "IDMap2,HNSW32,Flat"
# efSearch of the HNSW index: recall@10 against exact search is measured by bench/memory_speed.py.
# At 10^5 keys of 768 dims with the decaying spectrum of image embeddings it was 0.990 at 128 and
# 0.994 at 256 (0.54 ms per query on 2 cores); keys of isotropic noise, the worst case, stay near 0.5.
HNSW_EF_SEARCH = 256
# efConstruction of the HNSW index (FAISS's default is 40). The memory builds its graph in batches
# (the background migration adds 4096 keys at a time, then every add_many its own), which at 40
# left recall@10 at 0.985-0.989 for 10^5 embedding-shaped keys; measured here at 10^5 keys added
# 4096 at a time: 40 -> 0.9887, 80 -> 0.9988, 128 -> 0.9999 recall@10 at efSearch 256, for 16.5,
# 17.6 and 24.4 s of build on 2 cores, with the same query time (0.7-0.9 ms). It is stored in the
# index file; an older index gets it for the keys added from now on.
HNSW_EF_CONSTRUCTION = 128
# a filter that keeps at most this many segments is answered by an exact scan of just those
# (a graph walk restricted to a few ids loses recall)
EXACT_FILTER_MAX = 20_000

# a graph walk for this many queries or fewer runs on one OpenMP thread: FAISS parallelises over
# queries, so one query gains nothing from more threads and pays their start-up and spinning (on a
# loaded 2-core machine 1.3 ms on one thread against 4.8-5.7 ms on two at 3 x 10^4 keys)
SINGLE_THREAD_QUERIES = 4

log = logging.getLogger(__name__)
_threads = {"active": 0, "before": 1}
_threads_lock = threading.Lock()


@contextmanager
def _one_thread():
    """FAISS's OpenMP thread count is process-wide: one thread while any such call runs (calls
    from several threads run side by side), the previous count once the last one ends."""
    faiss = _faiss()
    with _threads_lock:
        if _threads["active"] == 0:
            _threads["before"] = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
        _threads["active"] += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads["active"] -= 1
            if _threads["active"] == 0:
                faiss.omp_set_num_threads(_threads["before"])


def _faiss():
    import faiss

    return faiss


class KeyIndex:
    def __init__(self, dim: int, factory: str = "IDMap2,Flat", metric: str = "ip", use_gpu: bool = True) -> None:
        faiss = _faiss()
        self.dim = dim
        self.factory = factory
        self.metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        self.index = faiss.index_factory(dim, factory, self.metric)
        _tune(self.index)
        self._gpu = None
        if use_gpu and faiss.get_num_gpus() > 0:  # pragma: no cover - needs a GPU
            try:
                self._gpu = faiss.index_cpu_to_all_gpus(self.index)
            except (AttributeError, RuntimeError) as err:
                log.warning("GPU FAISS index unavailable (%s); using the CPU index", err)

    @property
    def _active(self):
        return self._gpu if self._gpu is not None else self.index

    @property
    def ntotal(self) -> int:
        return int(self._active.ntotal)

    def ids(self) -> np.ndarray:
        faiss = _faiss()
        index = self.index if self._gpu is None else faiss.index_gpu_to_cpu(self._gpu)
        return faiss.vector_to_array(index.id_map).astype(np.int64)

    def add(self, keys: np.ndarray, ids: np.ndarray) -> None:
        keys = np.ascontiguousarray(keys, dtype=np.float32).reshape(-1, self.dim)  # (n, d)
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if not self._active.is_trained:
            self._active.train(keys)
        self._active.add_with_ids(keys, ids)

    def remove(self, ids: np.ndarray) -> bool:
        """Remove ids; False when this index type cannot remove (e.g. HNSW): rebuild it then."""
        faiss = _faiss()
        try:
            self._active.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64)))
        except RuntimeError:
            return False
        return True

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """queries: float32 (q, d) -> scores (q, k), ids (q, k) with -1 for no hit.

        allowed: optional bool mask over segment ids (index = id); only those can hit.
        """
        faiss = _faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(k, max(1, self.ntotal)))
        if allowed is None:
            if queries.shape[0] <= SINGLE_THREAD_QUERIES and self._graph:
                with _one_thread():
                    return self._active.search(queries, k)
            return self._active.search(queries, k)
        bits = np.packbits(allowed, bitorder="little")  # kept alive for the call below
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        storage = self._flat_storage()
        if storage is not None and int(allowed.sum()) <= EXACT_FILTER_MAX:
            return exact_search(self.index, storage, queries, k, selector)
        return self._active.search(queries, k, params=faiss.SearchParameters(sel=selector))

    @property
    def _graph(self) -> bool:
        """A graph index on the CPU (its single-query walk does not gain from OpenMP threads)."""
        return self._gpu is None and self._flat_storage() is not None

    def _flat_storage(self):
        """The exact vectors under a graph index (None for a Flat index or on the GPU)."""
        if self._gpu is not None:  # pragma: no cover - needs a GPU
            return None
        faiss = _faiss()
        inner = faiss.downcast_index(self.index.index)
        return getattr(inner, "storage", None)

    def save(self, path: Path) -> None:
        faiss = _faiss()
        index = self.index if self._gpu is None else faiss.index_gpu_to_cpu(self._gpu)
        tmp = path.with_suffix(".tmp")
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, dim: int, factory: str, metric: str, use_gpu: bool) -> KeyIndex | None:
        """The saved index, or None when it is missing, unreadable or of another shape."""
        faiss = _faiss()
        if not path.exists():
            return None
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as err:
            log.warning("index %s unreadable (%s); rebuilding from the manifest", path, err)
            return None
        if index.d != dim or not hasattr(index, "id_map"):
            return None
        out = cls(dim, factory, metric, use_gpu=False)
        _tune(index)
        out.index = index
        if use_gpu and faiss.get_num_gpus() > 0:  # pragma: no cover - needs a GPU
            out._gpu = faiss.index_cpu_to_all_gpus(index)
        return out


def exact_search(idmap, storage, queries: np.ndarray, k: int, selector) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the vectors of ``storage`` (the Flat storage inside ``idmap``) that
    ``selector`` (over segment ids) keeps: queries (q, d) -> scores (q, k), ids (q, k), -1 for none."""
    faiss = _faiss()
    translated = faiss.IDSelectorTranslated(idmap.id_map, selector)
    scores, rows = storage.search(queries, k, params=faiss.SearchParameters(sel=translated))
    ids = faiss.vector_to_array(idmap.id_map).astype(np.int64)
    found = np.where(rows >= 0, ids[np.clip(rows, 0, max(len(ids) - 1, 0))], -1) if len(ids) else rows
    return scores, found


def _tune(index) -> None:
    """The settings of a graph index: efSearch (not stored in its file) and efConstruction."""
    faiss = _faiss()
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else None
    if inner is not None and hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = max(inner.hnsw.efSearch, HNSW_EF_SEARCH)
        inner.hnsw.efConstruction = max(inner.hnsw.efConstruction, HNSW_EF_CONSTRUCTION)
