"""AOT: Sinkhorn, Phase I and Phase II against loop-written references; budgets, provenance, scores."""

import math

import pytest
import torch

from streamvid import create_compressor
from streamvid.compress.aot import (
    anchor_scores,
    inter_frame_merge,
    intra_frame_merge,
    plan_clips,
    select_anchors,
    sinkhorn,
    window_ids,
)
from streamvid.errors import BudgetError, ConfigError
from streamvid.types import TokenGrid

# --------------------------------------------------------------------------- slow references


def sinkhorn_reference(kernel, a, b, max_iter=100, tol=1e-2):
    """Sinkhorn-Knopp as published, one problem, Python floats. kernel: M x N lists -> plan M x N."""
    m, n = len(kernel), len(kernel[0])
    r, c = [1.0] * m, [1.0] * n
    for _ in range(max_iter):
        r_old = r
        r = [a[i] / sum(kernel[i][j] * c[j] for j in range(n)) for i in range(m)]
        c = [b[j] / sum(kernel[i][j] * r[i] for i in range(m)) for j in range(n)]
        if sum(abs(r[i] - r_old[i]) for i in range(m)) / m < tol:
            break
    return [[r[i] * kernel[i][j] * c[j] for j in range(n)] for i in range(m)]


def _dot(u, v):
    return sum(float(p) * float(q) for p, q in zip(u, v))


def _cos(u, v):
    return _dot(u, v) / (math.sqrt(_dot(u, u)) * math.sqrt(_dot(v, v)))


def phase_one_reference(x, anchors, pos, lam=0.5, eps=0.1, nn_w=0.1):
    """One frame. x: [N, D]; anchors: sorted anchor indices; pos: [N, 2] -> (merged [m, D], owner [N])."""
    n = x.shape[0]
    src = [i for i in range(n) if i not in anchors]
    m, k = len(anchors), len(src)
    cos = [[_cos(x[i], x[j]) for j in anchors] for i in src]
    cost = [
        [1 - cos[s][t] + lam * math.dist(pos[i].tolist(), pos[j].tolist()) for t, j in enumerate(anchors)]
        for s, i in enumerate(src)
    ]
    plan = sinkhorn_reference([[math.exp(-c / eps) for c in row] for row in cost], [1 / k] * k, [1 / m] * m)
    nearest = [max(range(m), key=lambda t: (cos[s][t], -t)) for s in range(k)]
    merged, load, count = [], [], []
    for t, j in enumerate(anchors):
        load.append(sum(plan[s][t] for s in range(k)))
        count.append(sum(1 for s in range(k) if nearest[s] == t))
        x_ot = (x[j].double() + sum(plan[s][t] * x[i].double() for s, i in enumerate(src))) / (1 + load[t])
        members = [x[i].double() for s, i in enumerate(src) if nearest[s] == t]
        x_nn = (x[j].double() + sum(members, torch.zeros(x.shape[1], dtype=torch.float64))) / (1 + count[t])
        merged.append(nn_w * x_nn + (1 - nn_w) * x_ot)
    owner = [0] * n
    for t, j in enumerate(anchors):
        owner[j] = t
    for s, i in enumerate(src):
        w = [
            (1 - nn_w) * plan[s][t] / (1 + load[t]) + (nn_w / (1 + count[t]) if nearest[s] == t else 0.0)
            for t in range(m)
        ]
        owner[i] = max(range(m), key=lambda t: (w[t], -t))
    return torch.stack(merged), torch.tensor(owner)


def phase_two_reference(frames, keep_counts, eps=0.1, sigma=1.5):
    """One clip. frames: [L, m, D]; keep_counts: list of L - 1 ints -> (Y [m, D], kept sets, owners)."""
    length, m, _ = frames.shape
    y = [frames[0, j].double() for j in range(m)]
    kept, steps = [], []
    for dt in range(1, length):
        x = [frames[dt, i].double() for i in range(m)]
        c_sim = [[1 - _cos(x[i], y[j]) for j in range(m)] for i in range(m)]
        low = min(min(row) for row in c_sim)
        scale = 1 - math.exp(-(dt * dt) / (2 * sigma * sigma))
        kernel = [[math.exp(-(c - low) * scale / eps) for c in row] for row in c_sim]
        plan = sinkhorn_reference(kernel, [1 / m] * m, [1 / m] * m)
        p = [[v / sum(row) for v in row] for row in plan]
        order = sorted(range(m), key=lambda i: (max(p[i]), i))
        stay = set(order[: keep_counts[dt - 1]])
        p = [[0.0] * m if i in stay else row for i, row in enumerate(p)]
        load = [sum(p[i][j] for i in range(m)) for j in range(m)]
        y = [(y[j] + sum(p[i][j] * x[i] for i in range(m))) / (1 + load[j]) for j in range(m)]
        kept.append(stay)
        steps.append((p, load))
    owners = []
    for s, (p, _) in enumerate(steps):
        decay = [math.prod(1 + steps[q][1][j] for q in range(s, len(steps))) for j in range(m)]
        owners.append([-1 if i in kept[s] else max(range(m), key=lambda j: (p[i][j] / decay[j], -j)) for i in range(m)])
    return torch.stack(y), kept, owners


