import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamvid import BudgetError, create_compressor, remerge
from streamvid.compress.remerge import remerge_many
from streamvid.types import TokenGrid


def compressed(ratio=0.25, seed=0, frames=12):
    grid = TokenGrid(
        torch.randn(frames, 6, 6, 16, generator=torch.Generator().manual_seed(seed)),
        torch.arange(frames, dtype=torch.float64) * 0.25,
    )
    return create_compressor("infomerge", ratio=ratio).compress(grid, boundaries=[0, frames])[0]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 1000), frac=st.floats(0.0, 1.0))
def test_remerge_keeps_size_sum_budget_and_provenance(seed, frac):
    seg = compressed(seed=seed)
    budget = 1 + round(frac * (seg.budget - 1))
    out = remerge(seg, budget)
    assert out.budget == budget
    assert int(out.sizes.sum()) == int(seg.sizes.sum()) == seg.original_tokens
    assert torch.isfinite(out.tokens.float()).all()
    # every representative is one of the input tokens' positions, with its time
    before = {tuple(p): float(t) for p, t in zip(seg.positions.tolist(), seg.times.tolist())}
    for p, t in zip(out.positions.tolist(), out.times.tolist()):
        assert before[tuple(p)] == t
    assert bool((out.times[1:] >= out.times[:-1]).all())
    # the size-weighted mean of the segment is unchanged by merging
    mean_before = (seg.tokens.float() * seg.sizes[:, None]).sum(0) / seg.sizes.sum()
    mean_after = (out.tokens.float() * out.sizes[:, None]).sum(0) / out.sizes.sum()
    assert torch.allclose(mean_before, mean_after, atol=1e-4)
    assert out.frame_count == seg.frame_count and torch.equal(out.mean_token, seg.mean_token)
    # provenance composes: each original now belongs to one merged token, sizes agree
    assert torch.equal(torch.bincount(out.owner, minlength=out.budget), out.sizes)


def test_remerge_merges_duplicates_exactly_first():
    seg = compressed(ratio=0.5)
    n = seg.budget
    # duplicate every token: re-merging back to n must pair each token with its twin
    doubled = seg.with_tokens(
        tokens=seg.tokens.repeat_interleave(2, dim=0),
        sizes=torch.ones(2 * n, dtype=torch.long),
        positions=seg.positions.repeat_interleave(2, dim=0),
        times=seg.times.repeat_interleave(2),
    )
    out = remerge(doubled, n)
    assert torch.allclose(out.tokens, seg.tokens, atol=1e-6)
    assert out.sizes.tolist() == [2] * n


def test_representative_is_the_largest_member():
    seg = compressed(ratio=0.5)
    big = seg.with_tokens(seg.tokens, seg.sizes * 0 + 1, seg.positions, seg.times)
    sizes = big.sizes.clone()
    sizes[3] = 1000
    big = big.with_tokens(big.tokens, sizes, big.positions, big.times)
    out = remerge(big, 1)
    assert out.positions.tolist() == [seg.positions[3].tolist()]
    assert int(out.sizes[0]) == int(sizes.sum())


def test_remerge_identity_and_errors():
    seg = compressed()
    assert remerge(seg, seg.budget) is seg
    assert remerge(seg, seg.budget + 10) is seg
    with pytest.raises(BudgetError, match="at least 1"):
        remerge(seg, 0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1000), fracs=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6))
def test_remerge_many_equals_one_by_one(seed, fracs):
    """The batched rounds give exactly what remerge() gives per segment: tokens, sizes,
    positions, times and composed provenance (segments of different lengths, some already fitting)."""
    segs = [compressed(ratio=0.1 + 0.1 * (k % 4), seed=seed + k, frames=4 + 3 * k) for k in range(len(fracs))]
    budgets = [1 + round(f * (s.budget + 2)) for s, f in zip(segs, fracs)]  # some above the stored count
    batched = remerge_many(segs, budgets)
    for seg, budget, got in zip(segs, budgets, batched):
        want = remerge(seg, budget)
        assert got.budget == want.budget == min(budget, seg.budget)
        assert torch.allclose(got.tokens, want.tokens, atol=1e-5)
        assert torch.equal(got.sizes, want.sizes)
        assert torch.equal(got.positions, want.positions) and torch.equal(got.times, want.times)
        assert torch.equal(got.owner, want.owner)


def test_remerge_many_checks_its_budgets():
    seg = compressed()
    with pytest.raises(BudgetError):
        remerge_many([seg], [0])
    with pytest.raises(BudgetError):
        remerge_many([seg, seg], [3])
    assert remerge_many([seg], [seg.budget])[0] is seg
