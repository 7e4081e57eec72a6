"""Core values that flow between the stages: Segment -> TokenGrid -> CompressedSegment.

Each is a plain dataclass of tensors and metadata, validated on construction so a
wrong shape fails where it is made rather than three stages later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch

from streamvid.errors import EmptyInputError, ShapeError

__all__ = ["Segment", "TokenGrid", "CompressedSegment"]


def _check_timestamps(timestamps: torch.Tensor, length: int, what: str) -> None:
    if timestamps.ndim != 1 or timestamps.shape[0] != length:
        raise ShapeError(
            f"{what} timestamps must have shape [{length}], got {list(timestamps.shape)}; "
            "pass one timestamp in seconds per frame"
        )
    if length > 1 and bool((timestamps[1:] < timestamps[:-1]).any()):
        raise ShapeError(f"{what} timestamps must be non-decreasing; sort frames by time first")


@dataclass(frozen=True)
class Segment:
    """A run of decoded frames.

    frames: uint8 [T, H, W, 3] RGB; timestamps: float64 [T] seconds (from pts).
    """

    frames: torch.Tensor
    timestamps: torch.Tensor
    stream_id: str = "default"
    index: int = 0

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise ShapeError(f"Segment frames must be uint8 [T, H, W, 3], got {list(self.frames.shape)}")
        if self.frames.dtype != torch.uint8:
            raise ShapeError(f"Segment frames must be uint8, got {self.frames.dtype}")
        if self.frames.shape[0] == 0:
            raise EmptyInputError("Segment has no frames; segments hold at least one frame")
        _check_timestamps(self.timestamps, self.frames.shape[0], "Segment")

    @property
    def start_time(self) -> float:
        return float(self.timestamps[0])

    @property
    def end_time(self) -> float:
        return float(self.timestamps[-1])


@dataclass(frozen=True)
class TokenGrid:
    """Visual tokens of a clip in the LLM's embedding space.

    tokens: [T, h, w, D]; timestamps: float64 [T]; saliency: optional [T, h, w].
    saliency_source: which signal produced ``saliency`` (recorded with every result,
    e.g. ``"siglip-head"``, ``"feature-norm"``); ``"none"`` when there is none.
    scores: further named per-token maps [T, h, w] an encoder can give, for the
    compressors that use them (see docs/algorithms.md), e.g. ``"attn_received"``
    (attention each token receives in the tower's last layer, heads averaged)
    and ``"attn_received_late"`` (the same in a late layer).
    deepstack: optional [L, T, h, w, D], the DeepStack features of a tower that feeds
    visual features from L of its layers into the first L layers of the language model
    (Qwen3-VL); compressors apply every selection and merge of the tokens to each level
    identically (docs/algorithms.md, "DeepStack"). None for towers without them.
    """

    tokens: torch.Tensor
    timestamps: torch.Tensor
    saliency: torch.Tensor | None = None
    stream_id: str = "default"
    segment_index: int = 0
    saliency_source: str = "none"
    scores: Mapping[str, torch.Tensor] = field(default_factory=dict)
    deepstack: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.tokens.ndim != 4:
            raise ShapeError(
                f"TokenGrid tokens must be [T, h, w, D], got rank {self.tokens.ndim} "
                f"shape {list(self.tokens.shape)}; reshape flat [T, N, D] tokens to the grid"
            )
        if self.tokens.shape[0] == 0:
            raise EmptyInputError("TokenGrid has no frames; give the compressor at least one frame")
        if min(self.tokens.shape[1:]) == 0:
            raise EmptyInputError(f"TokenGrid has an empty axis: {list(self.tokens.shape)}")
        if not self.tokens.is_floating_point():
            raise ShapeError(f"TokenGrid tokens must be floating point, got {self.tokens.dtype}")
        _check_timestamps(self.timestamps, self.tokens.shape[0], "TokenGrid")
        if self.saliency is not None and tuple(self.saliency.shape) != tuple(self.tokens.shape[:3]):
            raise ShapeError(
                f"saliency must be [T, h, w] = {list(self.tokens.shape[:3])}, got {list(self.saliency.shape)}"
            )
        for name, score in self.scores.items():
            if tuple(score.shape) != tuple(self.tokens.shape[:3]):
                raise ShapeError(
                    f"score map {name!r} must be [T, h, w] = {list(self.tokens.shape[:3])}, got {list(score.shape)}"
                )
        if self.deepstack is not None and (
            self.deepstack.ndim != 5 or tuple(self.deepstack.shape[1:]) != tuple(self.tokens.shape)
        ):
            raise ShapeError(
                f"deepstack must be [L, T, h, w, D] with [T, h, w, D] = {list(self.tokens.shape)}, "
                f"got {list(self.deepstack.shape)}; stack the levels on a new first axis"
            )

    @property
    def deepstack_levels(self) -> int:
        """L, the DeepStack levels carried (0 without them)."""
        return 0 if self.deepstack is None else self.deepstack.shape[0]

    @property
    def num_frames(self) -> int:
        return self.tokens.shape[0]

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.tokens.shape[1], self.tokens.shape[2])

    @property
    def tokens_per_frame(self) -> int:
        return self.tokens.shape[1] * self.tokens.shape[2]

    @property
    def dim(self) -> int:
        return self.tokens.shape[3]

    def slice(self, start: int, stop: int, segment_index: int | None = None) -> TokenGrid:
        """Frames [start, stop) as a grid of their own."""
        return replace(
            self,
            tokens=self.tokens[start:stop],
            timestamps=self.timestamps[start:stop],
            saliency=None if self.saliency is None else self.saliency[start:stop],
            scores={k: v[start:stop] for k, v in self.scores.items()},
            deepstack=None if self.deepstack is None else self.deepstack[:, start:stop],
            segment_index=self.segment_index if segment_index is None else segment_index,
        )


@dataclass(frozen=True)
class CompressedSegment:
    """The tokens kept for one segment, with provenance.

    tokens:    [n, D]  (stored dtype, usually fp16/bf16)
    sizes:     int64 [n]  how many original tokens each kept token stands for
    positions: int64 [n, 3]  (t, h, w) of its representative; t counts from the
               segment's first frame, which is frame ``frame_offset`` of the source grid
    times:     float64 [n]  timestamp (seconds) of the representative's frame

    owner:     optional int64 [frame_count * h * w]: for every original token (t, h, w
               raster order within the segment), the index of the kept token that
               stands for it; ``sizes == bincount(owner)``. Kept in memory for
               evaluation, not persisted by the token memory.
    deepstack: optional [L, n, D], the DeepStack features of the kept tokens: each level went
               through exactly the selections and merges of ``tokens`` (None for towers without
               them; persisted by the token memory in its token format).

    Tokens are in temporal (then raster) order, so ``times`` is non-decreasing.
    The segment-level facts (``mean_token``, ``frame_count``, ``richness``) are what
    CABA needs to re-balance budgets later without the raw tokens.
    """

    tokens: torch.Tensor
    sizes: torch.Tensor
    positions: torch.Tensor
    times: torch.Tensor
    grid_size: tuple[int, int]
    frame_count: int
    start_time: float
    end_time: float
    mean_token: torch.Tensor
    richness: float
    uniqueness: float = 0.0
    stream_id: str = "default"
    segment_index: int = 0
    frame_offset: int = 0
    method: str = ""
    owner: torch.Tensor | None = None
    extra: dict[str, float] = field(default_factory=dict)
    deepstack: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        if self.tokens.ndim != 2:
            raise ShapeError(f"CompressedSegment tokens must be [n, D], got {list(self.tokens.shape)}")
        if n == 0:
            raise EmptyInputError("CompressedSegment must keep at least one token")
        if tuple(self.sizes.shape) != (n,) or tuple(self.positions.shape) != (n, 3):
            raise ShapeError(
                f"sizes must be [{n}] and positions [{n}, 3], got "
                f"{list(self.sizes.shape)} and {list(self.positions.shape)}"
            )
        if tuple(self.times.shape) != (n,):
            raise ShapeError(f"times must be [{n}], got {list(self.times.shape)}")
        if self.deepstack is not None and (
            self.deepstack.ndim != 3 or tuple(self.deepstack.shape[1:]) != tuple(self.tokens.shape)
        ):
            raise ShapeError(
                f"deepstack must be [L, n, D] with [n, D] = {list(self.tokens.shape)}, got {list(self.deepstack.shape)}"
            )

    @property
    def deepstack_levels(self) -> int:
        """L, the DeepStack levels carried (0 without them)."""
        return 0 if self.deepstack is None else self.deepstack.shape[0]

    @property
    def budget(self) -> int:
        """Tokens currently held."""
        return self.tokens.shape[0]

    @property
    def original_tokens(self) -> int:
        """Tokens of the uncompressed segment: frame_count * h * w."""
        return self.frame_count * self.grid_size[0] * self.grid_size[1]

    @property
    def dim(self) -> int:
        return self.tokens.shape[1]

    def with_tokens(
        self,
        tokens: torch.Tensor,
        sizes: torch.Tensor,
        positions: torch.Tensor,
        times: torch.Tensor,
        method: str | None = None,
        owner: torch.Tensor | None = None,
        deepstack: torch.Tensor | None = None,
    ) -> CompressedSegment:
        """The same segment with a new token set (segment-level facts kept; owner only if given).

        A segment that carries DeepStack features needs the new set's ``deepstack`` too, so
        they are never dropped silently (ShapeError otherwise).
        """
        if self.deepstack is not None and deepstack is None:
            raise ShapeError(
                f"this segment carries {self.deepstack_levels} DeepStack levels; pass the new token "
                "set's deepstack [L, n, D] as well (apply the same selection or merge to them)"
            )
        return replace(
            self,
            tokens=tokens,
            sizes=sizes,
            positions=positions,
            times=times,
            method=self.method if method is None else method,
            owner=owner,
            deepstack=deepstack,
        )
