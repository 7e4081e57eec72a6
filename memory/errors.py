"""Typed errors of the token memory (all are StreamvidErrors)."""

from __future__ import annotations

from streamvid.errors import StreamvidError


class MemoryStoreError(StreamvidError):
    """The token memory cannot do what was asked."""


class CorruptShardError(MemoryStoreError, OSError):
    """A segment's tensor shard is missing or unreadable; other segments are unaffected."""

    def __init__(self, message: str, segment_ids: list[int]) -> None:
        super().__init__(message)
        self.segment_ids = segment_ids

    def __str__(self) -> str:
        return self.args[0]


class UnknownSegmentError(MemoryStoreError, LookupError):
    """No segment has this id."""

    def __str__(self) -> str:
        return self.args[0]


class SegmentEvictedError(MemoryStoreError, LookupError):
    """The segment's tokens were evicted under the cap; its key and time range remain."""

    def __init__(self, message: str, segment_ids: list[int]) -> None:
        super().__init__(message)
        self.segment_ids = segment_ids

    def __str__(self) -> str:
        return self.args[0]
