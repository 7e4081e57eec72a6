"""Streaming ingest: sources -> timestamp sampler -> streaming DySeg -> segments."""

from streamvid.ingest.pipeline import DropPolicy, IngestPipeline, IngestStats
from streamvid.ingest.sampler import Sampler, evenly_spaced
from streamvid.ingest.segmenter import StreamingSegmenter, thumbnail_feature
from streamvid.ingest.sources import (
    FileSource,
    IterableSource,
    NetworkSource,
    RawFrame,
    VideoSource,
    WebcamSource,
    open_source,
    read_frames,
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
    "evenly_spaced",
    "open_source",
    "read_frames",
    "thumbnail_feature",
]
