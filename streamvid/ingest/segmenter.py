"""Streaming DySeg (spec 1.1, streaming form): cut segments one frame at a time.

A cut happens before frame l when the open segment already has ``max_len`` frames,
or when cos(g_{l-1}, g_l) < tau_seg and the open segment has at least ``min_len``
frames. The end of the stream closes the last segment, whatever its length.
g is a cheap frame feature (a 16 x 16 thumbnail, centred), pluggable.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from streamvid.errors import ConfigError
from streamvid.types import Segment

__all__ = ["SegmenterConfig", "StreamingSegmenter", "thumbnail_feature", "segment_boundaries"]


def thumbnail_feature(frame: np.ndarray, size: int = 16) -> torch.Tensor:
    """uint8 [H, W, 3] -> fp32 [size * size * 3]: area-averaged thumbnail in [-0.5, 0.5]."""
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    x = F.adaptive_avg_pool2d(x, (size, size))  # (1, 3, size, size)
    return (x / 255.0 - 0.5).flatten()


class SegmenterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tau_seg: float = Field(0.9, ge=-1.0, le=1.0)
    min_len: int = Field(2, ge=1)
    max_len: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _lengths(self) -> SegmenterConfig:
        if self.min_len > self.max_len:
            raise ValueError(f"min_len ({self.min_len}) must not exceed max_len ({self.max_len})")
        return self


def _should_cut(open_len: int, similarity: float, cfg: SegmenterConfig) -> bool:
    return open_len >= cfg.max_len or (similarity < cfg.tau_seg and open_len >= cfg.min_len)


def segment_boundaries(features: torch.Tensor, tau_seg: float = 0.9, min_len: int = 2, max_len: int = 16) -> list[int]:
    """Batch form of the same rule. features: [L, D] -> segment starts plus the end."""
    cfg = SegmenterConfig(tau_seg=tau_seg, min_len=min_len, max_len=max_len)
    length = features.shape[0]
    if length == 0:
        return [0]
    sims = F.cosine_similarity(features[:-1].float(), features[1:].float(), dim=-1).tolist()  # (L-1,)
    starts = [0]
    for i in range(1, length):
        if _should_cut(i - starts[-1], sims[i - 1], cfg):
            starts.append(i)
    return [*starts, length]


class StreamingSegmenter:
    """Push frames one at a time; get back each Segment as it closes."""

    def __init__(
        self,
        tau_seg: float = 0.9,
        min_len: int = 2,
        max_len: int = 16,
        *,
        feature: Callable[[np.ndarray], torch.Tensor] = thumbnail_feature,
        stream_id: str = "default",
    ) -> None:
        try:
            self.config = SegmenterConfig(tau_seg=tau_seg, min_len=min_len, max_len=max_len)
        except ValueError as err:
            raise ConfigError(f"bad segmenter options: {err}") from None
        self.feature = feature
        self.stream_id = stream_id
        self._frames: list[np.ndarray] = []
        self._times: list[float] = []
        self._last_feature: torch.Tensor | None = None
        self._index = 0

    @property
    def open_length(self) -> int:
        return len(self._frames)

    def push(self, t: float, frame: np.ndarray) -> Segment | None:
        """Add a frame; returns the segment it closed, if any."""
        g = self.feature(frame)
        closed = None
        if self._frames:
            sim = float(F.cosine_similarity(self._last_feature, g, dim=0))
            same_size = frame.shape == self._frames[0].shape
            if not same_size or _should_cut(len(self._frames), sim, self.config):
                closed = self._close()
        self._frames.append(frame)
        self._times.append(t)
        self._last_feature = g
        return closed

    def flush(self) -> Segment | None:
        """End of stream: close the open segment, if any."""
        return self._close() if self._frames else None

    def _close(self) -> Segment:
        segment = Segment(
            frames=torch.from_numpy(np.stack(self._frames)),  # (T, H, W, 3)
            timestamps=torch.tensor(self._times, dtype=torch.float64),
            stream_id=self.stream_id,
            index=self._index,
        )
        self._index += 1
        self._frames, self._times = [], []
        return segment
