import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamvid.compress.caba import (
    allocate_budgets,
    caba_weights,
    segment_stats,
    spectral_richness,
    uniqueness,
)
from streamvid.errors import BudgetError


def caba_reference(means, lengths, richness, tau, alpha=0.9, beta=0.1):
    """Spec 1.3 step by step in float64 (population z-scores)."""
    k = len(lengths)
    glob = sum(lengths[i] * means[i] for i in range(k)) / sum(lengths)
    u = [1 - float(torch.dot(m, glob) / (m.norm() * glob.norm())) for m in means]

    def z(xs):
        mu = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mu) ** 2 for x in xs) / len(xs))
        return [0.0] * len(xs) if sd <= 1e-12 else [(x - mu) / sd for x in xs]

    zu, ze = z(u), z(list(richness))
    return [lengths[i] / (1 + math.exp(-tau * (alpha * zu[i] + beta * ze[i]))) for i in range(k)]


def test_weights_match_reference():
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    lengths = [3, 8, 2, 16, 5]
    richness = [0.2, 0.5, 0.9, 0.1, 0.4]
    got = caba_weights(means, torch.tensor(lengths), torch.tensor(richness), tau=1.2)
    want = caba_reference(list(means), lengths, richness, tau=1.2)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-9)


def test_single_segment_gets_sigmoid_zero_times_length():
    w = caba_weights(torch.randn(1, 4), torch.tensor([7]), torch.tensor([0.3]), tau=2.0)
    assert float(w[0]) == pytest.approx(3.5)


def test_short_unique_segment_gets_more_per_frame_than_long_repetitive():
    gen = torch.Generator().manual_seed(1)
    common = torch.randn(16, 24, generator=gen)
    # two long repetitive segments of the same scene, one short segment of its own
    long_a = common + 0.01 * torch.randn(20, 16, 24, generator=gen)
    long_b = common + 0.01 * torch.randn(20, 16, 24, generator=gen)
    short = torch.randn(16, 24, generator=gen) + 0.5 * torch.randn(3, 16, 24, generator=gen)
    stats = [segment_stats(s) for s in (long_a, short, long_b)]
    w = caba_weights(
        torch.stack([s.mean_token for s in stats]),
        torch.tensor([s.length for s in stats]),
        torch.tensor([s.richness for s in stats]),
        tau=1.2,
    )
    budgets = allocate_budgets(w, 100, capacity=[20 * 16, 3 * 16, 20 * 16])
    assert int(budgets.sum()) == 100
    per_frame = budgets.double() / torch.tensor([20.0, 3.0, 20.0])
    assert per_frame[1] > per_frame[0] and per_frame[1] > per_frame[2]
    assert stats[1].richness > stats[0].richness


def test_richness_extremes():
    rank_one = torch.outer(torch.arange(1.0, 41.0), torch.randn(16))
    assert spectral_richness(rank_one) == pytest.approx(0.0, abs=1e-6)
    isotropic = torch.linalg.qr(torch.randn(64, 16)).Q * 3  # orthonormal columns: equal spectrum
    assert spectral_richness(isotropic) == pytest.approx(1.0, abs=1e-6)


def test_uniqueness_is_zero_for_the_global_mean():
    means = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert torch.allclose(uniqueness(means, torch.tensor([2, 5])), torch.zeros(2, dtype=torch.float64))


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(st.tuples(st.floats(0.0, 50.0), st.integers(1, 40)), min_size=1, max_size=12),
    frac=st.floats(0.0, 1.0),
)
def test_allocation_sums_exactly_and_respects_caps(data, frac):
    weights = torch.tensor([w for w, _ in data], dtype=torch.float64)
    caps = torch.tensor([c for _, c in data])
    k = len(data)
    total = k + round(frac * (int(caps.sum()) - k))
    budgets = allocate_budgets(weights, total, caps, minimum=1)
    assert int(budgets.sum()) == total
    assert bool((budgets >= 1).all()) and bool((budgets <= caps).all())
    # proportionality: a heavier segment never gets less, unless capped
    for i in range(k):
        for j in range(k):
            if weights[i] > weights[j] and budgets[i] < caps[i] and caps[i] >= caps[j]:
                assert budgets[i] >= budgets[j] - 1


def test_allocation_is_largest_remainder():
    # shares 3.5, 3.3, 3.2 of 10: floors 3,3,3, the one spare token goes to the largest remainder
    assert allocate_budgets([3.5, 3.3, 3.2], 10).tolist() == [4, 3, 3]
    # the cap pushes the excess of the first segment onto the others
    assert allocate_budgets([10.0, 1.0, 1.0], 12, capacity=[4, 10, 10]).tolist() == [4, 4, 4]


def test_allocation_errors_say_what_to_do():
    with pytest.raises(BudgetError, match="at least 3"):
        allocate_budgets([1.0, 1.0, 1.0], 2)
    with pytest.raises(BudgetError, match="exceeds"):
        allocate_budgets([1.0, 1.0], 30, capacity=[10, 10])


def test_richness_survives_an_eigen_solver_that_fails_in_fp32(monkeypatch):
    x = torch.randn(6, 4)
    expected = spectral_richness(x)
    real = torch.linalg.eigvalsh

    def fails_in_fp32(a):
        if a.dtype == torch.float32:
            raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")
        return real(a)

    monkeypatch.setattr(torch.linalg, "eigvalsh", fails_in_fp32)
    assert spectral_richness(x) == pytest.approx(expected, abs=1e-6)


def test_water_fill_stops_early_with_the_full_bisection_s_result():
    """The bisection stops once its bounds are adjacent floats: bit-identical to 200 full steps."""
    from streamvid.compress.caba import _water_fill

    def full(weights, total, lo, hi):
        lam_lo, lam_hi = 0.0, 1.0
        while torch.clamp(lam_hi * weights, lo, hi).sum() < total:
            lam_hi *= 2.0
        for _ in range(200):
            mid = 0.5 * (lam_lo + lam_hi)
            if torch.clamp(mid * weights, lo, hi).sum() < total:
                lam_lo = mid
            else:
                lam_hi = mid
        return torch.clamp(lam_hi * weights, lo, hi)

    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        k = int(torch.randint(1, 300, (1,), generator=g))
        w = torch.rand(k, generator=g, dtype=torch.float64) ** 3
        w = (w / w.max()).clamp_min(1e-12)
        hi = torch.randint(1, 200, (k,), generator=g).double()
        lo = torch.minimum(torch.ones(k, dtype=torch.float64), hi)
        total = float(torch.randint(int(lo.sum()), int(hi.sum()) + 1, (1,), generator=g))
        assert torch.equal(_water_fill(w, total, lo, hi), full(w, total, lo, hi))
