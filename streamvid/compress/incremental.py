"""The open segment of a live stream, compressed as it grows (see docs/algorithms.md, "TFD", "ATS", "DTM").

Frames arrive already encoded, one micro-batch at a time. :class:`IncrementalSegment` keeps,
per frame, the tokens, the saliency (taken at encode time: the grid's own, or the token norm
when the encoder has no pooling head, as the batch compressor does) and the score maps, and
folds each frame into an :class:`~streamvid.compress.tfd.IncrementalTFD` as it arrives. When the
segment closes only the per-segment statistics, the CABA budget, ATS with the static penalty
and DTM remain; the result equals ``compressor.compress(grid, boundaries=[0, V])`` on the same
frames (tested to 1e-5). :meth:`IncrementalSegment.peek` compresses the open segment on demand
without closing it (a live question about "now").

Compressors other than InfoMerge/FastVID have no incremental part: their state keeps the
frames and runs the batch compressor at close.

Everything stays on the compressor's device (or where the tokens are); adding a frame makes no
host round-trip.
"""

from __future__ import annotations

import torch

from streamvid.compress.base import Compressor
from streamvid.compress.caba import segment_stats, uniqueness
from streamvid.compress.infomerge import InfoMerge
from streamvid.compress.tfd import IncrementalTFD
from streamvid.errors import EmptyInputError, ShapeError
from streamvid.types import CompressedSegment, TokenGrid

__all__ = ["IncrementalSegment"]


class IncrementalSegment:
    """An open segment: ``add`` encoded frames, ``close`` (or ``peek``) for its CompressedSegment.

    compressor: any compressor; InfoMerge and FastVID use the incremental path.
    """

    def __init__(self, compressor: Compressor, *, stream_id: str = "default") -> None:
        self.compressor = compressor
        self.stream_id = stream_id
        self._incremental = isinstance(compressor, InfoMerge)
        device = compressor.config.device
        self._device = torch.device(device) if device is not None else None
        self._reset()

    def _reset(self) -> None:
        self._tokens: list[torch.Tensor] = []  # each [b, h, w, D]
        self._times: list[torch.Tensor] = []  # each float64 [b]
        self._saliency: list[torch.Tensor] = []  # each fp32 [b, N], the saliency ATS ranks
        self._grid_saliency: list[torch.Tensor] | None = []  # the grid's own saliency, when it has one
        self._scores: dict[str, list[torch.Tensor]] = {}
        self._deepstack: list[torch.Tensor] = []  # each [L, b, h, w, D] when the encoder gives them
        self._source = "none"
        self._tfd = IncrementalTFD() if self._incremental and self.compressor.use_tfd else None
        self._frames = 0

    @property
    def num_frames(self) -> int:
        return self._frames

    def add(self, grid: TokenGrid) -> None:
        """Fold encoded frames in. grid: tokens [b, h, w, D] (+ saliency [b, h, w], score maps,
        DeepStack features [L, b, h, w, D])."""
        if self._tokens and tuple(grid.tokens.shape[1:]) != tuple(self._tokens[0].shape[1:]):
            raise ShapeError(
                f"frames of shape {list(grid.tokens.shape[1:])} do not match the open segment's "
                f"{list(self._tokens[0].shape[1:])}; close the segment when the grid changes"
            )
        if self._tokens and (grid.deepstack_levels != (self._deepstack[0].shape[0] if self._deepstack else 0)):
            raise ShapeError(
                f"frames with {grid.deepstack_levels} DeepStack levels do not match the open segment's; "
                "encode every frame of a stream with the same model"
            )
        tokens, sal = grid.tokens, grid.saliency
        if self._device is not None:
            tokens = tokens.to(self._device)
            sal = None if sal is None else sal.to(self._device)
        b, h, w, dim = tokens.shape
        with torch.inference_mode():
            x = tokens.reshape(b, h * w, dim).float()  # (b, N, D)
            # saliency at encode time; without a pooling head the token's feature norm
            self._saliency.append(x.norm(dim=-1) if sal is None else sal.reshape(b, h * w).float())
            if self._tfd is not None:
                for i in range(b):
                    self._tfd.add(x[i])
        self._tokens.append(tokens)
        if grid.deepstack is not None:
            self._deepstack.append(grid.deepstack if self._device is None else grid.deepstack.to(self._device))
        self._times.append(grid.timestamps.double())
        if sal is None or self._grid_saliency is None:
            self._grid_saliency = None
        else:
            self._grid_saliency.append(sal)
        for name, score in grid.scores.items():
            self._scores.setdefault(name, []).append(score if self._device is None else score.to(self._device))
        self._source = grid.saliency_source
        self._frames += b

    def grid(self, segment_index: int = 0) -> TokenGrid:
        """The open segment's frames as one TokenGrid [V, h, w, D]."""
        if not self._tokens:
            raise EmptyInputError("the open segment has no frames yet")
        scores = {k: torch.cat(v) for k, v in self._scores.items() if len(v) == len(self._tokens)}
        return TokenGrid(
            tokens=torch.cat(self._tokens),
            timestamps=torch.cat(self._times),
            saliency=None if self._grid_saliency is None else torch.cat(self._grid_saliency),
            stream_id=self.stream_id,
            segment_index=segment_index,
            saliency_source=self._source,
            scores=scores,
            deepstack=torch.cat(self._deepstack, dim=1) if self._deepstack else None,
        )

    def peek(self, segment_index: int = 0) -> CompressedSegment:
        """The open segment compressed now, at the compressor's ratio; the segment stays open."""
        grid = self.grid(segment_index)
        if not self._incremental:
            (out,) = self.compressor.compress(grid, boundaries=[0, grid.num_frames])
            return out
        comp = self.compressor
        assert isinstance(comp, InfoMerge)
        v, h, w, dim = grid.tokens.shape
        with torch.inference_mode():
            x = grid.tokens.reshape(v, h * w, dim).float()  # (V, N, D)
            sal = torch.cat(self._saliency)  # (V, N)
            stats = segment_stats(x)
            uniq = uniqueness(stats.mean_token[None], torch.tensor([v]))  # (1,): zero for one segment
            salient, quotas = comp._quotas(x, [(0, v)], [stats])
            tfd = None if self._tfd is None else self._tfd.value()
            return comp._segment(grid, x, sal, 0, v, 0, salient, quotas[0], stats, float(uniq[0]), tfd=tfd)

    def close(self, segment_index: int = 0) -> CompressedSegment:
        """Compress the segment and start a new, empty one."""
        out = self.peek(segment_index)
        self._reset()
        return out
