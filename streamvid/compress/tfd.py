"""Temporal Fingerprint Difference (TFD), see docs/algorithms.md, "TFD".

For each spatial position p of a segment with V frames, F_p[l, l'] = <h[l,p], h[l',p]>
over unit-normalised tokens, and

    TFD(p) = sum_{l=0}^{V-2} sum_{l'=0}^{V-1} |F_p[l+1, l'] - F_p[l, l']| / ((V-1) V).

Low TFD means the position is temporally consistent (static background).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from streamvid.errors import ShapeError

__all__ = ["temporal_fingerprint_difference", "IncrementalTFD", "static_positions"]


def temporal_fingerprint_difference(tokens: torch.Tensor) -> torch.Tensor:
    """Batch TFD. tokens: [V, N, D] -> tfd: fp32 [N] (zeros when V == 1)."""
    if tokens.ndim != 3:
        raise ShapeError(f"TFD takes [V, N, D] tokens, got {list(tokens.shape)}")
    v, n, _ = tokens.shape
    if v < 2:
        return torch.zeros(n, dtype=torch.float32, device=tokens.device)
    h = F.normalize(tokens.float(), dim=-1)
    gram = torch.einsum("lpd,mpd->plm", h, h)  # (N, V, V): F_p for every p
    diffs = (gram[:, 1:, :] - gram[:, :-1, :]).abs()  # (N, V-1, V)
    return diffs.sum(dim=(1, 2)) / ((v - 1) * v)


class IncrementalTFD:
    """TFD of a growing segment, one frame at a time.

    Keeps the normalised frames, the last Gram row of every position and the running
    sum of |row differences|. Adding frame n costs O(N * n * D) and the value equals
    :func:`temporal_fingerprint_difference` on the frames seen so far.
    """

    def __init__(self) -> None:
        self._frames: list[torch.Tensor] = []  # each (N, D) fp32, unit norm
        self._last_row: torch.Tensor | None = None  # (N, n): F_p[n-1, :]
        self._abs_sum: torch.Tensor | None = None  # (N,)

    @property
    def num_frames(self) -> int:
        return len(self._frames)

    def reset(self) -> None:
        self.__init__()

    def add(self, frame_tokens: torch.Tensor) -> None:
        """frame_tokens: [N, D] (or [h, w, D]) of the next frame."""
        if frame_tokens.ndim == 3:
            frame_tokens = frame_tokens.reshape(-1, frame_tokens.shape[-1])  # (h*w, D)
        if frame_tokens.ndim != 2:
            raise ShapeError(f"IncrementalTFD.add takes [N, D] tokens, got {list(frame_tokens.shape)}")
        h_new = F.normalize(frame_tokens.float(), dim=-1)
        if self._frames and self._frames[0].shape != h_new.shape:
            raise ShapeError(
                f"frame has {list(h_new.shape)} tokens but the segment started with "
                f"{list(self._frames[0].shape)}; start a new segment when the grid changes"
            )
        self._frames.append(h_new)
        stacked = torch.stack(self._frames, dim=1)  # (N, n+1, D)
        col = torch.einsum("pld,pd->pl", stacked, h_new)  # (N, n+1): F_p[l, n] = F_p[n, l]
        n = col.shape[1] - 1
        if n == 0:
            self._abs_sum = torch.zeros(col.shape[0], dtype=torch.float32, device=col.device)
        else:
            assert self._last_row is not None and self._abs_sum is not None
            # new column n in the old adjacent row pairs (l, l+1), l = 0..n-2
            self._abs_sum += (col[:, 1:n] - col[:, : n - 1]).abs().sum(dim=1)
            # the new row pair (n-1, n) over every column 0..n
            prev_row = torch.cat([self._last_row, col[:, n - 1 : n]], dim=1)  # F_p[n-1, 0..n]
            self._abs_sum += (col - prev_row).abs().sum(dim=1)
        self._last_row = col

    def value(self) -> torch.Tensor:
        """Current TFD: fp32 [N] (zeros before the second frame)."""
        if self._abs_sum is None:
            raise ShapeError("IncrementalTFD has no frames yet; call add() first")
        v = len(self._frames)
        if v < 2:
            return torch.zeros_like(self._abs_sum)
        return self._abs_sum / ((v - 1) * v)


def static_positions(tfd: torch.Tensor, num_frames: int, rho: float) -> torch.Tensor:
    """S_k: bool [N], the floor(rho * N) positions with the smallest TFD (none for one frame)."""
    n = tfd.shape[0]
    mask = torch.zeros(n, dtype=torch.bool, device=tfd.device)
    count = math.floor(rho * n)
    if num_frames < 2 or count <= 0:
        return mask
    idx = torch.topk(tfd, k=min(count, n), largest=False).indices
    mask[idx] = True
    return mask
