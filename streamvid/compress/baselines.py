"""Baselines behind the same interface: keep-all, uniform pooling, random, VidCom² (docs/algorithms.md, "VidCom2").

They do not segment: the clip is one segment unless ``boundaries`` are given, in
which case each segment is compressed alone, with a budget proportional to its
length (VidCom² by default applies its own per-frame rule in each segment instead).
Pruning methods (random, VidCom²) keep tokens unchanged; for provenance every dropped
token counts toward the size of its most similar kept token. DeepStack features (when the
grid has them) are gathered or pooled with exactly the indices and cells of the tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field

from streamvid.compress.base import (
    Compressor,
    CompressorConfig,
    deepstack_values,
    finish_segment,
    nearest_kept_owner,
    split_budget_by_length,
)
from streamvid.compress.caba import allocate_budgets
from streamvid.types import CompressedSegment, TokenGrid

__all__ = ["KeepAll", "UniformPool", "RandomKeep", "VidCom2", "pool_frame", "vidcom2_scores", "vidcom2_frame_counts"]


class _PerSegment(Compressor):
    """Runs ``_segment`` on each segment with a length-proportional share of the budget."""

    def _compress(self, grid: TokenGrid, boundaries: list[int] | None) -> list[CompressedSegment]:
        boundaries = boundaries or [0, grid.num_frames]
        total = Compressor.total_budget(self, grid)  # round(r T N); VidCom² by default ignores it
        budgets = split_budget_by_length(total, boundaries, grid.tokens_per_frame)
        out = []
        for k, (a, b) in enumerate(zip(boundaries, boundaries[1:])):
            t = b - a
            x = grid.tokens[a:b].reshape(t, grid.tokens_per_frame, grid.dim).float()  # (V, N, D)
            extra = deepstack_values(grid, a, b)  # (V, N, L*D) or None
            tokens, owner, flat, extra_out = self._segment(x, int(budgets[k]), grid.grid_size, extra)
            sizes = torch.bincount(owner, minlength=tokens.shape[0])
            out.append(
                finish_segment(
                    grid,
                    a,
                    b,
                    tokens,
                    sizes,
                    flat,
                    self.name,
                    self.out_dtype(grid),
                    segment_index=grid.segment_index + k,
                    owner=owner,
                    deepstack=extra_out,
                )
            )
        return out

    def _segment(
        self, x: torch.Tensor, budget: int, grid_size: tuple[int, int], extra: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x: fp32 [V, N, D]; extra: [V, N, E] value channels (DeepStack) or None -> (tokens [n, D],
        owner [V * N] (kept index per original), flat index [n], extra of the kept tokens [n, E] or None).

        Decisions come from ``x`` only; ``extra`` takes the same gathers and means.
        """
        raise NotImplementedError


