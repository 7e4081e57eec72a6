"""Re-merge (docs/algorithms.md, "Re-merge"): shrink an already compressed segment to a smaller budget.

The raw tokens are gone, so merging works on the kept tokens and their sizes:
repeated bipartite soft matching (tokens alternate into two sets in temporal
order; each token of set A proposes its most cosine-similar token of set B; the
most similar proposals merge). Merges are size-weighted averages; sizes add; the
merged token keeps the position and time of its largest member (the earlier one
on ties), so provenance survives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamvid.errors import BudgetError
from streamvid.types import CompressedSegment

__all__ = ["remerge", "merge_step"]


def merge_step(
    x: torch.Tensor, sizes: torch.Tensor, order_key: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One bipartite round merging ``count`` tokens away.

    x: fp32 [n, D]; sizes: [n]; order_key: [n] (temporal order; lower wins ties).
    count <= n // 2. Returns (representative: input index of each output token
    [n - count], new tokens [n - count, D], new sizes [n - count], destination:
    output index of every input token [n]).
    """
    n = x.shape[0]
    a_idx = torch.arange(0, n, 2, device=x.device)  # (na,)
    b_idx = torch.arange(1, n, 2, device=x.device)  # (nb,)
    xn = F.normalize(x, dim=-1)
    sim = xn[a_idx] @ xn[b_idx].T  # (na, nb)
    best_sim, best_b = sim.max(dim=1)  # (na,)
    merged_a = torch.argsort(best_sim, descending=True, stable=True)[:count]  # rows of A merged away
    src = a_idx[merged_a]  # (count,) tokens merged away
    dst = b_idx[best_b[merged_a]]  # (count,) tokens they join

    w = sizes.double()
    sums = x.double() * w[:, None]  # (n, D) size-weighted
    sums.index_add_(0, dst, sums[src])
    new_sizes = sizes.clone().index_add_(0, dst, sizes[src])

    # representative: the largest member (earlier on ties) among dst and its sources
    score = sizes.double() - order_key.double() / (order_key.double().max() + 1)  # unique per token
    group_best = score.clone().scatter_reduce_(0, dst, score[src], reduce="amax")
    rep = torch.arange(n, device=x.device)
    winner = score[src] == group_best[dst]
    rep[dst[winner]] = src[winner]

    alive = torch.ones(n, dtype=torch.bool, device=x.device)
    alive[src] = False
    kept = torch.nonzero(alive).flatten()
    tokens = (sums[kept] / new_sizes[kept].double()[:, None]).float()
    destination = torch.full((n,), -1, dtype=torch.long, device=x.device)
    destination[kept] = torch.arange(kept.shape[0], device=x.device)
    destination[src] = destination[dst]
    return rep[kept], tokens, new_sizes[kept], destination


def remerge(segment: CompressedSegment, budget: int) -> CompressedSegment:
    """Merge ``segment`` down to ``budget`` tokens (identity when it already fits).

    Keeps the sum of sizes, positions and times of representatives, temporal order.
    """
    if budget < 1:
        raise BudgetError(f"cannot re-merge a segment to {budget} tokens; keep at least 1 or evict the segment")
    if segment.budget <= budget:
        return segment
    x = segment.tokens.float()  # (n, D)
    sizes = segment.sizes.clone()
    positions, times = segment.positions, segment.times
    h, w = segment.grid_size
    order_key = (positions[:, 0] * h + positions[:, 1]) * w + positions[:, 2]  # temporal, raster
    order_key = order_key.to(x.device)
    sizes = sizes.to(x.device)
    owner = segment.owner
    while x.shape[0] > budget:
        count = min(x.shape[0] - budget, x.shape[0] // 2)
        rep, x, sizes, destination = merge_step(x, sizes, order_key, count)
        # back to temporal order so the next round alternates neighbours in time
        order = torch.argsort(order_key[rep], stable=True)
        rep, x, sizes = rep[order], x[order], sizes[order]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.shape[0], device=order.device)
        if owner is not None:  # compose: original -> old kept token -> new kept token
            owner = rank[destination[owner.to(destination.device)]].cpu()
        order_key = order_key[rep]
        positions, times = positions[rep.cpu()], times[rep.cpu()]
    return segment.with_tokens(
        tokens=x.to(segment.tokens.dtype),
        sizes=sizes.long().cpu(),
        positions=positions,
        times=times,
        owner=owner,
    )