# --------------------------------------------------------------------------- helpers


def make_grid(t=8, h=6, w=6, d=16, seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    return TokenGrid(torch.randn(t, h, w, d, generator=gen), torch.arange(t, dtype=torch.float64) * 0.5, **kw)


def check_provenance(segments, grid, total):
    assert sum(s.budget for s in segments) == total
    for s in segments:
        assert torch.isfinite(s.tokens.float()).all()
        assert s.owner is not None and s.owner.shape == (s.original_tokens,)
        assert torch.equal(torch.bincount(s.owner, minlength=s.budget), s.sizes)
        assert int(s.sizes.sum()) == s.original_tokens and bool((s.sizes >= 1).all())
        h, w = s.grid_size
        rep = (s.positions[:, 0] * h + s.positions[:, 1]) * w + s.positions[:, 2]
        assert torch.equal(s.owner[rep], torch.arange(s.budget))  # a kept token owns its representative
        assert torch.equal(s.times, grid.timestamps[s.frame_offset + s.positions[:, 0]])
        assert bool((s.times[1:] >= s.times[:-1]).all())


# --------------------------------------------------------------------------- Sinkhorn


def test_sinkhorn_matches_loop_reference_per_problem():
    gen = torch.Generator().manual_seed(1)
    cost = torch.rand(3, 7, 4, generator=gen) * 2
    kernel = torch.exp(-cost / 0.1)
    a, b = torch.full((3, 7), 1 / 7), torch.full((3, 4), 1 / 4)
    plan = sinkhorn(kernel, a, b)
    for i in range(3):
        ref = torch.tensor(
            sinkhorn_reference(kernel[i].double().tolist(), [1 / 7] * 7, [1 / 4] * 4), dtype=torch.float64
        )
        assert torch.allclose(plan[i].double(), ref, atol=1e-5, rtol=0)
        # each problem stops on its own test: alone it gives the same plan
        assert torch.allclose(sinkhorn(kernel[i : i + 1], a[:1], b[:1])[0], plan[i], atol=1e-7)
    assert torch.allclose(plan.sum(dim=1), b, atol=1e-6)  # column marginals after the last column step
    assert (plan.sum(dim=2) - a).abs().max() < 0.05  # rows close at the default stopping rule


def test_sinkhorn_meets_both_marginals_when_run_to_tight_tolerance():
    gen = torch.Generator().manual_seed(2)
    kernel = torch.exp(-torch.rand(2, 9, 5, generator=gen) / 0.1)
    a, b = torch.full((2, 9), 1 / 9), torch.full((2, 5), 1 / 5)
    plan = sinkhorn(kernel, a, b, max_iter=5000, tol=1e-9)
    assert torch.allclose(plan.sum(dim=2), a, atol=1e-5)
    assert torch.allclose(plan.sum(dim=1), b, atol=1e-5)
    ref = sinkhorn_reference(kernel[0].double().tolist(), [1 / 9] * 9, [1 / 5] * 5, max_iter=5000, tol=1e-9)
    assert torch.allclose(plan[0].double(), torch.tensor(ref, dtype=torch.float64), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- Phase I


def test_window_ids_partition_into_three_by_three():
    ids = window_ids(14, 14, 3)
    assert ids.shape == (196,) and sorted(set(ids.tolist())) == list(range(9))
    assert torch.bincount(ids).tolist() == [25, 25, 20, 25, 25, 20, 20, 20, 16]
    assert window_ids(2, 5, 3).unique().numel() == 6  # fewer windows on a short side


def test_select_anchors_local_per_window_then_global():
    h = w = 6
    window = window_ids(h, w, 3)  # nine 2 x 2 windows
    gen = torch.Generator().manual_seed(3)
    local, glob = torch.rand(2, 36, generator=gen), torch.rand(2, 36, generator=gen)
    mask = select_anchors(local, glob, 13, window, global_share=0.5)
    assert mask.sum(dim=1).tolist() == [13, 13]
    n_local = 6  # floor(13 * 0.5), one per window in windows 0..5
    for b in range(2):
        chosen = set(torch.nonzero(mask[b]).flatten().tolist())
        local_pick = set()
        for wid in range(n_local):
            inside = torch.nonzero(window == wid).flatten()
            local_pick.add(int(inside[local[b, inside].argmax()]))
        assert local_pick <= chosen
        rest = [i for i in range(36) if i not in local_pick]
        top = sorted(rest, key=lambda i: -float(glob[b, i]))[: 13 - n_local]
        assert chosen == local_pick | set(top)


@pytest.mark.parametrize("nn_weight", [0.1, 0.0])
def test_intra_frame_merge_matches_loop_reference(nn_weight):
    gen = torch.Generator().manual_seed(4)
    h, w, d = 3, 4, 5
    x = torch.randn(2, h * w, d, generator=gen)
    mask = torch.zeros(2, h * w, dtype=torch.bool)
    mask[0, [0, 5, 7, 11]] = True
    mask[1, [1, 2, 8, 9]] = True
    pos = torch.stack(torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")[::-1], -1)
    pos = pos.reshape(h * w, 2)
    merged, idx, owner = intra_frame_merge(x, mask, pos, nn_weight=nn_weight)
    for b in range(2):
        anchors = torch.nonzero(mask[b]).flatten().tolist()
        assert idx[b].tolist() == anchors
        ref, ref_owner = phase_one_reference(x[b], anchors, pos, nn_w=nn_weight)
        assert torch.allclose(merged[b].double(), ref, atol=1e-5)
        assert torch.equal(owner[b], ref_owner)


# --------------------------------------------------------------------------- Phase II


def test_inter_frame_merge_matches_loop_reference():
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(5, 6, generator=gen)
    frames = torch.stack([base + 0.6 * torch.randn(5, 6, generator=gen) for _ in range(4)])  # (L=4, m=5, D=6)
    other = torch.randn(4, 5, 6, generator=gen)
    keep_counts = [[2, 1, 3], [0, 5, 1]]
    y, keep, owner = inter_frame_merge(torch.stack([frames, other]), torch.tensor(keep_counts))
    for c, clip in enumerate((frames, other)):
        ref_y, ref_kept, ref_owner = phase_two_reference(clip, keep_counts[c])
        length = clip.shape[0]
        assert torch.allclose(y[c].double(), ref_y, atol=1e-5)
        for s in range(length - 1):
            assert set(torch.nonzero(keep[c, s]).flatten().tolist()) == ref_kept[s]
            assert owner[c, s].tolist() == ref_owner[s]
    assert keep[0].sum(dim=1).tolist() == keep_counts[0]


def test_inter_frame_merge_keeps_everything_when_asked():
    frames = torch.randn(1, 3, 4, 8)
    y, keep, owner = inter_frame_merge(frames, torch.tensor([[4, 4]]))
    assert torch.equal(y[0], frames[0, 0]) and bool(keep.all()) and bool((owner == -1).all())


# --------------------------------------------------------------------------- budgets and provenance


@pytest.mark.parametrize("ratio", [0.25, 0.15, 0.10, 0.05])
def test_exact_budget_and_provenance(ratio):
    grid = make_grid(t=12, h=7, w=7, d=24)
    compressor = create_compressor("aot", ratio=ratio)
    segments = compressor.compress(grid)
    total = round(ratio * 12 * 49)
    assert compressor.total_budget(grid) == total
    check_provenance(segments, grid, total)


@pytest.mark.parametrize("frames,n,budget", [(32, 196, 941), (32, 196, 314), (16, 4, 3), (7, 9, 63), (5, 9, 5)])
def test_plan_clips_is_exact(frames, n, budget):
    plans = plan_clips(frames, n, budget, clip_len=4, keep_ratio=0.3)
    assert sum(p.tokens for p in plans) == budget
    assert plans[0].start == 0 and plans[-1].stop == frames
    assert all(x.stop == y.start for x, y in zip(plans, plans[1:]))
    for p in plans:
        assert 1 <= p.anchors <= n and all(0 <= k <= p.anchors for k in p.keep)
        assert len(p.keep) == p.stop - p.start - 1


def test_plan_clips_default_split():
    plans = plan_clips(32, 196, 941, clip_len=4, keep_ratio=0.3)
    assert len(plans) == 8 and {p.anchors for p in plans} <= {61, 62, 63}
    # about keep_ratio of a later frame's anchors stay separate
    assert all(abs(k - 0.3 * p.anchors) <= 1 for p in plans for k in p.keep)
    assert len(plan_clips(16, 4, 3, clip_len=4, keep_ratio=0.3)) == 3  # longer clips for a tiny budget
    with pytest.raises(BudgetError, match="budget"):
        plan_clips(4, 4, 0, clip_len=4, keep_ratio=0.3)


def test_merged_values_follow_provenance_on_clustered_frame():
    # one frame, four quadrants of identical tokens; scores put one anchor in each quadrant
    vecs = torch.eye(4, 8) * 3
    quad = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]])
    tokens = vecs[quad][None]  # (1, 4, 4, 8)
    attn = torch.zeros(1, 4, 4)
    attn[0, 0, 0] = attn[0, 0, 2] = attn[0, 2, 0] = attn[0, 2, 3] = 1.0
    grid = TokenGrid(tokens, torch.zeros(1, dtype=torch.float64), scores={"attn_received": attn})
    (seg,) = create_compressor("aot", ratio=0.25).compress(grid)
    assert seg.budget == 4 and seg.sizes.tolist() == [4, 4, 4, 4]
    assert torch.equal(seg.owner, torch.tensor([0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]))
    assert torch.allclose(seg.tokens, vecs, atol=1e-3)


