"""Slow references written from the published equations, with loops, against the compressors.

FastVID: the official code's budgets (per frame R = int(r N), context int(R d), salient
R - int(R d); anchor frames every p frames back from a segment's last, floor(C V / #anchor
frames) each) and its DTM averaging (each anchor frame's anchors absorb all the segment's
non-salient tokens, the anchor among its own members). VidCom²: round(scale_t N) tokens per
frame, int(D / 2) low-variance channels. InfoMerge (paper): T_s = floor((1 - d) r N),
B_k = max(1, round(d r L N w_k / sum w)), the static carry written into H before DTM.
Density ties: none occur on these random inputs (ours break ties by index).
"""

import math

import pytest
import torch

from streamvid import create_compressor
from streamvid.compress.baselines import vidcom2_frame_counts, vidcom2_scores
from streamvid.compress.infomerge import carry_static, constants_for_ratio
from streamvid.types import TokenGrid


def grid_of(x: torch.Tensor, h: int, w: int) -> TokenGrid:
    t, _, d = x.shape
    return TokenGrid(x.reshape(t, h, w, d), torch.arange(t, dtype=torch.float64))


def per_frame_counts(segments, frames):
    counts = [0] * frames
    for s in segments:
        for f in s.positions[:, 0].tolist():
            counts[s.frame_offset + f] += 1
    return counts


