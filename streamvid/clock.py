"""One clock format for stream times, everywhere: prompts, answers, the CLI and the service.

``m:ss`` under an hour, ``h:mm:ss`` from an hour on (seconds rounded; negative times
read as 0). ``parse_clock`` in ``agents.timeparse`` reads both back.
"""

from __future__ import annotations

__all__ = ["format_clock"]


def format_clock(seconds: float) -> str:
    """75.0 -> '1:15'; 3723.0 -> '1:02:03'."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