def test_ratio_one_is_identity():
    grid = make_grid(t=5, h=3, w=3, d=8)
    (seg,) = create_compressor("aot", ratio=1.0).compress(grid)
    assert torch.equal(seg.tokens, grid.tokens.reshape(-1, 8))
    assert torch.equal(seg.owner, torch.arange(45))


# --------------------------------------------------------------------------- scores


def test_attention_scores_drive_the_selection_and_fallbacks_are_recorded():
    grid = make_grid(t=4, h=6, w=6, d=16, seed=6)
    gen = torch.Generator().manual_seed(7)
    attn = torch.rand(4, 6, 6, generator=gen)
    late = torch.rand(4, 6, 6, generator=gen)
    compressor = create_compressor("aot", ratio=0.25)
    norm_seg = compressor.compress(grid)[0]
    attn_grid = TokenGrid(grid.tokens, grid.timestamps, scores={"attn_received": attn})
    attn_seg = compressor.compress(attn_grid)[0]
    late_grid = TokenGrid(grid.tokens, grid.timestamps, scores={"attn_received": attn, "attn_received_late": late})
    late_seg = compressor.compress(late_grid)[0]
    sal_grid = TokenGrid(grid.tokens, grid.timestamps, saliency=attn, saliency_source="siglip-head")
    sal_seg = compressor.compress(sal_grid)[0]
    assert norm_seg.method == "aot[feature-norm]"
    assert attn_seg.method == "aot[attn_received]"
    assert late_seg.method == "aot[attn_received+attn_received_late]"
    assert sal_seg.method == "aot[saliency:siglip-head]"

    def first_frame(seg):
        return sorted(
            (seg.positions[seg.positions[:, 0] == 0][:, 1] * 6 + seg.positions[seg.positions[:, 0] == 0][:, 2]).tolist()
        )

    # the first frame's tokens sit exactly on the Phase I anchors chosen from the score
    m = int((attn_seg.positions[:, 0] == 0).sum())
    want = select_anchors(attn[:1].reshape(1, 36), attn[:1].reshape(1, 36), m, window_ids(6, 6, 3))
    assert first_frame(attn_seg) == torch.nonzero(want[0]).flatten().tolist()
    norm = grid.tokens[:1].reshape(1, 36, 16).norm(dim=-1)
    want_norm = select_anchors(norm, norm, m, window_ids(6, 6, 3))
    assert first_frame(norm_seg) == torch.nonzero(want_norm[0]).flatten().tolist()
    assert first_frame(norm_seg) != first_frame(attn_seg)
    assert first_frame(late_seg) != first_frame(attn_seg)  # the late map picks the global anchors
    assert first_frame(sal_seg) == first_frame(attn_seg)
    for seg, g in ((norm_seg, grid), (attn_seg, attn_grid), (late_seg, late_grid)):
        check_provenance([seg], g, round(0.25 * 4 * 36))


