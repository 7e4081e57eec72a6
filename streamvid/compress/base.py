"""The compressor interface, shared budget rules and the provenance helpers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streamvid.compress.caba import allocate_budgets, segment_stats, uniqueness
from streamvid.errors import ConfigError, ShapeError
from streamvid.types import CompressedSegment, TokenGrid

__all__ = [
    "CompressorConfig",
    "Compressor",
    "deepstack_values",
    "finish_segment",
    "nearest_kept_owner",
]


class CompressorConfig(BaseModel):
    """Options every compressor takes.

    ratio: fraction of the clip's tokens to keep, in (0, 1].
    device: where to compute (default: where the tokens are).
    out_dtype: dtype of the stored tokens (default: the input dtype).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    ratio: float = Field(0.15, gt=0.0, le=1.0)
    device: str | None = None
    out_dtype: torch.dtype | None = None


class Compressor(ABC):
    """TokenGrid in, one CompressedSegment per segment out.

    ``boundaries`` (segment starts plus the end, e.g. ``[0, 8, 32]``) fixes the
    segments; without it a method that segments (InfoMerge, FastVID) runs DySeg and
    the others treat the clip as one segment. :meth:`total_budget` says how many
    tokens the method's budget rule keeps. ``saliency`` [T, h, w] overrides the
    grid's own saliency.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[CompressorConfig]] = CompressorConfig
    # named TokenGrid.scores maps the method uses when an encoder can give them
    score_maps: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **cfg: Any) -> None:
        try:
            self.config = self.config_class(**cfg)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in err.errors())
            raise ConfigError(f"bad {self.name} options: {problems}") from None

    @property
    def ratio(self) -> float:
        return self.config.ratio

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    def compress(
        self,
        grid: TokenGrid,
        *,
        saliency: torch.Tensor | None = None,
        boundaries: Sequence[int] | None = None,
    ) -> list[CompressedSegment]:
        if not isinstance(grid, TokenGrid):
            raise ShapeError(f"compress takes a TokenGrid, got {type(grid).__name__}")
        if saliency is not None:
            grid = replace(grid, saliency=saliency)
            grid.__post_init__()  # validate the new saliency's shape
        if self.config.device is not None:
            grid = _to_device(grid, torch.device(self.config.device))
        if boundaries is not None:
            boundaries = _check_boundaries(boundaries, grid.num_frames)
        with torch.inference_mode():
            return self._compress(grid, boundaries)

    @abstractmethod
    def _compress(self, grid: TokenGrid, boundaries: list[int] | None) -> list[CompressedSegment]:
        """Compress a validated grid (already on the compute device)."""

    def total_budget(self, grid: TokenGrid, boundaries: Sequence[int] | None = None) -> int:
        """Tokens this compressor keeps for ``grid`` under its own budget rule.

        Here round(r * T * N), at least 1 (uniform, random). A method whose published rule
        differs overrides it (FastVID, InfoMerge and VidCom² count per frame or per segment,
        so their totals drift from round(r * T * N) by rounding; their ``exact_total``
        option restores it).
        """
        return max(1, round(self.ratio * grid.num_frames * grid.tokens_per_frame))

    def out_dtype(self, grid: TokenGrid) -> torch.dtype:
        return self.config.out_dtype or grid.tokens.dtype


def _to_device(grid: TokenGrid, device: torch.device) -> TokenGrid:
    sal = None if grid.saliency is None else grid.saliency.to(device)
    scores = {k: v.to(device) for k, v in grid.scores.items()}
    deep = None if grid.deepstack is None else grid.deepstack.to(device)
    return replace(grid, tokens=grid.tokens.to(device), saliency=sal, scores=scores, deepstack=deep)


def deepstack_values(grid: TokenGrid, start: int, stop: int) -> torch.Tensor | None:
    """The DeepStack features of frames [start, stop) as extra value channels, or None.

    -> fp32 [V, N, L * D]: token (t, p) holds its L levels side by side, so every gather,
    mean and weighted sum a compressor applies to the tokens [V, N, D] applies to all levels
    at once with the same indices and weights (docs/algorithms.md, "DeepStack").
    """
    if grid.deepstack is None:
        return None
    levels, dim = grid.deepstack.shape[0], grid.dim
    v, n = stop - start, grid.tokens_per_frame
    deep = grid.deepstack[:, start:stop].reshape(levels, v, n, dim).float()  # (L, V, N, D)
    return deep.permute(1, 2, 0, 3).reshape(v, n, levels * dim)


def _split_levels(values: torch.Tensor, dim: int) -> torch.Tensor:
    """[n, L * D] value channels -> [L, n, D] DeepStack levels."""
    n = values.shape[0]
    return values.reshape(n, -1, dim).permute(1, 0, 2).contiguous()


def _check_boundaries(boundaries: Sequence[int], num_frames: int) -> list[int]:
    b = [int(x) for x in boundaries]
    if len(b) < 2 or b[0] != 0 or b[-1] != num_frames or any(x >= y for x, y in zip(b, b[1:])):
        raise ShapeError(f"boundaries must go strictly up from 0 to the frame count {num_frames}, got {b}")
    return b


def split_budget_by_length(total: int, boundaries: list[int], per_frame_capacity: int) -> torch.Tensor:
    """Budgets proportional to segment length, exact sum (largest remainder)."""
    lengths = torch.tensor([y - x for x, y in zip(boundaries, boundaries[1:])])
    k = lengths.shape[0]
    return allocate_budgets(lengths.double(), total, lengths * per_frame_capacity, minimum=1 if total >= k else 0)


def nearest_kept_owner(tokens: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Provenance for a pruning method: every dropped token belongs to its most similar kept token.

    tokens: [M, D]; kept: int64 [n] indices into tokens -> owner int64 [M] (index into kept).
    """
    x = F.normalize(tokens.float(), dim=-1)  # (M, D)
    owner = (x @ x[kept].T).argmax(dim=1)  # (M,): most similar kept token
    owner[kept] = torch.arange(kept.shape[0], device=kept.device)  # a kept token owns itself
    return owner


