"""The token memory: compressed segments under a global cap, FAISS-indexed, persistent.

One writer per memory directory (an OS lock, memory/lock.py), any number of read-only
readers. Imports flow one way: ``agents -> memory -> streamvid``.
"""

from memory.config import MemoryConfig, MemorySettings
from memory.errors import (
    CorruptShardError,
    MemoryLockedError,
    MemoryNotFoundError,
    MemoryStoreError,
    ReadOnlyMemoryError,
    SegmentEvictedError,
    SettingsConflictError,
    UnknownSegmentError,
)
from memory.lock import lock_holder
from memory.manifest import SegmentInfo, SourceProgress
from memory.rebalance import RebalancePlan, plan_rebalance, recency_factors
from memory.token_memory import Hit, MemoryStats, RebalanceReport, TokenMemory

__all__ = [
    "CorruptShardError",
    "Hit",
    "MemoryConfig",
    "MemoryLockedError",
    "MemoryNotFoundError",
    "MemorySettings",
    "MemoryStats",
    "MemoryStoreError",
    "ReadOnlyMemoryError",
    "RebalancePlan",
    "RebalanceReport",
    "SegmentEvictedError",
    "SegmentInfo",
    "SettingsConflictError",
    "SourceProgress",
    "TokenMemory",
    "UnknownSegmentError",
    "lock_holder",
    "plan_rebalance",
    "recency_factors",
]