def top_positions(values, k):
    """Indices of the k largest values, ties to the lower index."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))[:k]


def cosine(a, b):
    return float(torch.dot(a.double(), b.double()) / (a.double().norm() * b.double().norm()))


def density_reference(x, k):
    """rho_i = exp(-mean of the k smallest d^2, d = ||x_i - x_j|| / sqrt(D)); q_i = rho_i * delta_i."""
    m, d = x.shape
    dist = [[float((x[i].double() - x[j].double()).norm()) / math.sqrt(d) for j in range(m)] for i in range(m)]
    rho = [math.exp(-sum(v * v for v in sorted(row)[:k]) / k) for row in dist]
    dmax = max(max(row) for row in dist)
    out = []
    for i in range(m):
        denser = [dist[i][j] for j in range(m) if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        out.append(rho[i] * (min(denser) if denser else dmax))
    return out


def anchor_frames(length, interval):
    return [f for f in range(length) if (length - 1 - f) % interval == 0]


def floored_quotas(length, budget, interval, free):
    """Per-anchor-frame quotas floor(budget / n); fewer tokens than anchor frames: the latest get one."""
    frames = anchor_frames(length, interval)
    n = len(frames)
    assert budget <= n * free, "outside the published rule's range (an anchor frame cannot hold its quota)"
    if budget >= n:
        return {f: budget // n for f in frames}
    return {f: (1 if i < budget else 0) for i, f in enumerate(sorted(frames, reverse=True))}


def dtm_reference(h, salient, quotas, static=None, mu=0.6, knn=4):
    """DTM of one segment. h: [V, N, D]; salient: list of sets; quotas: {frame: count}.

    Returns {(frame, position): token}. Hard mask when ``static`` (a set) is given.
    """
    v, n, _ = h.shape
    members = [(t, p) for t in range(v) for p in range(n) if p not in salient[t]]
    taken_static = set()
    out = {}
    for t in sorted(quotas):
        if quotas[t] == 0:
            continue
        cand = [p for p in range(n) if p not in salient[t]]
        score = density_reference(h[t, cand], knn)
        if static is not None:
            score = [-math.inf if (p in static and p in taken_static) else s for p, s in zip(cand, score)]
        anchors = [cand[i] for i in top_positions(score, quotas[t])]
        if static is not None:
            taken_static |= {p for p in anchors if p in static}
        groups = {p: [] for p in anchors}
        for tm, pm in members:  # every non-salient token of the segment joins this frame's nearest anchor
            best = max(anchors, key=lambda p: cosine(h[tm, pm], h[t, p]))  # ties: the first anchor
            groups[best].append(h[tm, pm].double())
        for p in anchors:
            k = len(groups[p])  # the anchor is one of its own members
            wt = max(1.0 / (k + 1), mu) if k else 1.0
            mean = sum(groups[p]) / k if k else 0.0
            out[(t, p)] = wt * h[t, p].double() + (1 - wt) * mean
    return out


def fastvid_reference(x, sal, boundaries, ratio, d=0.4, interval=4):
    """The official FastVID selection and merging on one clip. -> {(frame, position): token}."""
    t, n, _ = x.shape
    retain = int(n * ratio)
    context = int(retain * d)
    salient_n = retain - context
    kept = {}
    for a, b in zip(boundaries, boundaries[1:]):
        v = b - a
        salient = [set(top_positions(sal[f].tolist(), salient_n)) for f in range(a, b)]
        for f in range(v):
            for p in salient[f]:
                kept[(a + f, p)] = x[a + f, p].double()
        frames = anchor_frames(v, interval)
        quotas = {f: (context * v) // len(frames) for f in frames}
        for (f, p), tok in dtm_reference(x[a:b], salient, quotas).items():
            kept[(a + f, p)] = tok
    return kept


def compressed_tokens(segments, n, w):
    out = {}
    for s in segments:
        for pos, tok in zip(s.positions.tolist(), s.tokens):
            out[(s.frame_offset + pos[0], pos[1] * w + pos[2])] = tok.double()
    return out


def assert_same_kept(got, want, atol=1e-5):
    assert set(got) == set(want)
    worst = max(float((got[k] - want[k]).abs().max()) for k in want)
    assert worst <= atol, worst


# ---- FastVID ----


@pytest.mark.parametrize("ratio", [0.15, 0.10, 0.05])
def test_fastvid_budget_is_the_official_per_frame_rule(ratio):
    t, h, w = 32, 14, 14
    n = h * w
    x = torch.randn(t, n, 8, generator=torch.Generator().manual_seed(1))
    boundaries = [0, 1, 6, 16, 32]
    comp = create_compressor("fastvid", ratio=ratio)
    segments = comp.compress(grid_of(x, h, w), boundaries=boundaries)
    retain = int(n * ratio)
    context = int(retain * 0.4)
    want = []
    for a, b in zip(boundaries, boundaries[1:]):
        v = b - a
        frames = anchor_frames(v, 4)
        for f in range(v):
            want.append(retain - context + ((context * v) // len(frames) if f in frames else 0))
    assert per_frame_counts(segments, t) == want
    assert comp.total_budget(grid_of(x, h, w), boundaries) == sum(want)


def test_fastvid_keeps_928_tokens_of_32_frames_at_15_percent():
    x = torch.randn(32, 196, 8, generator=torch.Generator().manual_seed(2))
    segments = create_compressor("fastvid", ratio=0.15).compress(grid_of(x, 14, 14), boundaries=[0, 8, 16, 32])
    assert sum(s.budget for s in segments) == 29 * 32 == 928
    assert per_frame_counts(segments, 32)[:8] == [18, 18, 18, 62, 18, 18, 18, 62]  # 18 + 11 * 8 / 2


@pytest.mark.parametrize("boundaries", [[0, 6], [0, 1, 6], [0, 2, 3, 9]])
def test_fastvid_selection_and_dtm_averaging_match_reference(boundaries):
    h, w, d = 4, 4, 8
    t = boundaries[-1]
    gen = torch.Generator().manual_seed(len(boundaries))
    x = torch.randn(t, h * w, d, generator=gen)
    sal = torch.rand(t, h * w, generator=gen)
    segments = create_compressor("fastvid", ratio=0.5).compress(
        grid_of(x, h, w), saliency=sal.reshape(t, h, w), boundaries=boundaries
    )
    want = fastvid_reference(x, sal, boundaries, ratio=0.5)
    assert_same_kept(compressed_tokens(segments, h * w, w), want)


# ---- VidCom² ----


def vidcom2_reference(x, ratio, temperature=0.01):
    """Kept positions per frame and the scores, with loops. x: [T, N, D]."""
    t, n, d = x.shape
    flat = x.reshape(-1, d).double()
    var = [float(((flat[:, c] - flat[:, c].mean()) ** 2).mean()) for c in range(d)]
    channels = sorted(range(d), key=lambda c: (var[c], c))[: int(d / 2)]
    y = x.double()[..., channels]
    y = y / y.norm(dim=-1, keepdim=True)
    vid_mean = y.reshape(-1, len(channels)).mean(0)

    def kern(a, c):
        d2 = float(((a - c) ** 2).sum())
        return sum(math.exp(-d2 / (2 * s)) for s in (1 / 8, 1 / 4, 1 / 2, 1, 2))

    s_vid = [[kern(y[i, j], vid_mean) for j in range(n)] for i in range(t)]
    s_frm = [[kern(y[i, j], y[i].mean(0)) for j in range(n)] for i in range(t)]
    u = [-sum(row) / n for row in s_vid]
    z = [math.exp((ui - max(u)) / temperature) for ui in u]
    sigma = [zi / sum(z) for zi in z]
    counts = [max(1, round(min(1.0, ratio * (1 + s - sum(sigma) / t)) * n)) for s in sigma]
    kept = [set(top_positions([-(a + b) for a, b in zip(s_vid[i], s_frm[i])], counts[i])) for i in range(t)]
    return counts, kept, torch.tensor(s_vid, dtype=torch.float64), torch.tensor(s_frm, dtype=torch.float64)


@pytest.mark.parametrize("ratio", [0.25, 0.15, 0.05])
def test_vidcom2_per_frame_counts_channels_and_selection_match_reference(ratio):
    t, h, w, d = 8, 5, 5, 15  # odd D: int(D / 2) = 7 channels, not round(7.5) = 8
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(t, h * w, d, generator=gen) * torch.linspace(0.5, 2, d)
    x[2] += 2.0 * torch.randn(h * w, d, generator=gen)  # one unusual frame: uneven counts
    counts, kept, s_vid, s_frm = vidcom2_reference(x, ratio)
    got_vid, got_frm = vidcom2_scores(x)
    assert torch.allclose(got_vid.double(), s_vid, atol=1e-5) and torch.allclose(got_frm.double(), s_frm, atol=1e-5)
    assert vidcom2_frame_counts(got_vid, ratio).tolist() == counts
    comp = create_compressor("vidcom2", ratio=ratio)
    (seg,) = comp.compress(grid_of(x, h, w))
    assert per_frame_counts([seg], t) == counts
    assert comp.total_budget(grid_of(x, h, w)) == sum(counts)
    for frame in range(t):
        got = seg.positions[seg.positions[:, 0] == frame][:, 1:] @ torch.tensor([w, 1])
        assert set(got.tolist()) == kept[frame]
        assert torch.equal(seg.tokens[seg.positions[:, 0] == frame], x[frame, sorted(kept[frame])])


def test_vidcom2_total_drifts_from_round_r_v_n():
    x = torch.randn(8, 25, 15, generator=torch.Generator().manual_seed(8)) * torch.linspace(0.5, 2, 15)
    x[2] += 2.0 * torch.randn(25, 15, generator=torch.Generator().manual_seed(9))
    counts, *_ = vidcom2_reference(x, 0.15)
    assert sum(counts) != round(0.15 * 8 * 25)  # the official rule does not fix the total
    (seg,) = create_compressor("vidcom2", ratio=0.15).compress(grid_of(x, 5, 5))
    assert seg.budget == sum(counts)


# ---- InfoMerge ----


def caba_budgets_reference(x, boundaries, ratio, d=0.4, alpha=0.9, beta=0.1):
    """B_k = max(1, round(d r L N w_k / sum w)), capped at the segment's non-salient tokens."""
    t, n, dim = x.shape
    tau = constants_for_ratio(ratio)[0]
    salient = math.floor((1 - d) * ratio * n)
    spans = list(zip(boundaries, boundaries[1:]))
    means = [x[a:b].reshape(-1, dim).double().mean(0) for a, b in spans]
    lengths = [b - a for a, b in spans]
    glob = sum(v * m for v, m in zip(lengths, means)) / sum(lengths)
    u = [1 - float(torch.dot(m, glob) / (m.norm() * glob.norm())) for m in means]
    e = []
    for a, b in spans:
        s = torch.linalg.svdvals(x[a:b].reshape(-1, dim).double())
        pi = [float(v) ** 2 / float((s**2).sum()) for v in s]
        e.append(-sum(p * math.log(p) for p in pi if p > 1e-12) / math.log(min((b - a) * n, dim)))

    def z(xs):
        mu = sum(xs) / len(xs)
        sd = math.sqrt(sum((v - mu) ** 2 for v in xs) / len(xs))
        return [0.0] * len(xs) if sd <= 1e-12 else [(v - mu) / sd for v in xs]

    zu, ze = z(u), z(e)
    w = [v / (1 + math.exp(-tau * (alpha * a + beta * b))) for v, a, b in zip(lengths, zu, ze)]
    total = d * ratio * t * n
    return salient, [min(v * (n - salient), max(1, round(total * wk / sum(w)))) for v, wk in zip(lengths, w)]


