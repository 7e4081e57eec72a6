"""Holes in a decoded stream, and the rules that find them.

A *hole* is a stretch of media time with no frames that the source did not mean to leave
empty. Three kinds, told apart the same way in every container:

- ``corrupt``: data was there but could not be used. Signs: packets the decoder rejected
  (counted in ``decode_errors``), or bytes the demuxer skipped while resynchronising (a jump
  in packet byte positions larger than :data:`SKIP_BYTES`, counted in ``skipped_bytes``).
  Described as "corrupt data at T s".
- ``truncated``: the stream stops before the duration the container declares (by more than
  :func:`end_tolerance`) and the file ends where reading stopped. Described as "ends at T s
  of D s declared".
- ``gap``: timestamps jump by more than the gap threshold (:func:`gap_threshold`: 3 sampling
  intervals and at least 1 s) with nothing skipped in between. A variable-frame-rate
  recording can do this on purpose (a still screen), so it is reported, not repaired.

Zero-byte packets are not damage: they mean "repeat the previous picture" (Theora uses them
for duplicated frames); they are counted in ``repeated_frames``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "GAP_INTERVALS",
    "GAP_MIN_SECONDS",
    "SKIP_BYTES",
    "DamageReport",
    "Hole",
    "HoleReason",
    "end_tolerance",
    "gap_threshold",
]

HoleReason = Literal["corrupt", "truncated", "gap"]

GAP_INTERVALS = 3  # a timestamp gap is a hole when longer than this many sampling intervals ...
GAP_MIN_SECONDS = 1.0  # ... and longer than this
SKIP_BYTES = 16 * 1024  # a jump in packet byte positions above this (and 10% of the last packet) is skipped data
TAIL_BYTES = 64 * 1024  # unread bytes after the last packet above this (and 1% of the file): not a truncation


def gap_threshold(interval: float) -> float:
    """Seconds without frames that count as a hole, for a sampling interval in seconds."""
    return max(GAP_MIN_SECONDS, GAP_INTERVALS * interval)


def end_tolerance(frame_step: float) -> float:
    """How far before its declared duration a stream may end without being called truncated."""
    return max(1.0, 3 * frame_step)


@dataclass(frozen=True)
class Hole:
    """No frames from ``start`` to ``end`` (seconds, source clock), and why.

    For ``truncated``, ``end`` is the declared duration. ``errors``: decode errors inside,
    ``skipped_bytes``: bytes the demuxer jumped over inside.
    """

    start: float
    end: float
    reason: HoleReason
    errors: int = 0
    skipped_bytes: int = 0

    @property
    def length(self) -> float:
        return self.end - self.start

    def describe(self) -> str:
        """One line, e.g. ``corrupt data at 8.00 s (no frames from 8.00 to 12.10 s, 40 decode errors)``."""
        if self.reason == "truncated":
            return f"ends at {self.start:.2f} s of {self.end:.2f} s declared"
        if self.reason == "gap":
            return f"gap in timestamps: no frames from {self.start:.2f} to {self.end:.2f} s"
        why = []
        if self.errors:
            why.append(f"{self.errors} decode error{'s' * (self.errors != 1)}")
        if self.skipped_bytes:
            why.append(f"{self.skipped_bytes} bytes skipped")
        extra = f", {', '.join(why)}" if why else ""
        return f"corrupt data at {self.start:.2f} s (no frames from {self.start:.2f} to {self.end:.2f} s{extra})"

    def shifted(self, offset: float) -> Hole:
        return Hole(self.start + offset, self.end + offset, self.reason, self.errors, self.skipped_bytes)


@dataclass
class DamageReport:
    """What one read of a source found: holes in time order, and counts."""

    holes: list[Hole] = field(default_factory=list)
    decode_errors: int = 0
    demux_errors: int = 0
    skipped_bytes: int = 0
    repeated_frames: int = 0

    @property
    def damaged(self) -> bool:
        return bool(self.holes)

    def summary(self) -> str:
        """One line per hole, or ``no damage found``."""
        if not self.holes:
            return "no damage found"
        return "; ".join(h.describe() for h in self.holes)