def finish_segment(
    grid: TokenGrid,
    start: int,
    stop: int,
    tokens: torch.Tensor,
    sizes: torch.Tensor,
    flat_index: torch.Tensor,
    method: str,
    out_dtype: torch.dtype,
    segment_index: int,
    uniqueness_value: float = 0.0,
    stats: Any = None,
    owner: torch.Tensor | None = None,
    deepstack: torch.Tensor | None = None,
) -> CompressedSegment:
    """Assemble a CompressedSegment for frames [start, stop) of ``grid``.

    tokens: [n, D]; sizes: [n]; flat_index: int64 [n], the representative of each
    token as t * N + p within the segment; owner: int64 [V * N] index of the kept
    token of each original (sizes are recomputed from it when given); deepstack: [n, L * D],
    the kept tokens' DeepStack value channels (see :func:`deepstack_values`), required when
    the grid has DeepStack features. Sorts everything into temporal order.
    """
    if (grid.deepstack is None) != (deepstack is None):
        raise ShapeError(
            "the grid carries DeepStack features but the compressor gave none for the kept tokens"
            if deepstack is None
            else "DeepStack values were given for a grid without DeepStack features"
        )
    h, w = grid.grid_size
    n_per_frame = h * w
    order = torch.argsort(flat_index, stable=True)
    flat_index = flat_index[order]
    sorted_sizes = sizes[order].long().cpu()
    if owner is not None:
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.shape[0], device=order.device)  # old index -> sorted index
        owner = rank[owner.to(order.device)].cpu()
    t = flat_index // n_per_frame  # frame within the segment
    p = flat_index % n_per_frame
    positions = torch.stack([t, p // w, p % w], dim=1).long().cpu()  # (n, 3)
    seg_times = grid.timestamps[start:stop]
    if stats is None:
        stats = segment_stats(grid.tokens[start:stop])
    return CompressedSegment(
        tokens=tokens[order].to(out_dtype),
        sizes=sorted_sizes,
        positions=positions,
        times=seg_times[t.cpu()].double(),
        grid_size=(h, w),
        frame_count=stop - start,
        start_time=float(seg_times[0]),
        end_time=float(seg_times[-1]),
        mean_token=stats.mean_token.float().cpu(),
        richness=float(stats.richness),
        uniqueness=float(uniqueness_value),
        stream_id=grid.stream_id,
        segment_index=segment_index,
        frame_offset=start,
        method=method,
        owner=owner,
        deepstack=None if deepstack is None else _split_levels(deepstack[order], grid.dim).to(out_dtype),
    )


def clip_uniqueness(stats: Sequence[Any]) -> torch.Tensor:
    """u_k of each segment against the clip's length-weighted mean. -> float64 [K]."""
    means = torch.stack([s.mean_token for s in stats])
    lengths = torch.tensor([s.length for s in stats], dtype=torch.float64)
    return uniqueness(means, lengths)
