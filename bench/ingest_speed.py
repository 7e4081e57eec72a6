"""Ingest throughput: decode + sample + streaming segmentation, as a multiple of real time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.parts import Part
from streamvid.ingest import IngestPipeline, Sampler, StreamingSegmenter

__all__ = ["run_ingest_benchmark"]


def _discard(segment: object) -> None:
    """The sink: the benchmark measures everything up to a closed segment."""


def run_ingest_benchmark(video: Path, fps: float = 2.0, max_size: int = 448, repeats: int = 3) -> dict[str, Any]:
    """Run the file pipeline ``repeats`` times (segments go to a counting sink); report the best."""
    runs = []
    for _ in range(repeats):
        stats = IngestPipeline(
            video,
            _discard,
            sampler=Sampler(fps=fps, max_size=max_size),
            segmenter=StreamingSegmenter(),
        ).run()
        runs.append(stats)
    best = max(runs, key=lambda s: s.realtime_factor)
    return {
        "video": str(video),
        "fps": fps,
        "max_size": max_size,
        "frames_decoded": best.frames_decoded,
        "frames_sampled": best.frames_sampled,
        "segments": best.segments,
        "media_seconds": best.media_seconds,
        "wall_seconds": best.wall_seconds,
        "realtime_factor": best.realtime_factor,
        "all_realtime_factors": [s.realtime_factor for s in runs],
    }


def run(profile: Any, progress: Any = None) -> dict[str, Any]:
    from bench.media import fetch_vtest

    return run_ingest_benchmark(fetch_vtest(), repeats=profile.ingest_repeats)


def markdown(result: dict[str, Any], images: str) -> str:
    i = result
    return (
        f"## Ingest\n\n{Path(i['video']).name}: decode + {i['fps']:g} fps sampling + streaming "
        f"segmentation at **{i['realtime_factor']:.1f}x real time**.\n"
    )


def ratios(result: dict[str, Any]) -> dict[str, float]:
    return {"ingest x real time": result["realtime_factor"]}


PART = Part("ingest", run, markdown, ratios=ratios, needs_video=True)
