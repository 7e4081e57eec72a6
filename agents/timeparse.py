"""Simple time references in questions, turned into a time filter (seconds of stream time).

Understood (case-insensitive), with ``now`` the newest time in the memory:

- "in the last 5 minutes" / "last 30 seconds" / "past 2 hours"  -> (now - span, now)
- "in the first 10 minutes"                                    -> (0, span)
- "between 1:00 and 2:30" / "from 0:45 to 1:10"                -> (60, 150) / (45, 70)
- "at 12:30" / "at 1:02:03" / "around 90s"                      -> (t - 10, t + 10)

Clock times are m:ss or h:mm:ss from the start of the stream (what
``streamvid.clock.format_clock`` writes); plain numbers may carry s/sec/seconds,
m/min/minutes or h/hours.
"""

from __future__ import annotations

import re

__all__ = ["parse_time_range", "parse_clock", "AT_WINDOW_S"]

AT_WINDOW_S = 10.0
_UNITS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
}
_NUM = r"(\d+(?:\.\d+)?)"
_UNIT = r"(s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?)"
_CLOCK = r"(\d{1,2}:\d{2}(?::\d{2})?|\d+(?:\.\d+)?\s*(?:s|secs?|seconds?|m|mins?|minutes?|h|hrs?|hours?)\b)"


def parse_clock(text: str) -> float:
    """'1:02:03' -> 3723.0, '2:30' -> 150.0, '90s' -> 90.0, '2 min' -> 120.0."""
    text = text.strip().lower()
    if ":" in text:
        parts = [float(p) for p in text.split(":")]
        value = 0.0
        for p in parts:
            value = value * 60 + p
        return value
    m = re.fullmatch(_NUM + r"\s*" + _UNIT, text)
    if not m:
        raise ValueError(f"not a time: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_time_range(question: str, now: float | None) -> tuple[float, float] | None:
    """The time filter a question asks for, or None."""
    q = question.lower()
    m = re.search(r"\b(?:last|past|previous)\s+(?:" + _NUM + r"\s*)?" + _UNIT + r"\b", q)
    if m and now is not None:
        span = float(m.group(1) or 1) * _UNITS[m.group(2)]
        return (max(0.0, now - span), now)
    m = re.search(r"\bfirst\s+(?:" + _NUM + r"\s*)?" + _UNIT + r"\b", q)
    if m:
        return (0.0, float(m.group(1) or 1) * _UNITS[m.group(2)])
    m = re.search(r"\b(?:between|from)\s+" + _CLOCK + r"\s+(?:and|to|-)\s+" + _CLOCK, q)
    if m:
        a, b = parse_clock(m.group(1)), parse_clock(m.group(2))
        return (min(a, b), max(a, b))
    m = re.search(r"\b(?:at|around)\s+" + _CLOCK, q)
    if m:
        t = parse_clock(m.group(1))
        return (max(0.0, t - AT_WINDOW_S), t + AT_WINDOW_S)
    return None
