"""streamvid: ask questions about live camera feeds and very long videos.

Importing streamvid is cheap: it does not import transformers or touch CUDA.
"""

from streamvid.compress import create_compressor, list_compressors, remerge
from streamvid.errors import (
    BudgetError,
    ConfigError,
    EmptyInputError,
    ShapeError,
    StreamvidError,
    UnknownNameError,
)
from streamvid.types import CompressedSegment, Segment, TokenGrid

__version__ = "0.1.0"

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
