"""InfoMerge (spec 1) and FastVID (spec 3), which is InfoMerge without TFD and CABA.

Per clip: DySeg -> per segment TFD static set S_k -> CABA context budgets ->
ATS with static penalty (salient tokens per frame) -> DTM with hard mask (context
tokens) -> salient + context tokens in temporal order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from streamvid.compress.base import (
    Compressor,
    CompressorConfig,
    finish_segment,
)
from streamvid.compress.caba import allocate_budgets, caba_weights, segment_stats, uniqueness
from streamvid.compress.dyseg import dyseg_boundaries
from streamvid.compress.tfd import static_positions, temporal_fingerprint_difference
from streamvid.types import CompressedSegment, TokenGrid

__all__ = [
    "InfoMerge",
    "FastVID",
    "InfoMergeConfig",
    "constants_for_ratio",
    "select_salient",
    "density_peak_scores",
    "merge_context",
]

# retention -> (CABA tau, static fraction rho), spec 1.7
RETENTION_CONSTANTS: dict[float, tuple[float, float]] = {
    0.15: (1.2, 0.09),
    0.10: (1.2, 0.10),
    0.05: (2.0, 0.05),
}


def constants_for_ratio(ratio: float) -> tuple[float, float]:
    """(tau, rho) of the tabulated retention nearest to ``ratio`` (ties: the larger ratio)."""
    nearest = min(RETENTION_CONSTANTS, key=lambda r: (abs(r - ratio), -r))
    return RETENTION_CONSTANTS[nearest]


class InfoMergeConfig(CompressorConfig):
    """InfoMerge options; None for tau/rho means "by retention ratio" (spec 1.7)."""

    tau: float | None = Field(None, gt=0)
    rho: float | None = Field(None, ge=0, le=1)
    lam: float = Field(12.0, ge=0)
    alpha: float = 0.9
    beta: float = 0.1
    context_fraction: float = Field(0.4, ge=0, le=1)
    anchor_interval: int = Field(4, ge=1)
    mu: float = Field(0.6, ge=0, le=1)
    knn: int = Field(4, ge=1)
    num_cuts: int = Field(8, ge=1)
    tau_seg: float = Field(0.9, ge=-1, le=1)


def select_salient(saliency: torch.Tensor, count: int, static: torch.Tensor, lam: float) -> torch.Tensor:
    """ATS with static penalty (spec 1.5).

    saliency: [V, N]; static: bool [N] (S_k) -> chosen: bool [V, N], ``count`` per frame.
    A static position chosen in an earlier frame has its saliency lowered by
    lam * std(A_l) in later frames.
    """
    v, n = saliency.shape
    chosen = torch.zeros(v, n, dtype=torch.bool, device=saliency.device)
    if count <= 0:
        return chosen
    taken_static = torch.zeros(n, dtype=torch.bool, device=saliency.device)  # P
    for frame in range(v):
        a = saliency[frame].float()
        penalised = static & taken_static
        if lam > 0 and bool(penalised.any()):
            a = a - penalised.float() * (lam * a.std())
        chosen[frame, torch.topk(a, k=min(count, n)).indices] = True
        taken_static |= chosen[frame] & static
    return chosen


def density_peak_scores(x: torch.Tensor, knn: int) -> torch.Tensor:
    """DPC-kNN anchor scores q = rho * delta (spec 1.6). x: [m, D] -> fp32 [m].

    d = cdist / sqrt(D); rho = exp(-mean of the k smallest d^2, the token itself
    included); delta = distance to the nearest denser token (the largest distance
    for the densest). Equal densities are ordered by index, so the result is
    deterministic.
    """
    m, dim = x.shape
    x = x.float()
    d = torch.cdist(x, x) / math.sqrt(dim)  # (m, m)
    nearest = torch.topk(d, k=min(knn, m), dim=1, largest=False).values  # (m, k)
    rho = torch.exp(-(nearest**2).mean(dim=1))
    idx = torch.arange(m, device=x.device)
    # denser[i, j]: j is denser than i (ties: the lower index is denser)
    denser = (rho[None, :] > rho[:, None]) | ((rho[None, :] == rho[:, None]) & (idx[None, :] < idx[:, None]))
    delta = torch.where(denser, d, torch.full_like(d, float("inf"))).min(dim=1).values
    delta = torch.where(torch.isinf(delta), d.max(), delta)
    return rho * delta


def _anchor_frames(free_per_frame: torch.Tensor, budget: int, interval: int) -> list[int]:
    """Anchor frames every ``interval`` frames counted back from the last one.

    When they cannot hold ``budget`` tokens (high retention), the interval shrinks
    until they can (at interval 1 every frame is an anchor frame).
    """
    v = free_per_frame.shape[0]
    for p in range(interval, 0, -1):
        frames = list(range(v - 1, -1, -p))  # latest first
        if int(free_per_frame[frames].sum()) >= budget:
            return frames
    return list(range(v - 1, -1, -1))


def merge_context(
    seg: torch.Tensor,
    salient: torch.Tensor,
    budget: int,
    static: torch.Tensor | None,
    *,
    interval: int,
    knn: int,
    mu: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """DTM with hard mask (spec 1.6).

    seg: fp32 [V, N, D]; salient: bool [V, N]; static: bool [N] or None (no mask).
    Returns context tokens [B, D], sizes int64 [B], flat indices t * N + p [B] of
    the anchors, and owner int64 [V * N]: the anchor each non-salient token joined
    (-1 for salient tokens); sizes count the anchor plus its members.
    """
    v, n, dim = seg.shape
    free = ~salient  # (V, N) non-salient
    owner = torch.full((v * n,), -1, dtype=torch.long, device=seg.device)
    if budget <= 0:
        empty = seg.new_zeros(0, dim)
        return empty, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), owner
    free_per_frame = free.sum(dim=1).cpu()  # (V,)
    frames = _anchor_frames(free_per_frame, budget, interval)
    quotas = allocate_budgets(torch.ones(len(frames)), budget, free_per_frame[frames], minimum=0)
    chosen_static = torch.zeros(n, dtype=torch.bool, device=seg.device)  # hard-mask memory
    anchors: list[torch.Tensor] = []
    for frame, quota in sorted(zip(frames, quotas.tolist())):  # earliest anchor frame first
        if quota == 0:
            continue
        cand = torch.nonzero(free[frame]).flatten()  # (m,) positions
        score = density_peak_scores(seg[frame, cand], knn)
        if static is not None:
            score = score.masked_fill(static[cand] & chosen_static[cand], -float("inf"))
        picked = cand[torch.topk(score, k=quota).indices]
        anchors.append(frame * n + picked)
        if static is not None:
            chosen_static[picked[static[picked]]] = True
    anchor_flat = torch.cat(anchors)  # (B,)
    flat = seg.reshape(v * n, dim)  # (V*N, D)
    is_member = free.flatten().clone()
    is_member[anchor_flat] = False
    members = flat[is_member]  # (M, D)
    anchor_x = flat[anchor_flat]  # (B, D)
    joined = (F.normalize(members, dim=-1) @ F.normalize(anchor_x, dim=-1).T).argmax(dim=1)  # (M,) anchor
    counts = torch.bincount(joined, minlength=anchor_flat.shape[0])  # (B,)
    member_mean = torch.zeros_like(anchor_x).index_add_(0, joined, members) / counts.clamp_min(1)[:, None]
    keep = torch.clamp(1.0 / (counts.float() + 1.0), min=mu)[:, None]  # mu_k = max(1/(n+1), mu)
    merged = torch.where(counts[:, None] > 0, keep * anchor_x + (1 - keep) * member_mean, anchor_x)
    owner[is_member] = joined
    owner[anchor_flat] = torch.arange(anchor_flat.shape[0], device=seg.device)
    return merged, (1 + counts).long(), anchor_flat, owner


class InfoMerge(Compressor):
    """TFD + CABA + ATS (static penalty) + DTM (hard mask)."""

    name = "infomerge"
    config_class = InfoMergeConfig
    use_tfd = True  # static set, penalty, carry and hard mask
    use_caba = True  # content-aware context budgets (else proportional to length)

    @property
    def tau(self) -> float:
        return self.config.tau if self.config.tau is not None else constants_for_ratio(self.ratio)[0]

    @property
    def rho(self) -> float:
        return self.config.rho if self.config.rho is not None else constants_for_ratio(self.ratio)[1]

    def salient_per_frame(self, tokens_per_frame: int) -> int:
        """T_s = floor((1 - d) * r * N)."""
        cfg = self.config
        return min(tokens_per_frame, math.floor((1 - cfg.context_fraction) * cfg.ratio * tokens_per_frame))

    def _compress(self, grid: TokenGrid, boundaries: list[int] | None) -> list[CompressedSegment]:
        cfg = self.config
        t, h, w, dim = grid.tokens.shape
        n = h * w
        x = grid.tokens.reshape(t, n, dim).float()  # (T, N, D)
        # saliency fallback without a pooling head: the token's feature norm
        sal = x.norm(dim=-1) if grid.saliency is None else grid.saliency.reshape(t, n).float()
        if boundaries is None:
            boundaries = dyseg_boundaries(x.mean(dim=1), cfg.num_cuts, cfg.tau_seg)
        spans = list(zip(boundaries, boundaries[1:]))
        stats = [segment_stats(x[a:b]) for a, b in spans]
        lengths = torch.tensor([b - a for a, b in spans])
        means = torch.stack([s.mean_token for s in stats])  # (K, D)
        uniq = uniqueness(means, lengths)

        salient_count = self.salient_per_frame(n)
        # context budget; at least one context token per segment (documented tolerance)
        context_total = max(self.total_budget(grid) - salient_count * t, len(spans))
        if self.use_caba:
            richness = torch.tensor([s.richness for s in stats])
            weights = caba_weights(means, lengths, richness, tau=self.tau, alpha=cfg.alpha, beta=cfg.beta)
        else:
            weights = lengths.double()
        context_budgets = allocate_budgets(weights, context_total, lengths * (n - salient_count), minimum=1)

        out: list[CompressedSegment] = []
        for k, ((a, b), budget) in enumerate(zip(spans, context_budgets.tolist())):
            seg = x[a:b]  # (V, N, D)
            v = b - a
            static = (
                static_positions(temporal_fingerprint_difference(seg), v, self.rho)
                if self.use_tfd
                else torch.zeros(n, dtype=torch.bool, device=seg.device)
            )
            chosen = select_salient(sal[a:b], salient_count, static, cfg.lam if self.use_tfd else 0.0)
            frame_idx, pos_idx = torch.nonzero(chosen, as_tuple=True)  # (V*T_s,) each
            salient_x = seg[frame_idx, pos_idx]  # (V*T_s, D)
            carry = static[pos_idx]
            if bool(carry.any()):
                # a chosen static position stands for H[l:, p]: carry its mean to the segment end
                suffix = seg[:, static].flip(0).cumsum(0).flip(0)  # (V, |S|, D): sums of H[l:, p]
                col = torch.cumsum(static.long(), 0)[pos_idx[carry]] - 1  # column in the |S| axis
                fl = frame_idx[carry]
                salient_x[carry] = suffix[fl, col] / (v - fl).float()[:, None]
            ctx_x, ctx_sizes, ctx_flat, ctx_owner = merge_context(
                seg,
                chosen,
                budget,
                static if self.use_tfd else None,
                interval=cfg.anchor_interval,
                knn=cfg.knn,
                mu=cfg.mu,
            )
            # provenance: a salient token stands for itself, context tokens for their members
            n_salient = frame_idx.shape[0]
            owner = torch.where(ctx_owner >= 0, ctx_owner + n_salient, ctx_owner)
            owner[frame_idx * n + pos_idx] = torch.arange(n_salient, device=owner.device)
            out.append(
                finish_segment(
                    grid,
                    a,
                    b,
                    owner=owner,
                    tokens=torch.cat([salient_x, ctx_x]),
                    sizes=torch.cat([torch.ones_like(frame_idx), ctx_sizes.to(frame_idx.device)]),
                    flat_index=torch.cat([frame_idx * n + pos_idx, ctx_flat.to(frame_idx.device)]),
                    method=self.name,
                    out_dtype=self.out_dtype(grid),
                    segment_index=grid.segment_index + k,
                    uniqueness_value=float(uniq[k]),
                    stats=stats[k],
                )
            )
        return out


class FastVID(InfoMerge):
    """DySeg + ATS + DTM without TFD, penalty or mask; budgets proportional to length."""

    name = "fastvid"
    use_tfd = False
    use_caba = False
