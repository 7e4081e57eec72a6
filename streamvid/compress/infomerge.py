"""InfoMerge and FastVID (see docs/algorithms.md, "InfoMerge", "FastVID", "Budgets", "ATS", "DTM").

Per clip: DySeg -> per segment TFD static set S_k -> CABA context budgets -> ATS with
static penalty and static carry (salient tokens per frame) -> DTM with hard mask
(context tokens) -> salient + context tokens in temporal order. FastVID is the same
pipeline without TFD (no penalty, carry or mask) and with the official code's budgets.

Budgets by default follow the published rules, so the total is the method's own and not
round(r * L * N):

- FastVID (official code): per frame R = int(r N), context C = int(R d), salient
  T_s = R - C; a segment of V frames spreads C * V context tokens over its
  ceil(V / p_int) anchor frames, floor(C * V / ceil(V / p_int)) each.
- InfoMerge (paper): T_s = floor((1 - d) r N) per frame; context B_k =
  max(1, round(d r L N w_k / sum_j w_j)) per segment (CABA weights w_k), capped at the
  segment's non-salient tokens; floor(B_k / #anchor frames) per anchor frame.

``exact_total=True`` (both) instead makes the clip's total exactly round(r L N): the
context total is round(r L N) - T_s L, split over segments and anchor frames by largest
remainder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from streamvid.compress.base import Compressor, CompressorConfig, deepstack_values, finish_segment
from streamvid.compress.caba import allocate_budgets, caba_weights, segment_stats, uniqueness
from streamvid.compress.dyseg import dyseg_boundaries
from streamvid.compress.tfd import static_positions, temporal_fingerprint_difference
from streamvid.types import CompressedSegment, TokenGrid

__all__ = [
    "InfoMerge",
    "FastVID",
    "FastVIDConfig",
    "InfoMergeConfig",
    "constants_for_ratio",
    "fastvid_frame_budget",
    "anchor_quotas",
    "select_salient",
    "carry_static",
    "density_peak_scores",
    "merge_context",
    "merge_context_values",
]

# retention -> (CABA tau, static fraction rho), docs/algorithms.md "InfoMerge constants"
RETENTION_CONSTANTS: dict[float, tuple[float, float]] = {
    0.15: (1.2, 0.09),
    0.10: (1.2, 0.10),
    0.05: (2.0, 0.05),
}


def constants_for_ratio(ratio: float) -> tuple[float, float]:
    """(tau, rho) of the tabulated retention nearest to ``ratio`` (ties: the larger ratio)."""
    nearest = min(RETENTION_CONSTANTS, key=lambda r: (abs(r - ratio), -r))
    return RETENTION_CONSTANTS[nearest]


class FastVIDConfig(CompressorConfig):
    """FastVID options (defaults: the official code's).

    context_fraction: d, the share of each frame's budget that goes to context tokens.
    anchor_interval: p_int, anchor frames every p_int frames counted back from a segment's last.
    mu: the least weight an anchor keeps when it absorbs its members.
    knn: neighbours in the density estimate. num_cuts, tau_seg: DySeg's c and tau_seg.
    exact_total: keep exactly round(r * L * N) tokens per clip (largest-remainder splits over
    segments and anchor frames) instead of the method's own budget rule; off by default.
    Useful when a caller needs an exact token count (a memory cap, a fixed prompt size).
    """

    context_fraction: float = Field(0.4, ge=0, le=1)
    anchor_interval: int = Field(4, ge=1)
    mu: float = Field(0.6, ge=0, le=1)
    knn: int = Field(4, ge=1)
    num_cuts: int = Field(8, ge=1)
    tau_seg: float = Field(0.9, ge=-1, le=1)
    exact_total: bool = False


class InfoMergeConfig(FastVIDConfig):
    """InfoMerge options: FastVID's plus TFD and CABA.

    tau, rho: CABA temperature and static fraction; None means "by retention ratio"
    (docs/algorithms.md, "InfoMerge constants"). lam: the static penalty in units of std(A_l).
    alpha, beta: weights of uniqueness and richness in CABA.
    """

    tau: float | None = Field(None, gt=0)
    rho: float | None = Field(None, ge=0, le=1)
    lam: float = Field(12.0, ge=0)
    alpha: float = 0.9
    beta: float = 0.1


def fastvid_frame_budget(tokens_per_frame: int, ratio: float, context_fraction: float) -> tuple[int, int]:
    """FastVID's per-frame split: (salient, context) = (R - int(R d), int(R d)), R = int(r N).

    R is at least 1, so a frame never keeps nothing (the official code keeps nothing when r N < 1).
    """
    retain = max(1, int(tokens_per_frame * ratio))
    context = int(retain * context_fraction)
    return retain - context, context


def anchor_quotas(length: int, budget: int, free_per_frame: int, interval: int, floor: bool = True) -> list[int]:
    """Context tokens of each frame of a segment: nonzero only on anchor frames. -> [V] ints.

    Anchor frames are every ``interval`` frames counted back from the last frame. With
    ``floor`` (the published rule) each of the n anchor frames gets floor(budget / n); if
    that is 0 (budget < n) the latest ``budget`` anchor frames get one token each, so a
    segment never loses its last context token. Without ``floor`` the split is exact
    (largest remainder; the extra tokens go to the latest anchor frames). When an anchor
    frame cannot hold its quota (high retention; the official code fails there), the
    interval shrinks until it can; at interval 1 every frame is an anchor frame.
    """
    quotas = [0] * length
    if budget <= 0 or length == 0:
        return quotas
    for p in range(interval, 0, -1):
        frames = list(range(length - 1, -1, -p))  # latest first
        n = len(frames)
        if floor:
            per = [budget // n] * n if budget >= n else [1] * budget + [0] * (n - budget)
        elif budget <= n * free_per_frame:
            per = allocate_budgets(torch.ones(n), budget, torch.full((n,), free_per_frame), minimum=0).tolist()
        else:
            per = [free_per_frame + 1] * n  # does not fit: try a shorter interval
        if max(per) <= free_per_frame or p == 1:
            for f, q in zip(frames, per):
                quotas[f] = min(q, free_per_frame)
            return quotas
    return quotas


def select_salient(saliency: torch.Tensor, count: int, static: torch.Tensor, lam: float) -> torch.Tensor:
    """ATS with static penalty (docs/algorithms.md, "ATS").

    saliency: [V, N]; static: bool [N] (S_k) -> chosen: bool [V, N], ``count`` per frame.
    A static position chosen in an earlier frame has its saliency lowered by
    lam * std(A_l) in later frames (lam = 0: plain per-frame top-k, as FastVID).
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


def carry_static(seg: torch.Tensor, chosen: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
    """The static carry: H[r, p] <- mean_r' H[r', p] for r >= l, where static p is first chosen at l.

    seg: fp32 [V, N, D]; chosen: bool [V, N] (ATS); static: bool [N] -> a new [V, N, D].
    The mean is the whole segment's, taken from the input tokens once per position
    (choosing p again later changes nothing). DTM then runs on the returned tokens.
    """
    picked = chosen & static[None, :]  # (V, N) static positions chosen by ATS
    if not bool(picked.any()):
        return seg
    v = seg.shape[0]
    seen = torch.cumsum(picked.long(), dim=0) > 0  # (V, N): frame r is at or after the first choice of p
    mean = seg.mean(dim=0, keepdim=True).expand(v, -1, -1)  # (V, N, D): m_p, broadcast over frames
    return torch.where(seen[..., None], mean, seg)


def density_peak_scores(x: torch.Tensor, knn: int) -> torch.Tensor:
    """DPC-kNN anchor scores q = rho * delta (docs/algorithms.md, "DTM"). x: [m, D] -> fp32 [m].

    d = cdist / sqrt(D); rho = exp(-mean of the k smallest d^2, the token itself
    included); delta = distance to the nearest denser token (the largest distance
    for the densest). Equal densities are ordered by index (the lower index counts as
    denser), so the result is deterministic; the official FastVID code instead adds
    unseeded 1e-6 noise to rho.
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


def merge_context(
    seg: torch.Tensor,
    salient: torch.Tensor,
    quotas: list[int],
    static: torch.Tensor | None,
    *,
    knn: int,
    mu: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DTM with hard mask: :func:`merge_context_values` without extra value channels."""
    return merge_context_values(seg, salient, quotas, static, knn=knn, mu=mu)[:3]


def merge_context_values(
    seg: torch.Tensor,
    salient: torch.Tensor,
    quotas: list[int],
    static: torch.Tensor | None,
    *,
    knn: int,
    mu: float,
    values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """DTM with hard mask (docs/algorithms.md, "DTM").

    seg: fp32 [V, N, D]; salient: bool [V, N]; quotas: [V] context tokens per frame
    (see :func:`anchor_quotas`); static: bool [N] or None (no hard mask).

    Anchor frames are visited earliest first. In each, the top-``quota`` density-peak
    scores among the frame's non-salient tokens become anchors; a static position that
    an earlier anchor frame took gets q = -inf. As in the official FastVID code, every
    anchor frame's anchors absorb all of the segment's non-salient tokens (each joins its
    most cosine-similar anchor of that frame; the anchor joins itself), and
    anchor' = w * anchor + (1 - w) * mean(members), w = max(1 / (n + 1), mu), n members
    counting the anchor (w = 1 when nothing joined).

    Returns context tokens [B, D], flat indices t * N + p [B] of the anchors, owner
    int64 [V * N]: a partition for provenance, each non-salient token's most similar
    anchor over the whole segment (an anchor owns itself), -1 for salient tokens, and
    ``values`` [V, N, E] (DeepStack channels, or None) merged with the same anchors, members
    and weights -> [B, E] (None without them).
    """
    v, n, dim = seg.shape
    free = ~salient  # (V, N) non-salient
    owner = torch.full((v * n,), -1, dtype=torch.long, device=seg.device)
    flat = seg.reshape(v * n, dim)  # (V*N, D)
    member_idx = torch.nonzero(free.flatten()).flatten()  # (M,) frame-major raster order
    members = flat[member_idx]  # (M, D)
    members_n = F.normalize(members, dim=-1)
    chosen_static = torch.zeros(n, dtype=torch.bool, device=seg.device)  # hard-mask memory
    merged, anchors, sims, merged_v = [], [], [], []
    members_v = None if values is None else values.reshape(v * n, -1)[member_idx]  # (M, E)
    for frame, quota in enumerate(quotas):  # earliest anchor frame first
        if quota <= 0:
            continue
        cand = torch.nonzero(free[frame]).flatten()  # (m,) positions
        score = density_peak_scores(seg[frame, cand], knn)
        if static is not None:
            score = score.masked_fill(static[cand] & chosen_static[cand], -float("inf"))
        picked = cand[torch.topk(score, k=min(quota, cand.shape[0])).indices]  # best first
        if static is not None:
            chosen_static[picked[static[picked]]] = True
        anchor_x = seg[frame, picked]  # (q, D)
        sim = members_n @ F.normalize(anchor_x, dim=-1).T  # (M, q)
        joined = sim.argmax(dim=1)  # (M,) this frame's anchor of each member
        counts = torch.bincount(joined, minlength=picked.shape[0]).to(seg.dtype)  # (q,)
        mean = torch.zeros_like(anchor_x).index_add_(0, joined, members) / counts.clamp_min(1)[:, None]
        w = torch.clamp(1.0 / (counts + 1.0), min=mu)[:, None]  # w = max(1/(n+1), mu)
        w = torch.where(counts[:, None] > 0, w, torch.ones_like(w))
        merged.append(w * anchor_x + (1 - w) * mean)
        if members_v is not None:  # the same anchors, members and weights on the value channels
            anchor_v = values[frame, picked]
            mean_v = torch.zeros_like(anchor_v).index_add_(0, joined, members_v) / counts.clamp_min(1)[:, None]
            merged_v.append(w * anchor_v + (1 - w) * mean_v)
        anchors.append(frame * n + picked)
        sims.append(sim)
    if not anchors:
        empty_v = None if values is None else values.new_zeros(0, values.shape[-1])
        return seg.new_zeros(0, dim), torch.zeros(0, dtype=torch.long, device=seg.device), owner, empty_v
    anchor_flat = torch.cat(anchors)  # (B,)
    owner[member_idx] = torch.cat(sims, dim=1).argmax(dim=1)  # most similar anchor of the segment
    owner[anchor_flat] = torch.arange(anchor_flat.shape[0], device=seg.device)
    return torch.cat(merged), anchor_flat, owner, torch.cat(merged_v) if values is not None else None


class InfoMerge(Compressor):
    """TFD + CABA + ATS (static penalty and carry) + DTM (hard mask)."""

    name = "infomerge"
    config_class = InfoMergeConfig
    use_tfd = True  # static set, penalty, carry and hard mask

    @property
    def tau(self) -> float:
        return self.config.tau if self.config.tau is not None else constants_for_ratio(self.ratio)[0]

    @property
    def rho(self) -> float:
        return self.config.rho if self.config.rho is not None else constants_for_ratio(self.ratio)[1]

    def salient_per_frame(self, tokens_per_frame: int) -> int:
        """T_s = floor((1 - d) r N)."""
        cfg = self.config
        return min(tokens_per_frame, math.floor((1 - cfg.context_fraction) * cfg.ratio * tokens_per_frame))

    def context_budgets(self, x: torch.Tensor, spans: list[tuple[int, int]], stats: list) -> list[int]:
        """Context tokens of each segment. x: fp32 [T, N, D] -> [K] ints.

        Default: B_k = max(1, round(d r L N w_k / sum_j w_j)) with the CABA weights, capped at
        the segment's non-salient tokens (the sum may differ from d r L N by rounding).
        exact_total: round(r L N) - T_s L (at least one per segment) by largest remainder.
        """
        cfg = self.config
        t, n, _ = x.shape
        lengths = torch.tensor([b - a for a, b in spans])
        capacity = lengths * (n - self.salient_per_frame(n))
        richness = torch.tensor([s.richness for s in stats])
        means = torch.stack([s.mean_token for s in stats]).cpu()  # (K, D); budgets are planned on the CPU
        weights = caba_weights(means, lengths, richness, tau=self.tau, alpha=cfg.alpha, beta=cfg.beta)
        if cfg.exact_total:
            total = max(1, round(cfg.ratio * t * n)) - self.salient_per_frame(n) * t
            total = min(max(total, len(spans)), int(capacity.sum()))
            return allocate_budgets(weights, total, capacity, minimum=1).tolist()
        share = cfg.context_fraction * cfg.ratio * t * n * weights / weights.sum()  # (K,) float64
        return [min(int(c), max(1, round(float(s)))) for s, c in zip(share, capacity)]

    def plan(self, grid: TokenGrid, boundaries: list[int] | None = None) -> tuple[list[int], int, list[list[int]]]:
        """The budget rule: (boundaries, salient tokens per frame, context quotas [V_k] per segment)."""
        x = grid.tokens.reshape(grid.num_frames, grid.tokens_per_frame, grid.dim).float()  # (T, N, D)
        boundaries = self._boundaries(x, boundaries)
        spans = list(zip(boundaries, boundaries[1:]))
        return boundaries, *self._quotas(x, spans, [segment_stats(x[a:b]) for a, b in spans])

    def total_budget(self, grid: TokenGrid, boundaries: list[int] | None = None) -> int:
        """Tokens kept for the grid under the method's budget rule (see :meth:`plan`)."""
        bounds, salient, quotas = self.plan(grid, boundaries)
        return sum(salient * (b - a) + sum(q) for (a, b), q in zip(zip(bounds, bounds[1:]), quotas))

    def _boundaries(self, x: torch.Tensor, boundaries: list[int] | None) -> list[int]:
        if boundaries is not None:
            return boundaries
        return dyseg_boundaries(x.mean(dim=1), self.config.num_cuts, self.config.tau_seg)

    def _quotas(self, x: torch.Tensor, spans: list[tuple[int, int]], stats: list) -> tuple[int, list[list[int]]]:
        cfg = self.config
        n = x.shape[1]
        salient = self.salient_per_frame(n)
        budgets = self.context_budgets(x, spans, stats)
        floor = not cfg.exact_total
        quotas = [anchor_quotas(b - a, k, n - salient, cfg.anchor_interval, floor) for (a, b), k in zip(spans, budgets)]
        return salient, quotas

    def _compress(self, grid: TokenGrid, boundaries: list[int] | None) -> list[CompressedSegment]:
        t, h, w, dim = grid.tokens.shape
        n = h * w
        x = grid.tokens.reshape(t, n, dim).float()  # (T, N, D)
        # saliency fallback without a pooling head: the token's feature norm
        sal = x.norm(dim=-1) if grid.saliency is None else grid.saliency.reshape(t, n).float()
        boundaries = self._boundaries(x, boundaries)
        spans = list(zip(boundaries, boundaries[1:]))
        stats = [segment_stats(x[a:b]) for a, b in spans]
        lengths = torch.tensor([b - a for a, b in spans])
        uniq = uniqueness(torch.stack([s.mean_token for s in stats]), lengths)
        salient_count, quotas = self._quotas(x, spans, stats)
        return [
            self._segment(grid, x, sal, a, b, k, salient_count, quotas[k], stats[k], float(uniq[k]))
            for k, (a, b) in enumerate(spans)
        ]

    def _segment(
        self,
        grid: TokenGrid,
        x: torch.Tensor,
        sal: torch.Tensor,
        a: int,
        b: int,
        k: int,
        salient_count: int,
        quota: list[int],
        stats,
        uniq: float,
        tfd: torch.Tensor | None = None,
    ) -> CompressedSegment:
        """ATS (+ static carry) and DTM for frames [a, b) of the grid.

        x: fp32 [T, N, D]; sal: [T, N]; quota: [b - a] context tokens per frame; tfd: fp32 [N]
        of the segment when already known (the incremental write path), else computed here.
        """
        cfg = self.config
        n, dim = x.shape[1], x.shape[2]
        seg = x[a:b]  # (V, N, D)
        # DeepStack channels (V, N, L*D): every decision below comes from the tokens only and is
        # applied to them unchanged (docs/algorithms.md, "DeepStack")
        extra = deepstack_values(grid, a, b)
        if self.use_tfd:
            tfd = temporal_fingerprint_difference(seg) if tfd is None else tfd
            static = static_positions(tfd, b - a, self.rho)
            chosen = select_salient(sal[a:b], salient_count, static, cfg.lam)
            seg = carry_static(seg, chosen, static)  # ATS and DTM both see the carried tokens
            extra = None if extra is None else carry_static(extra, chosen, static)
        else:
            static = None
            no_static = torch.zeros(n, dtype=torch.bool, device=sal.device)
            chosen = select_salient(sal[a:b], salient_count, no_static, 0.0)
        frame_idx, pos_idx = torch.nonzero(chosen, as_tuple=True)  # (V*T_s,) each
        salient_x = seg[frame_idx, pos_idx]  # (V*T_s, D)
        ctx_x, ctx_flat, ctx_owner, ctx_v = merge_context_values(
            seg, chosen, quota, static, knn=cfg.knn, mu=cfg.mu, values=extra
        )
        # provenance: a salient token stands for itself, context tokens for their members
        n_salient = frame_idx.shape[0]
        owner = torch.where(ctx_owner >= 0, ctx_owner + n_salient, ctx_owner)
        owner[frame_idx * n + pos_idx] = torch.arange(n_salient, device=owner.device)
        kept_x = torch.cat([salient_x, ctx_x])
        orphans = torch.nonzero(owner < 0).flatten()  # no context tokens (FastVID when int(R d) = 0)
        if orphans.numel():
            sims = F.normalize(seg.reshape(-1, dim)[orphans], dim=-1) @ F.normalize(kept_x, dim=-1).T
            owner[orphans] = sims.argmax(dim=1)  # the most similar kept token
        kept = kept_x.shape[0]
        kept_v = None if extra is None else torch.cat([extra[frame_idx, pos_idx], ctx_v])
        return finish_segment(
            grid,
            a,
            b,
            owner=owner,
            tokens=kept_x,
            sizes=torch.bincount(owner, minlength=kept),
            flat_index=torch.cat([frame_idx * n + pos_idx, ctx_flat]),
            method=self.name,
            out_dtype=self.out_dtype(grid),
            segment_index=grid.segment_index + k,
            uniqueness_value=uniq,
            stats=stats,
            deepstack=kept_v,
        )


class FastVID(InfoMerge):
    """DySeg + ATS + DTM as the official FastVID code: no TFD, penalty, carry or mask.

    Budgets follow the official per-frame split (see :func:`fastvid_frame_budget`): a
    segment of V frames has C * V context tokens, proportional to its length.
    """

    name = "fastvid"
    config_class = FastVIDConfig
    use_tfd = False

    def salient_per_frame(self, tokens_per_frame: int) -> int:
        """T_s = R - int(R d), R = int(r N)."""
        return fastvid_frame_budget(tokens_per_frame, self.ratio, self.config.context_fraction)[0]

    def context_budgets(self, x: torch.Tensor, spans: list[tuple[int, int]], stats: list) -> list[int]:
        """C * V_k per segment, C = int(int(r N) d); exact_total: round(r L N) - T_s L by length."""
        t, n, _ = x.shape
        lengths = torch.tensor([b - a for a, b in spans])
        salient, context = fastvid_frame_budget(n, self.ratio, self.config.context_fraction)
        if not self.config.exact_total:
            return (lengths * context).tolist()
        capacity = lengths * (n - salient)
        total = min(max(max(1, round(self.ratio * t * n)) - salient * t, len(spans)), int(capacity.sum()))
        return allocate_budgets(lengths.double(), total, capacity, minimum=1).tolist()
