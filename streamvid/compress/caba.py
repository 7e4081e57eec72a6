"""Content-Aware Budget Allocation (CABA), see docs/algorithms.md, "CABA" and "Memory cap".

CABA works on segment statistics only (mean token, length, spectral richness), so
the same functions split a clip's context budget over its segments and, later, a
memory's global cap over every stored segment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from streamvid.errors import BudgetError, ShapeError

__all__ = [
    "SegmentStats",
    "segment_stats",
    "spectral_richness",
    "caba_weights",
    "allocate_budgets",
]


@dataclass(frozen=True)
class SegmentStats:
    """What CABA needs to know of a segment: xbar_k (fp32 [D]), |V_k|, e_k."""

    mean_token: torch.Tensor
    length: int
    richness: float


def spectral_richness(x: torch.Tensor) -> float:
    """Normalised spectral entropy of a token matrix. x: [M, D] -> e in [0, 1].

    Uses the eigenvalues of the smaller Gram matrix (same non-zero spectrum as the
    squared singular values).
    """
    if x.ndim != 2:
        raise ShapeError(f"spectral_richness takes [M, D], got {list(x.shape)}")
    m, d = x.shape
    rank_bound = min(m, d)
    if rank_bound < 2:
        return 0.0
    x = x.float()
    gram = x @ x.T if m <= d else x.T @ x  # (R, R)
    try:
        eig = torch.linalg.eigvalsh(gram).double()  # fp32 eigen, fp64 entropy
        eps = torch.finfo(torch.float32).eps
    except torch.linalg.LinAlgError:  # LAPACK can fail to converge on a near-degenerate fp32 Gram
        eig = torch.linalg.eigvalsh(gram.double())
        eps = torch.finfo(torch.float64).eps
    eig = eig.clamp_min(0.0)
    total = eig.sum()
    if total <= 0:
        return 0.0
    # eigenvalues below the solver's round-off (the usual rank tolerance) are zeros, not spectrum
    eig = torch.where(eig > eig.max() * rank_bound * eps, eig, torch.zeros_like(eig))
    pi = eig / eig.sum()
    pi = pi[pi > 0]
    return float(-(pi * pi.log()).sum() / math.log(rank_bound))


def segment_stats(tokens: torch.Tensor) -> SegmentStats:
    """tokens: [V, N, D] (or [V, h, w, D]) -> SegmentStats."""
    if tokens.ndim == 4:
        tokens = tokens.flatten(1, 2)  # (V, h*w, D)
    if tokens.ndim != 3:
        raise ShapeError(f"segment_stats takes [V, N, D], got {list(tokens.shape)}")
    flat = tokens.reshape(-1, tokens.shape[-1]).float()  # (V*N, D)
    return SegmentStats(
        mean_token=flat.mean(dim=0),
        length=tokens.shape[0],
        richness=spectral_richness(flat),
    )


def _zscore(x: torch.Tensor) -> torch.Tensor:
    if x.numel() < 2:
        return torch.zeros_like(x)
    std = x.std(unbiased=False)
    if std <= 1e-12:
        return torch.zeros_like(x)
    return (x - x.mean()) / std


def caba_weights(
    mean_tokens: torch.Tensor,
    lengths: torch.Tensor,
    richness: torch.Tensor,
    *,
    tau: float,
    alpha: float = 0.9,
    beta: float = 0.1,
    global_mean: torch.Tensor | None = None,
    recency: torch.Tensor | None = None,
) -> torch.Tensor:
    """CABA weights w_k = sigmoid(tau * m_k) * |V_k| (times an optional recency factor).

    mean_tokens: [K, D]; lengths: [K]; richness: [K]; global_mean: [D] (default: the
    length-weighted mean of mean_tokens); recency: [K] multiplicative factors.
    Returns float64 [K]; uniqueness is :func:`uniqueness`.
    """
    lengths = lengths.double()
    u = uniqueness(mean_tokens, lengths, global_mean)
    m = alpha * _zscore(u) + beta * _zscore(richness.double())
    w = torch.sigmoid(tau * m) * lengths
    if recency is not None:
        w = w * recency.double()
    return w


def uniqueness(
    mean_tokens: torch.Tensor,
    lengths: torch.Tensor,
    global_mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """u_k = 1 - cos(xbar_k, xglob), xglob length-weighted. -> float64 [K]."""
    if mean_tokens.ndim != 2 or mean_tokens.shape[0] != lengths.shape[0]:
        raise ShapeError(
            f"mean_tokens must be [K, D] with K = len(lengths), got {list(mean_tokens.shape)} and {list(lengths.shape)}"
        )
    means = mean_tokens.double()
    if global_mean is None:
        lw = lengths.double().to(means.device)
        global_mean = (lw[:, None] * means).sum(0) / lw.sum()
    return 1.0 - F.cosine_similarity(means, global_mean.double()[None, :], dim=-1)


def _water_fill(weights: torch.Tensor, total: float, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Real shares x_k = clip(lam * w_k, lo_k, hi_k) with sum x = total (bisection on lam)."""
    lam_lo, lam_hi = 0.0, 1.0
    while torch.clamp(lam_hi * weights, lo, hi).sum() < total:
        lam_hi *= 2.0
        if lam_hi > 1e300:
            break
    for _ in range(200):
        mid = 0.5 * (lam_lo + lam_hi)
        settled = mid in (lam_lo, lam_hi)  # adjacent floats: this step is the last that can change them
        if torch.clamp(mid * weights, lo, hi).sum() < total:
            lam_lo = mid
        else:
            lam_hi = mid
        if settled:
            break
    return torch.clamp(lam_hi * weights, lo, hi)


