"""Re-merge (docs/algorithms.md, "Re-merge"): shrink an already compressed segment to a smaller budget.

The raw tokens are gone, so merging works on the kept tokens and their sizes:
repeated bipartite soft matching (tokens alternate into two sets in temporal
order; each token of set A proposes its most cosine-similar token of set B; the
most similar proposals merge). Merges are size-weighted averages; sizes add; the
merged token keeps the position and time of its largest member (the earlier one
on ties), so provenance survives. A segment's DeepStack levels ride along as extra
channels: matched on the tokens alone, averaged with the same weights.

:func:`remerge_many` runs the same rounds for many segments at once (padded into one
batch), which is what a question that shows dozens of segments at a coarse grain needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamvid.errors import BudgetError
from streamvid.types import CompressedSegment

__all__ = ["remerge", "remerge_many", "merge_step"]


def merge_step(
    x: torch.Tensor, sizes: torch.Tensor, order_key: torch.Tensor, count: int, match_dim: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One bipartite round merging ``count`` tokens away.

    x: fp32 [n, C]; sizes: [n]; order_key: [n] (temporal order; lower wins ties); match_dim:
    similarity uses the first ``match_dim`` channels only (the tokens; the rest are carried
    channels such as DeepStack levels), all channels are averaged. count <= n // 2.
    Returns (representative: input index of each output token
    [n - count], new tokens [n - count, D], new sizes [n - count], destination:
    output index of every input token [n]).
    """
    n = x.shape[0]
    a_idx = torch.arange(0, n, 2, device=x.device)  # (na,)
    b_idx = torch.arange(1, n, 2, device=x.device)  # (nb,)
    xn = F.normalize(x[:, :match_dim], dim=-1)
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

    Keeps the sum of sizes, positions and times of representatives, temporal order; DeepStack
    levels, when the segment has them, get the same merges as the tokens.
    """
    if budget < 1:
        raise BudgetError(f"cannot re-merge a segment to {budget} tokens; keep at least 1 or evict the segment")
    if segment.budget <= budget:
        return segment
    x = _channels(segment)  # (n, (1 + L) * D)
    sizes = segment.sizes.clone()
    positions, times = segment.positions, segment.times
    h, w = segment.grid_size
    order_key = (positions[:, 0] * h + positions[:, 1]) * w + positions[:, 2]  # temporal, raster
    order_key = order_key.to(x.device)
    sizes = sizes.to(x.device)
    owner = segment.owner
    while x.shape[0] > budget:
        count = min(x.shape[0] - budget, x.shape[0] // 2)
        rep, x, sizes, destination = merge_step(x, sizes, order_key, count, match_dim=segment.dim)
        # back to temporal order so the next round alternates neighbours in time
        order = torch.argsort(order_key[rep], stable=True)
        rep, x, sizes = rep[order], x[order], sizes[order]
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.shape[0], device=order.device)
        if owner is not None:  # compose: original -> old kept token -> new kept token
            owner = rank[destination[owner.to(destination.device)]].cpu()
        order_key = order_key[rep]
        positions, times = positions[rep.cpu()], times[rep.cpu()]
    tokens, deepstack = _split(segment, x)
    return segment.with_tokens(
        tokens=tokens,
        sizes=sizes.long().cpu(),
        positions=positions,
        times=times,
        owner=owner,
        deepstack=deepstack,
    )


def _channels(segment: CompressedSegment) -> torch.Tensor:
    """fp32 [n, (1 + L) * D]: the tokens, then each DeepStack level, side by side."""
    if segment.deepstack is None:
        return segment.tokens.float()
    levels = segment.deepstack.to(segment.tokens.device).float()  # (L, n, D)
    return torch.cat([segment.tokens.float(), *levels], dim=1)


def _split(segment: CompressedSegment, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Merged channels back to (tokens [n, D], deepstack [L, n, D] or None) in the stored dtypes."""
    dim = segment.dim
    tokens = x[:, :dim].to(segment.tokens.dtype)
    if segment.deepstack is None:
        return tokens, None
    levels = x[:, dim:].reshape(x.shape[0], segment.deepstack_levels, dim).transpose(0, 1)
    return tokens, levels.to(device=segment.deepstack.device, dtype=segment.deepstack.dtype).contiguous()