@pytest.mark.parametrize("ratio", [0.15, 0.10, 0.05])
def test_infomerge_budgets_follow_the_paper(ratio):
    t, h, w = 32, 14, 14
    gen = torch.Generator().manual_seed(3)
    scenes = torch.randn(4, 1, h * w, 16, generator=gen)
    lengths = [3, 9, 8, 12]
    x = torch.cat([s + 0.3 * torch.randn(v, h * w, 16, generator=gen) for s, v in zip(scenes, lengths)])
    boundaries = [0, 3, 12, 20, 32]
    salient, budgets = caba_budgets_reference(x, boundaries, ratio)
    want = []
    for (a, b), bk in zip(zip(boundaries, boundaries[1:]), budgets):
        quotas = floored_quotas(b - a, bk, 4, h * w - salient)
        want += [salient + quotas.get(f, 0) for f in range(b - a)]
    comp = create_compressor("infomerge", ratio=ratio)
    segments = comp.compress(grid_of(x, h, w), boundaries=boundaries)
    assert per_frame_counts(segments, t) == want
    assert comp.total_budget(grid_of(x, h, w), boundaries) == sum(want)


def tfd_static_reference(h, rho):
    """S_k: the floor(rho N) positions with the smallest TFD, with loops."""
    v, n, _ = h.shape
    unit = h.double() / h.double().norm(dim=-1, keepdim=True)
    tfd = []
    for p in range(n):
        f = [[float(torch.dot(unit[a, p], unit[b, p])) for b in range(v)] for a in range(v)]
        tfd.append(sum(abs(f[a + 1][b] - f[a][b]) for a in range(v - 1) for b in range(v)) / ((v - 1) * v))
    return set(top_positions([-x for x in tfd], math.floor(rho * n)))