def allocate_budgets(
    weights: torch.Tensor | Sequence[float],
    total: int,
    capacity: torch.Tensor | Sequence[int] | None = None,
    minimum: int = 1,
) -> torch.Tensor:
    """Integer budgets proportional to ``weights`` that sum exactly to ``total``.

    Each budget lies in [minimum, capacity_k]; shares cut by a cap or raised to the
    minimum are redistributed over the others (water filling), and the rounding is
    fixed by largest remainder. Deterministic: ties go to the lower index.
    Returns int64 [K].
    """
    w = torch.as_tensor(weights, dtype=torch.float64).cpu()
    k = w.shape[0]
    if k == 0:
        raise BudgetError("no segments to allocate a budget to")
    if bool((w < 0).any()) or not bool(torch.isfinite(w).all()):
        raise BudgetError("budget weights must be finite and non-negative")
    cap = (
        torch.full((k,), float("inf"), dtype=torch.float64)
        if capacity is None
        else torch.as_tensor(capacity, dtype=torch.float64).cpu()
    )
    lo = torch.minimum(torch.full((k,), float(minimum), dtype=torch.float64), cap)
    if total < lo.sum():
        raise BudgetError(
            f"a total of {total} tokens cannot give {k} segments {minimum} token(s) each; "
            f"raise the budget to at least {int(lo.sum())} or merge/evict segments"
        )
    if total > cap.sum():
        raise BudgetError(
            f"a total of {total} tokens exceeds the {int(cap.sum())} tokens the segments hold; lower the budget"
        )
    # scale to max 1; a zero weight would make a segment unreachable when the others are capped
    w = torch.ones_like(w) if float(w.max()) <= 0 else (w / w.max()).clamp_min(1e-12)
    share = _water_fill(w, float(total), lo, cap)
    budgets = torch.floor(share + 1e-9).clamp(min=lo, max=cap)
    frac = share - budgets
    short = int(total - budgets.sum())
    # stable sorts: among equal remainders the lower index wins
    if short > 0:
        key = torch.where(budgets < cap, frac, torch.full_like(frac, -float("inf")))
        budgets[torch.argsort(-key, stable=True)[:short]] += 1
    elif short < 0:
        key = torch.where(budgets > lo, frac, torch.full_like(frac, float("inf")))
        budgets[torch.argsort(key, stable=True)[:-short]] -= 1
    return budgets.long()
