"""Question answering over a token memory, the write path, live sessions and the LangChain tools.

Imports flow one way: ``cli -> bench -> agents -> memory -> streamvid``. The LangChain glue
is in ``agents.langchain`` (imported on demand).
"""

from agents.ingest import Ingest, IngestStage, StageStats, build_ingest, ingest_complete, source_key
from agents.live import LiveSession, SessionStatus, StreamStatus
from agents.qa import Answer, UsedSegment, VideoQA
from agents.timeparse import parse_clock, parse_time_range

__all__ = [
    "Answer",
    "Ingest",
    "IngestStage",
    "LiveSession",
    "SessionStatus",
    "StageStats",
    "StreamStatus",
    "UsedSegment",
    "VideoQA",
    "build_ingest",
    "ingest_complete",
    "parse_clock",
    "parse_time_range",
    "source_key",
]
