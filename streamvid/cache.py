"""Where streamvid keeps files between runs: ``$STREAMVID_CACHE``, else ``~/.cache/streamvid``."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """The cache directory (not created here; callers create the subdirectory they use)."""
    return Path(os.environ.get("STREAMVID_CACHE", Path.home() / ".cache" / "streamvid"))
