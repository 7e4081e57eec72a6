"""The token memory: compressed segments under a global cap, FAISS-indexed, persistent.

Imports flow one way: ``agents -> memory -> streamvid``.
"""

from memory.config import MemoryConfig
from memory.errors import CorruptShardError, MemoryStoreError, SegmentEvictedError, UnknownSegmentError
from memory.manifest import SegmentInfo
from memory.rebalance import RebalancePlan, plan_rebalance, recency_factors
from memory.token_memory import Hit, MemoryStats, RebalanceReport, TokenMemory

__all__ = [
    "CorruptShardError",
    "Hit",
    "MemoryConfig",
    "MemoryStats",
    "MemoryStoreError",
    "RebalancePlan",
    "RebalanceReport",
    "SegmentEvictedError",
    "SegmentInfo",
    "TokenMemory",
    "UnknownSegmentError",
    "plan_rebalance",
    "recency_factors",
]
