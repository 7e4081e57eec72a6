"""DySeg segmentation (spec 1.1): cut a clip where adjacent frames stop looking alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamvid.errors import ShapeError

__all__ = ["adjacent_similarity", "dyseg_boundaries"]


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