def test_score_mode_can_be_forced_and_fails_clearly():
    grid = make_grid(t=2, h=4, w=4, d=8)
    assert anchor_scores(grid, "norm")[2] == "feature-norm"
    with pytest.raises(ConfigError, match="attn_received"):
        create_compressor("aot", score="attention").compress(grid)
    with pytest.raises(ConfigError, match="saliency"):
        create_compressor("aot", score="saliency").compress(grid)
    with pytest.raises(ConfigError):
        create_compressor("aot", keep_ratio=1.5)


# --------------------------------------------------------------------------- edge cases


def test_boundaries_are_respected():
    grid = make_grid(t=10, h=5, w=5, d=12)
    compressor = create_compressor("aot", ratio=0.15)
    segments = compressor.compress(grid, boundaries=[0, 3, 10])
    assert [s.frame_offset for s in segments] == [0, 3]
    assert [s.frame_count for s in segments] == [3, 7]
    check_provenance(segments, grid, compressor.total_budget(grid))
    # clips restart at each segment: the merged anchors sit on each clip's first frame
    second = segments[1]
    for clip_start in (0, 4):
        assert bool((second.positions[:, 0] == clip_start).any())


@pytest.mark.parametrize("value", [0.0, 1.5])
@pytest.mark.parametrize("ratio", [0.25, 0.05])
def test_constant_input_gives_no_nan(value, ratio):
    grid = TokenGrid(torch.full((8, 6, 6, 16), value), torch.arange(8, dtype=torch.float64))
    segments = create_compressor("aot", ratio=ratio).compress(grid)
    check_provenance(segments, grid, round(ratio * 8 * 36))
    assert torch.allclose(segments[0].tokens, torch.full_like(segments[0].tokens, value))


