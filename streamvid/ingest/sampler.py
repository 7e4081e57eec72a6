"""Frame sampling by timestamp (not by counting frames), with one resize."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from streamvid.ingest.sources import RawFrame

__all__ = ["Sampler", "SamplerConfig", "evenly_spaced"]


def evenly_spaced(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(total)``, first and last included
    (all of them when ``total <= count``; the middle one when ``count == 1``)."""
    if total <= count:
        return list(range(total))
    if count == 1:
        return [total // 2]
    return [round(i * (total - 1) / (count - 1)) for i in range(count)]


class SamplerConfig(BaseModel):
    """fps: target rate (None keeps every frame); max_size: longest side in pixels (None: native)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fps: float | None = Field(2.0, gt=0)
    max_size: int | None = Field(448, ge=16)


class Sampler:
    """Keeps the first frame of every 1/fps time slot, so variable frame rate and
    sparse timestamps sample correctly; converts kept frames to RGB at a size whose
    longest side is at most ``max_size`` (aspect kept, even sides), in one step.
    """

    def __init__(self, fps: float | None = 2.0, max_size: int | None = 448) -> None:
        self.config = SamplerConfig(fps=fps, max_size=max_size)
        self._last_slot: int | None = None

    def reset(self) -> None:
        self._last_slot = None

    def accept(self, t: float) -> bool:
        """Whether a frame at time ``t`` opens a new slot (and so is kept)."""
        fps = self.config.fps
        if fps is None:
            return True
        slot = math.floor(t * fps + 1e-6)
        if self._last_slot is not None and slot <= self._last_slot:
            return False
        self._last_slot = slot
        return True

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        limit = self.config.max_size
        if limit is None or max(width, height) <= limit:
            return width, height
        scale = limit / max(width, height)
        return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)

    def convert(self, frame: RawFrame) -> np.ndarray:
        return frame.rgb(*self.target_size(frame.width, frame.height))

    def __call__(self, frames: Iterable[RawFrame]) -> Iterator[tuple[float, np.ndarray]]:
        for frame in frames:
            if self.accept(frame.time):
                yield frame.time, self.convert(frame)
