"""Streaming ingest: sources -> timestamp sampler -> streaming DySeg -> segments."""

from streamvid.ingest.pipeline import DropPolicy, IngestPipeline, IngestStats
from streamvid.ingest.sampler import Sampler
from streamvid.ingest.segmenter import StreamingSegmenter, segment_boundaries, thumbnail_feature
from streamvid.ingest.sources import (
    FileSource,
    IterableSource,
    NetworkSource,
    RawFrame,
    VideoSource,
    WebcamSource,
    open_source,
)

__all__ = [
    "DropPolicy",
    "FileSource",
    "IngestPipeline",
    "IngestStats",
    "IterableSource",
    "NetworkSource",
    "RawFrame",
    "Sampler",
    "StreamingSegmenter",
    "VideoSource",
    "WebcamSource",
    "open_source",
    "segment_boundaries",
    "thumbnail_feature",
]
