"""streamvid: ask questions about live camera feeds and very long videos.

Importing streamvid is cheap: it imports neither torch nor transformers until a name
that needs them is used (``streamvid.create_compressor``, ``streamvid.TokenGrid``, ...),
and it never touches CUDA.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from streamvid.errors import (
    BudgetError,
    ConfigError,
    EmptyInputError,
    ShapeError,
    StreamvidError,
    UnknownNameError,
)

if TYPE_CHECKING:
    from streamvid.compress import create_compressor, list_compressors, remerge
    from streamvid.types import CompressedSegment, Segment, TokenGrid

__version__ = "0.1.0"

_LAZY = {
    "create_compressor": "streamvid.compress",
    "list_compressors": "streamvid.compress",
    "remerge": "streamvid.compress",
    "CompressedSegment": "streamvid.types",
    "Segment": "streamvid.types",
    "TokenGrid": "streamvid.types",
}

__all__ = [
    "BudgetError",
    "CompressedSegment",
    "ConfigError",
    "EmptyInputError",
    "Segment",
    "ShapeError",
    "StreamvidError",
    "TokenGrid",
    "UnknownNameError",
    "create_compressor",
    "list_compressors",
    "remerge",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'streamvid' has no attribute {name!r}")
