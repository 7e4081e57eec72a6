"""Budget planning under the global cap (docs/algorithms.md, "Memory cap"), pure functions.

Given every live segment's CABA statistics and current token count, decide which
segments to evict (only when the cap cannot give each one token) and which to
re-merge down to their budget. Deterministic: ties go to the older segment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamvid.compress.caba import allocate_budgets, caba_weights

__all__ = ["RebalancePlan", "plan_rebalance", "recency_factors"]


@dataclass(frozen=True)
class RebalancePlan:
    """current: int64 [K] token counts before; budgets: int64 [K] CABA budgets (0 for
    evicted); targets: int64 [K] counts after (== current when untouched);
    evict: bool [K]; weights: float64 [K]."""

    current: torch.Tensor
    budgets: torch.Tensor
    targets: torch.Tensor
    evict: torch.Tensor
    weights: torch.Tensor

    @property
    def touched(self) -> torch.Tensor:
        """bool [K]: segments to re-merge (their target fell below their current count)."""
        return ~self.evict & (self.targets < self.current)


def recency_factors(end_times: torch.Tensor, now: torch.Tensor, half_life: float | None) -> torch.Tensor | None:
    """0.5 ** ((now - end) / half_life) per segment, or None when recency is off."""
    if half_life is None:
        return None
    age = (now.double() - end_times.double()).clamp_min(0.0)
    return torch.pow(0.5, age / half_life)


def plan_rebalance(
    mean_tokens: torch.Tensor,
    lengths: torch.Tensor,
    richness: torch.Tensor,
    current: torch.Tensor,
    cap: int,
    *,
    global_mean: torch.Tensor,
    tau: float = 1.2,
    alpha: float = 0.9,
    beta: float = 0.1,
    recency: torch.Tensor | None = None,
    hysteresis: float = 0.25,
) -> RebalancePlan:
    """Plan the budgets of K live segments under ``cap`` tokens.

    mean_tokens: [K, D]; lengths, richness, current: [K] (current token counts).
    1. CABA weights w over all K (uniqueness against ``global_mean``).
    2. If cap < K, evict the K - cap lowest-weight segments (older first on ties).
    3. Budgets B = cap * w / sum w by largest remainder, each in [1, current].
    4. Re-merge to B every segment holding more than (1 + hysteresis) B; then, while
       the total still exceeds the cap, the one with the largest excess over B.
    Targets never exceed current and sum to at most ``cap``.
    """
    k = current.shape[0]
    current = current.long().cpu()
    weights = caba_weights(
        mean_tokens,
        lengths,
        richness,
        tau=tau,
        alpha=alpha,
        beta=beta,
        global_mean=global_mean,
        recency=recency,
    ).cpu()
    evict = torch.zeros(k, dtype=torch.bool)
    if cap < k:
        # stable sort on weight: among equal weights the older (lower index) goes first
        order = torch.argsort(weights, stable=True)
        evict[order[: k - cap]] = True
    keep = ~evict
    budgets = torch.zeros(k, dtype=torch.long)
    targets = current.clone()
    targets[evict] = 0
    kept_idx = torch.nonzero(keep).flatten()
    if kept_idx.numel():
        budgets[kept_idx] = allocate_budgets(
            weights[kept_idx], min(cap, int(current[keep].sum())), capacity=current[kept_idx], minimum=1
        )
    over = keep & (current > torch.floor((1 + hysteresis) * budgets.double()).long())
    targets[over] = budgets[over]
    excess = (targets - budgets).clamp_min(0)
    excess[evict] = 0
    need = int(targets.sum()) - cap
    if need > 0:
        for i in torch.argsort(-excess, stable=True).tolist():
            if need <= 0 or excess[i] == 0:
                break
            need -= int(excess[i])
            targets[i] = budgets[i]
    return RebalancePlan(current=current, budgets=budgets, targets=targets, evict=evict, weights=weights)
