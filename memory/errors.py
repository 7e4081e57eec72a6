"""Typed errors of the token memory (all are StreamvidErrors)."""

from __future__ import annotations

from streamvid.errors import ConfigError, ShapeError, StreamvidError


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


class MemoryLockedError(MemoryStoreError, BlockingIOError):
    """Another writer holds the memory's writer lock; ``pid`` is its process id (None if unknown)."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid

    def __str__(self) -> str:
        return self.args[0]


class ReadOnlyMemoryError(MemoryStoreError, PermissionError):
    """A write was asked of a memory opened read-only."""

    def __str__(self) -> str:
        return self.args[0]


class MemoryNotFoundError(MemoryStoreError, FileNotFoundError):
    """A read-only open of a directory that holds no memory."""

    def __str__(self) -> str:
        return self.args[0]


class SettingsConflictError(MemoryStoreError, ConfigError, ShapeError):
    """A model, embedder or setting does not fit what the memory already holds."""