def test_one_frame_grid():
    grid = make_grid(t=1, h=7, w=7, d=16)
    (seg,) = create_compressor("aot", ratio=0.15).compress(grid)
    assert seg.budget == round(0.15 * 49) and bool((seg.positions[:, 0] == 0).all())
    check_provenance([seg], grid, seg.budget)


def test_bf16_input_and_out_dtype():
    grid = make_grid(t=4, h=4, w=4, d=8)
    bf = TokenGrid(grid.tokens.bfloat16(), grid.timestamps)
    assert create_compressor("aot", ratio=0.2).compress(bf)[0].tokens.dtype == torch.bfloat16
    seg = create_compressor("aot", ratio=0.2, out_dtype=torch.float16).compress(grid)[0]
    assert seg.tokens.dtype == torch.float16


def test_compressor_composes_phase_one_and_phase_two():
    grid = make_grid(t=4, h=4, w=4, d=8, seed=9)
    attn = torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(10))
    grid = TokenGrid(grid.tokens, grid.timestamps, scores={"attn_received": attn})
    (seg,) = create_compressor("aot", ratio=0.3).compress(grid)
    (plan,) = plan_clips(4, 16, round(0.3 * 64), clip_len=4, keep_ratio=0.3)
    x = grid.tokens.reshape(4, 16, 8)
    score = attn.reshape(4, 16)
    mask = select_anchors(score, score, plan.anchors, window_ids(4, 4, 3))
    pos = torch.stack(torch.meshgrid(torch.linspace(0, 1, 4), torch.linspace(0, 1, 4), indexing="ij")[::-1], -1)
    merged, idx, _ = intra_frame_merge(x, mask, pos.reshape(16, 2))
    y, keep, _ = inter_frame_merge(merged[None], torch.tensor([plan.keep]))
    want = {(0, int(p)): y[0, j] for j, p in enumerate(idx[0])}
    for t in range(1, 4):
        for j in torch.nonzero(keep[0, t - 1]).flatten().tolist():
            want[(t, int(idx[t, j]))] = merged[t, j]
    got = {(int(t), int(r) * 4 + int(c)): tok for (t, r, c), tok in zip(seg.positions, seg.tokens)}
    assert set(got) == set(want)
    for key, tok in want.items():
        assert torch.allclose(got[key], tok, atol=1e-6)
