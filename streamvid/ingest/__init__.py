"""Streaming ingest: sources -> timestamp sampler -> streaming DySeg -> segments."""

from streamvid.ingest.damage import DamageReport, Hole, gap_threshold
from streamvid.ingest.pipeline import DropPolicy, IngestPipeline, IngestStats
from streamvid.ingest.sampler import Sampler, evenly_spaced
from streamvid.ingest.segmenter import StreamingSegmenter, thumbnail_feature
from streamvid.ingest.sources import (
    FileSource,
    IterableSource,
    NetworkSource,
    RawFrame,
    SourceInfo,
    VideoSource,
    WebcamSource,
    open_source,
    probe_source,
    read_frames,
)

__all__ = [
    "DamageReport",
    "DropPolicy",
    "FileSource",
    "Hole",
    "IngestPipeline",
    "IngestStats",
    "IterableSource",
    "NetworkSource",
    "RawFrame",
    "SourceInfo",
    "Sampler",
    "StreamingSegmenter",
    "VideoSource",
    "WebcamSource",
    "evenly_spaced",
    "gap_threshold",
    "open_source",
    "probe_source",
    "read_frames",
    "thumbnail_feature",
]