def _pruned(
    x: torch.Tensor, flat_kept: torch.Tensor, extra: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    flat_kept = torch.sort(flat_kept).values
    tokens = x.reshape(-1, x.shape[-1])  # (V*N, D)
    kept_extra = None if extra is None else extra.reshape(-1, extra.shape[-1])[flat_kept]
    return tokens[flat_kept], nearest_kept_owner(tokens, flat_kept), flat_kept, kept_extra


def _per_frame_counts(weights: torch.Tensor, total: int, per_frame: int) -> torch.Tensor:
    """Integer per-frame counts ~ weights, exact total, each in [1, N] (0 allowed if total < V)."""
    v = weights.shape[0]
    return allocate_budgets(weights, total, torch.full((v,), per_frame), minimum=1 if total >= v else 0)


class KeepAll(Compressor):
    """Every token, size 1 (the uncompressed reference)."""

    name = "keep_all"

    def total_budget(self, grid: TokenGrid, boundaries: Sequence[int] | None = None) -> int:
        return grid.num_frames * grid.tokens_per_frame

    def _compress(self, grid: TokenGrid, boundaries: list[int] | None) -> list[CompressedSegment]:
        boundaries = boundaries or [0, grid.num_frames]
        n = grid.tokens_per_frame
        out = []
        for k, (a, b) in enumerate(zip(boundaries, boundaries[1:])):
            tokens = grid.tokens[a:b].reshape((b - a) * n, grid.dim)  # (V*N, D)
            flat = torch.arange(tokens.shape[0], device=tokens.device)
            extra = deepstack_values(grid, a, b)
            out.append(
                finish_segment(
                    grid,
                    a,
                    b,
                    tokens,
                    torch.ones_like(flat),
                    flat,
                    self.name,
                    self.out_dtype(grid),
                    segment_index=grid.segment_index + k,
                    owner=flat.cpu(),
                    deepstack=None if extra is None else extra.reshape(tokens.shape[0], -1),
                )
            )
        return out


def pool_frame(h: int, w: int, cells: int) -> torch.Tensor:
    """Split an h x w grid into ``cells`` near-equal rectangles. -> cell id int64 [h * w].

    Rows are cut into bands (about square cells), each band into columns; the cell
    counts per band come from a largest-remainder split, so the total is exact.
    """
    cells = max(1, min(cells, h * w))
    bands = max(1, min(h, cells, round(math.sqrt(cells * h / w))))
    per_band = allocate_budgets(torch.ones(bands), cells, torch.full((bands,), w), minimum=1)
    row_band = torch.div(torch.arange(h) * bands, h, rounding_mode="floor")  # (h,)
    offsets = torch.cumsum(per_band, 0) - per_band  # first cell id of each band
    cols = per_band[row_band]  # (h,) cells in this row's band
    col_cell = torch.div(torch.arange(w)[None, :] * cols[:, None], w, rounding_mode="floor")  # (h, w)
    return (offsets[row_band][:, None] + col_cell).flatten()


class UniformPool(_PerSegment):
    """Spatial average pooling of every frame to its share of the budget."""

    name = "uniform"

    def _segment(self, x, budget, grid_size, extra):
        v, n, _ = x.shape
        h, w = grid_size
        counts = _per_frame_counts(torch.ones(v), budget, n)
        tokens, owner, flat, extra_out = [], torch.full((v * n,), -1, dtype=torch.long), [], []
        count = 0
        for t, cells in enumerate(counts.tolist()):
            if cells == 0:
                continue
            cell = pool_frame(h, w, cells).to(x.device)  # (N,) cell id per token
            size = torch.bincount(cell, minlength=cells)  # (cells,)
            sums = x.new_zeros(cells, x.shape[-1]).index_add_(0, cell, x[t])
            tokens.append(sums / size[:, None])
            if extra is not None:  # the same cells, the same means
                extra_out.append(extra.new_zeros(cells, extra.shape[-1]).index_add_(0, cell, extra[t]) / size[:, None])
            # representative: the token at the centre of the (rectangular) cell
            pos = torch.arange(n, device=x.device)
            mid_row = x.new_zeros(cells).index_add_(0, cell, (pos // w).float()) / size
            mid_col = x.new_zeros(cells).index_add_(0, cell, (pos % w).float()) / size
            rep = mid_row.floor().long() * w + mid_col.floor().long()
            owner[t * n : (t + 1) * n] = count + cell.cpu()
            flat.append(t * n + rep)
            count += cells
        kept = torch.cat(tokens)
        orphans = torch.nonzero(owner < 0).flatten()  # frames left without a cell (tiny budgets)
        if len(orphans):
            sims = F.normalize(x.reshape(v * n, -1)[orphans.to(x.device)], dim=-1) @ F.normalize(kept, dim=-1).T
            owner[orphans] = sims.argmax(dim=1).cpu()
        return kept, owner, torch.cat(flat), torch.cat(extra_out) if extra is not None else None


class RandomConfig(CompressorConfig):
    seed: int = 0


class RandomKeep(_PerSegment):
    """A seeded uniform random subset of the tokens."""

    name = "random"
    config_class = RandomConfig

    def _segment(self, x, budget, grid_size, extra):
        total = x.shape[0] * x.shape[1]
        gen = torch.Generator().manual_seed(self.config.seed)
        kept = torch.randperm(total, generator=gen)[:budget].to(x.device)
        return _pruned(x, kept, extra)


class VidCom2Config(CompressorConfig):
    """VidCom² options (defaults: the official code's).

    temperature: of the softmax over frame uniqueness. channel_fraction: share of the
    channels (lowest variance) the similarities use; int(fraction * D) of them.
    exact_total: keep exactly round(r * V * N) tokens per segment (largest-remainder counts
    per frame) instead of the official round(scale_t * N) per frame, whose total drifts
    by a few tokens; off by default. Useful for an exact token count (a memory cap).
    """

    temperature: float = Field(0.01, gt=0)
    channel_fraction: float = Field(0.5, gt=0, le=1)
    exact_total: bool = False


_VIDCOM2_BANDWIDTHS = (1 / 8, 1 / 4, 1 / 2, 1.0, 2.0)


def _multi_kernel(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """K(x, c) = sum_a exp(-||x - c||^2 / (2a)). x: [..., D], c broadcastable -> [...]."""
    d2 = ((x - c) ** 2).sum(dim=-1)
    return sum(torch.exp(-d2 / (2 * a)) for a in _VIDCOM2_BANDWIDTHS)


def vidcom2_scores(x: torch.Tensor, channel_fraction: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """VidCom² similarities to the video and frame means. x: [V, N, D] -> (s_vid, s_frm), fp32 [V, N] each.

    Uses the int(fraction * D) (at least 1) channels of lowest population variance over
    all V * N tokens, L2-normalised.
    """
    v, n, dim = x.shape
    flat = x.reshape(v * n, dim).float()  # (V*N, D)
    k = max(1, int(dim * channel_fraction))
    keep_ch = torch.topk(flat.var(dim=0, unbiased=False), k=k, largest=False).indices
    y = F.normalize(x.float()[..., keep_ch], dim=-1)  # (V, N, k)
    return _multi_kernel(y, y.mean(dim=(0, 1), keepdim=True)), _multi_kernel(y, y.mean(dim=1, keepdim=True))


def vidcom2_frame_counts(s_vid: torch.Tensor, ratio: float, temperature: float = 0.01) -> torch.Tensor:
    """Tokens kept per frame, round(scale_t * N) at least 1, as the official code. s_vid: [V, N] -> int64 [V].

    u_t = -mean_p s_vid[t, p]; sigma = softmax(u / temperature);
    scale_t = min(1, r * (1 + sigma_t - mean(sigma))). Rounding is half to even.
    """
    u = -s_vid.mean(dim=1)  # (V,) frame uniqueness
    sigma = torch.softmax((u - u.max()) / temperature, dim=0)
    scale = torch.clamp(ratio * (1 + sigma - sigma.mean()), max=1.0)
    return torch.round(scale * s_vid.shape[1]).long().clamp(min=1)


class VidCom2(_PerSegment):
    """VidCom²: frame-uniqueness budgets, keep the least typical tokens of each frame.

    As the official code by default (see docs/algorithms.md, "VidCom2"); each segment is
    compressed alone (by default the clip is one segment).
    """

    name = "vidcom2"
    config_class = VidCom2Config

    def total_budget(self, grid: TokenGrid, boundaries: Sequence[int] | None = None) -> int:
        """Tokens kept: sum of the per-frame counts of every segment (exact_total: round(r T N))."""
        if self.config.exact_total:
            return super().total_budget(grid, boundaries)
        bounds = list(boundaries) if boundaries is not None else [0, grid.num_frames]
        x = grid.tokens.reshape(grid.num_frames, grid.tokens_per_frame, grid.dim)  # (T, N, D)
        cfg = self.config
        return sum(
            int(vidcom2_frame_counts(vidcom2_scores(x[a:b], cfg.channel_fraction)[0], cfg.ratio, cfg.temperature).sum())
            for a, b in zip(bounds, bounds[1:])
        )

    def _segment(self, x, budget, grid_size, extra):
        v, n, _ = x.shape
        cfg = self.config
        s_vid, s_frm = vidcom2_scores(x, cfg.channel_fraction)
        counts = vidcom2_frame_counts(s_vid, cfg.ratio, cfg.temperature)
        if cfg.exact_total:
            u = -s_vid.mean(dim=1)
            sigma = torch.softmax((u - u.max()) / cfg.temperature, dim=0)
            frame_ratio = torch.clamp(cfg.ratio * (1 + sigma - sigma.mean()), max=1.0)
            counts = _per_frame_counts(frame_ratio.double().cpu(), budget, n)  # exact total
        score = s_vid + s_frm
        kept = [
            t * n + torch.topk(score[t], k=c, largest=False).indices for t, c in enumerate(counts.tolist()) if c > 0
        ]
        return _pruned(x, torch.cat(kept), extra)
