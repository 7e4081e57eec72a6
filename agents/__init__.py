"""Question answering over a token memory, live sessions and the LangChain tools.

Imports flow one way: ``agents -> memory -> streamvid``. The LangChain glue is in
``agents.langchain`` (imported on demand).
"""

from agents.indexer import IndexerStats, SegmentIndexer
from agents.live import LiveSession, SessionStatus, StreamStatus
from agents.qa import Answer, UsedSegment, VideoQA
from agents.timeparse import parse_clock, parse_time_range

__all__ = [
    "Answer",
    "IndexerStats",
    "LiveSession",
    "SegmentIndexer",
    "SessionStatus",
    "StreamStatus",
    "UsedSegment",
    "VideoQA",
    "parse_clock",
    "parse_time_range",
]
