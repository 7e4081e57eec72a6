"""DySeg segmentation (docs/algorithms.md, "DySeg"): cut a clip where adjacent frames stop looking alike.

Two forms of one idea, both here:

- offline (:func:`dyseg_boundaries`): cut after the c-1 smallest adjacent similarities and
  after every one below tau_seg (the published rule; it needs the whole clip);
- streaming (:class:`CutRule`, :func:`streaming_boundaries`): cut before frame l when the open
  segment has ``max_len`` frames, or when cos(g_{l-1}, g_l) < tau_seg and the open segment
  has at least ``min_len`` frames; the end of the stream closes the last segment. The
  streaming segmenter applies it one frame at a time; ``streaming_boundaries`` is its batch form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator

from streamvid.errors import ShapeError

__all__ = ["CutRule", "adjacent_similarity", "dyseg_boundaries", "streaming_boundaries"]


def adjacent_similarity(frame_features: torch.Tensor) -> torch.Tensor:
    """t_l = cos(g_l, g_{l+1}). frame_features: [L, D] -> fp32 [L-1]."""
    if frame_features.ndim != 2:
        raise ShapeError(f"frame features must be [L, D], got {list(frame_features.shape)}")
    g = frame_features.float()
    return F.cosine_similarity(g[:-1], g[1:], dim=-1)


def dyseg_boundaries(frame_features: torch.Tensor, c: int = 8, tau_seg: float = 0.9) -> list[int]:
    """Offline DySeg: cut after the c-1 smallest t_l and after every t_l < tau_seg.

    frame_features: [L, D] (the mean token of each frame is fine).
    Returns segment starts plus the end: [0, b_1, ..., L], strictly increasing.
    """
    length = frame_features.shape[0]
    if length <= 1:
        return [0, length]
    sim = adjacent_similarity(frame_features)  # (L-1,)
    cut = sim < tau_seg
    k = min(max(c - 1, 0), length - 1)
    if k > 0:
        cut[torch.topk(sim, k=k, largest=False).indices] = True
    cuts = (torch.nonzero(cut).flatten() + 1).tolist()  # a cut after l starts a segment at l+1
    return [0, *cuts, length]


class CutRule(BaseModel):
    """The streaming cut rule: tau_seg (cosine threshold), min_len and max_len (frames)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tau_seg: float = Field(0.9, ge=-1.0, le=1.0)
    min_len: int = Field(2, ge=1)
    max_len: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _lengths(self) -> CutRule:
        if self.min_len > self.max_len:
            raise ValueError(f"min_len ({self.min_len}) must not exceed max_len ({self.max_len})")
        return self

    def cut_before(self, open_len: int, similarity: float) -> bool:
        """Whether the next frame starts a new segment, given the open segment's length and the
        cosine similarity of the next frame's feature to the previous frame's."""
        return open_len >= self.max_len or (similarity < self.tau_seg and open_len >= self.min_len)


def streaming_boundaries(frame_features: torch.Tensor, rule: CutRule | None = None) -> list[int]:
    """The streaming rule applied to a whole clip. frame_features: [L, D] -> starts plus the end."""
    rule = rule or CutRule()
    length = frame_features.shape[0]
    if length == 0:
        return [0]
    sims = adjacent_similarity(frame_features).tolist() if length > 1 else []  # (L-1,)
    starts = [0]
    for i in range(1, length):
        if rule.cut_before(i - starts[-1], sims[i - 1]):
            starts.append(i)
    return [*starts, length]