def remerge_many(segments: list[CompressedSegment], budgets: list[int]) -> list[CompressedSegment]:
    """``[remerge(s, b) for s, b in zip(segments, budgets)]``, computed as one padded batch per round.

    The rounds, tie rules and provenance are those of :func:`remerge` (tested equal); the
    batch runs on the segments' device. Segments whose width or DeepStack levels differ from
    the first's are re-merged one by one.
    """
    if len(segments) != len(budgets):
        raise BudgetError(f"remerge_many got {len(segments)} segments but {len(budgets)} budgets; give one budget each")
    for b in budgets:
        if b < 1:
            raise BudgetError(f"cannot re-merge a segment to {b} tokens; keep at least 1 or evict the segment")
    out = list(segments)
    todo = [i for i, (s, b) in enumerate(zip(segments, budgets)) if s.budget > b]
    if not todo:
        return out
    shape = (segments[todo[0]].dim, segments[todo[0]].deepstack_levels)
    for i in [i for i in todo if (segments[i].dim, segments[i].deepstack_levels) != shape]:
        out[i] = remerge(segments[i], budgets[i])
    todo = [i for i in todo if (segments[i].dim, segments[i].deepstack_levels) == shape]
    if len(todo) == 1:
        out[todo[0]] = remerge(segments[todo[0]], budgets[todo[0]])
        return out
    batch = [segments[i] for i in todo]
    device = batch[0].tokens.device
    dim, channels = shape[0], shape[0] * (1 + shape[1])
    count_s, m = len(batch), max(s.budget for s in batch)
    x = torch.zeros(count_s, m, channels, device=device)
    sizes = torch.zeros(count_s, m, dtype=torch.long, device=device)
    order_key = torch.zeros(count_s, m, dtype=torch.long, device=device)
    for j, seg in enumerate(batch):
        n = seg.budget
        h, w = seg.grid_size
        pos = seg.positions.to(device)
        x[j, :n] = _channels(seg).to(device)
        sizes[j, :n] = seg.sizes.to(device)
        order_key[j, :n] = (pos[:, 0] * h + pos[:, 1]) * w + pos[:, 2]
    length = torch.tensor([s.budget for s in batch], device=device)
    target = torch.tensor([budgets[i] for i in todo], device=device)
    origin = torch.arange(m, device=device).expand(count_s, m).clone()  # input token behind each slot
    owners = [s.owner for s in batch]
    while bool((length > target).any()):
        count = torch.minimum(length - target, length // 2).clamp(min=0)
        x, sizes, order_key, origin, length, destination = _merge_round(
            x, sizes, order_key, origin, length, count, match_dim=dim
        )
        for j, owner in enumerate(owners):
            if owner is not None and int(count[j]) > 0:
                owners[j] = destination[j][owner.to(device)].cpu()
    lengths = length.tolist()
    for j, (i, seg) in enumerate(zip(todo, batch)):
        n = lengths[j]
        keep = origin[j, :n].cpu()
        tokens, deepstack = _split(seg, x[j, :n])
        out[i] = seg.with_tokens(
            tokens=tokens,
            sizes=sizes[j, :n].cpu(),
            positions=seg.positions[keep],
            times=seg.times[keep],
            owner=owners[j],
            deepstack=deepstack,
        )
    return out


def _merge_round(
    x: torch.Tensor,
    sizes: torch.Tensor,
    order_key: torch.Tensor,
    origin: torch.Tensor,
    length: torch.Tensor,
    count: torch.Tensor,
    match_dim: int,
) -> tuple[torch.Tensor, ...]:
    """One :func:`merge_step` for every row of a padded batch (row j: ``length[j]`` valid
    tokens, ``count[j]`` merged away; similarity on the first ``match_dim`` channels), then
    back to temporal order; returns the new (x, sizes, order_key, origin, length) and
    ``destination`` [S, m] (new slot of every old one)."""
    count_s, m, dim = x.shape
    device = x.device
    slot = torch.arange(m, device=device)
    valid = slot[None, :] < length[:, None]  # (S, m)
    xn = F.normalize(x[..., :match_dim], dim=-1)
    sim = xn[:, 0::2] @ xn[:, 1::2].transpose(1, 2)  # (S, na, nb)
    sim = sim.masked_fill(~valid[:, None, 1::2], -torch.inf)
    best_sim, best_b = sim.max(dim=2)  # (S, na)
    best_sim = best_sim.masked_fill(~valid[:, 0::2], -torch.inf)
    ranked = torch.argsort(best_sim, dim=1, descending=True, stable=True)  # (S, na)
    take = torch.arange(ranked.shape[1], device=device)[None, :] < count[:, None]
    rows = torch.arange(count_s, device=device)[:, None].expand_as(ranked)[take]
    a_rows = ranked[take]
    src = rows * m + 2 * a_rows  # flat index of tokens merged away
    dst = rows * m + 2 * best_b[rows, a_rows] + 1  # flat index of tokens they join

    flat_sizes = sizes.reshape(-1)
    sums = x.reshape(-1, dim).double() * flat_sizes.double()[:, None]
    sums.index_add_(0, dst, sums[src])
    new_sizes = flat_sizes.clone().index_add_(0, dst, flat_sizes[src])
    key_max = order_key.masked_fill(~valid, 0).amax(dim=1, keepdim=True)  # per row, as merge_step
    score = (sizes.double() - order_key.double() / (key_max.double() + 1)).reshape(-1)
    group_best = score.clone().scatter_reduce_(0, dst, score[src], reduce="amax")
    rep = torch.arange(count_s * m, device=device)
    winner = score[src] == group_best[dst]
    rep[dst[winner]] = src[winner]

    alive = valid.reshape(-1).clone()
    alive[src] = False
    rep_key = order_key.reshape(-1)[rep]
    sort_key = torch.where(alive, rep_key, torch.iinfo(torch.long).max).reshape(count_s, m)
    # kept tokens in input order, then by their representative's time (stable), as in remerge()
    order = torch.argsort(sort_key, dim=1, stable=True)
    new_length = alive.reshape(count_s, m).sum(dim=1)
    new_m = int(new_length.max())
    order = order[:, :new_m]
    flat_order = (torch.arange(count_s, device=device)[:, None] * m + order).reshape(-1)
    tokens = (sums[flat_order] / new_sizes[flat_order].double()[:, None]).float().reshape(count_s, new_m, dim)
    tokens = tokens.masked_fill((slot[None, :new_m] >= new_length[:, None])[..., None], 0.0)  # clean padding
    new_slot = torch.full((count_s * m,), -1, dtype=torch.long, device=device)
    new_slot[flat_order] = torch.arange(new_m, device=device).repeat(count_s)
    new_slot[src] = new_slot[dst]
    rep_slot = rep[flat_order] % m
    gather_rows = torch.arange(count_s, device=device)[:, None]
    return (
        tokens,
        new_sizes[flat_order].reshape(count_s, new_m),
        rep_key[flat_order].reshape(count_s, new_m),
        origin[gather_rows, rep_slot.reshape(count_s, new_m)],
        new_length,
        new_slot.reshape(count_s, m),
    )