def infomerge_segment_reference(x, sal, ratio, rho, lam=12.0, d=0.4, interval=4):
    """One segment, every step from the equations: TFD, ATS with penalty, static carry, DTM with mask."""
    v, n, _ = x.shape
    salient_n, (budget,) = caba_budgets_reference(x, [0, v], ratio)
    static = tfd_static_reference(x, rho)
    h = x.clone().double()
    salient, taken = [], set()
    for t in range(v):
        a = sal[t].tolist()
        mean = sum(a) / n
        std = math.sqrt(sum((q - mean) ** 2 for q in a) / (n - 1))
        a = [q - lam * std if (p in static and p in taken) else q for p, q in enumerate(a)]
        chosen = set(top_positions(a, salient_n))
        for p in chosen & static - taken:
            for r in range(t, v):  # H[r, p] <- the whole segment's mean at p, r >= l
                h[r, p] = x[:, p].double().mean(0)
        taken |= chosen & static
        salient.append(chosen)
    kept = {(t, p): h[t, p] for t in range(v) for p in salient[t]}
    kept.update(dtm_reference(h, salient, floored_quotas(v, budget, interval, n - salient_n), static=static))
    return kept, static, salient


def test_infomerge_static_carry_reaches_dtm_and_matches_reference():
    v, hh, ww, d = 8, 4, 4, 8
    n = hh * ww
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, n, d, generator=gen) + 0.6 * torch.randn(v, n, d, generator=gen)
    x[:, :6] = x[0, :6] + 0.02 * torch.randn(v, 6, d, generator=gen)  # six nearly static positions
    sal = torch.rand(v, n, generator=gen)
    sal[0, :4] += 5.0  # four static positions are the most salient of frame 0, then penalised
    ratio, rho = 0.4, 0.25
    want, static, salient = infomerge_segment_reference(x, sal, ratio, rho)
    assert static <= set(range(6)) and len(static & set(range(4))) >= 1
    carried = [p for p in static & salient[0] if p not in salient[v - 1]]
    assert carried, "the test needs a carried static token that DTM sees in the last (anchor) frame"
    comp = create_compressor("infomerge", ratio=ratio, rho=rho)
    (seg,) = comp.compress(grid_of(x, hh, ww), saliency=sal.reshape(v, hh, ww), boundaries=[0, v])
    assert_same_kept(compressed_tokens([seg], n, ww), want)


def test_carry_static_equals_loop():
    gen = torch.Generator().manual_seed(4)
    seg = torch.randn(5, 6, 3, generator=gen)
    chosen = torch.zeros(5, 6, dtype=torch.bool)
    chosen[1, 2] = chosen[3, 2] = chosen[2, 4] = chosen[0, 5] = True
    static = torch.tensor([False, False, True, False, True, False])
    got = carry_static(seg, chosen, static)
    want = seg.clone()
    for p, first in ((2, 1), (4, 2)):  # position 5 is chosen but not static: unchanged
        for r in range(first, 5):
            want[r, p] = seg[:, p].mean(0)
    assert torch.allclose(got, want, atol=1e-6)
