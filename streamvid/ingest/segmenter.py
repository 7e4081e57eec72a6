"""Streaming DySeg: cut segments one frame at a time, by the rule in ``streamvid.compress.dyseg``.

g is a frame feature, pluggable: a cheap 16 x 16 centred thumbnail by default. A change of
frame size also cuts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from streamvid.compress.dyseg import CutRule
from streamvid.errors import ConfigError
from streamvid.types import Segment

__all__ = ["StreamingSegmenter", "thumbnail_feature"]


def thumbnail_feature(frame: np.ndarray, size: int = 16) -> torch.Tensor:
    """uint8 [H, W, 3] -> fp32 [size * size * 3]: area-averaged thumbnail in [-0.5, 0.5]."""
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
    x = F.adaptive_avg_pool2d(x, (size, size))  # (1, 3, size, size)
    return (x / 255.0 - 0.5).flatten()


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
            self.rule = CutRule(tau_seg=tau_seg, min_len=min_len, max_len=max_len)
        except ValidationError as err:
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
            if not same_size or self.rule.cut_before(len(self._frames), sim):
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
