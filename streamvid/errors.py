"""Typed errors. Every message says what to do about it.

All errors derive from :class:`StreamvidError`, and each also derives from the
builtin it refines (``ValueError``, ``LookupError``), so callers can catch either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


class StreamvidError(Exception):
    """Base class of every error streamvid raises on purpose."""


class ConfigError(StreamvidError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class ShapeError(StreamvidError, ValueError):
    """A tensor has the wrong rank, shape or dtype for the stage it was given to."""


class EmptyInputError(ShapeError):
    """A clip, segment or token set has nothing in it."""


class BudgetError(StreamvidError, ValueError):
    """A token budget cannot be met (for example, smaller than one token per segment)."""


class UnknownNameError(StreamvidError, LookupError):
    """A registry was asked for a name it does not know."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(self.known)}")

    def __str__(self) -> str:  # LookupError would otherwise repr() the message
        return self.args[0]


class SourceError(StreamvidError, OSError):
    """A video source cannot be opened or read."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """The file or device does not exist."""


class NoVideoStreamError(SourceError):
    """The input holds no video stream (or is not a video at all)."""


class EmptyFileError(NoVideoStreamError):
    """The file has zero bytes."""


class UnsupportedCodecError(SourceError):
    """The video stream's codec has no decoder in this FFmpeg build."""


class CorruptVideoError(SourceError):
    """Decoding failed part-way; ``time`` and ``frame`` say where (last good frame)."""

    def __init__(self, message: str, time: float | None = None, frame: int | None = None) -> None:
        super().__init__(message)
        self.time = time
        self.frame = frame

    def __str__(self) -> str:
        return self.args[0]


class DamagedVideoError(CorruptVideoError):
    """Strict ingest found a hole (corrupt data, skipped decode errors, a timestamp gap, an early end).

    ``holes`` lists what was found so far (``streamvid.ingest.Hole``); the message names the first.
    """

    def __init__(
        self, message: str, time: float | None = None, frame: int | None = None, holes: Sequence[Any] = ()
    ) -> None:
        super().__init__(message, time, frame)
        self.holes = list(holes)


class TruncatedVideoError(DamagedVideoError):
    """The file ends before the duration its container declares, or lacks its index (mp4 moov)."""


class StreamDisconnectedError(SourceError):
    """A live source died and did not come back within the allowed reconnect attempts."""

    def __init__(self, message: str, attempts: int = 0) -> None:
        super().__init__(message)
        self.attempts = attempts

    def __str__(self) -> str:
        return self.args[0]
