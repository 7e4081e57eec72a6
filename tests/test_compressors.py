"""Every registered compressor through the same checks, plus per-method references."""

import math

import pytest
import torch
from conftest import moving_object_clip, scene_clip

from streamvid import create_compressor, list_compressors
from streamvid.compress.baselines import pool_frame
from streamvid.compress.dyseg import dyseg_boundaries
from streamvid.compress.infomerge import (
    anchor_quotas,
    constants_for_ratio,
    density_peak_scores,
    fastvid_frame_budget,
    merge_context,
    select_salient,
)
from streamvid.types import TokenGrid

RATIOS = [1.0, 0.25, 0.15, 0.10, 0.05]
# methods whose published budget rule counts per frame or per segment, so their total is
# their own (see tests/test_reference_equations.py), not round(r T N); exact_total restores it
OWN_RULE = {"fastvid", "infomerge", "vidcom2"}


def check_segments(segments, grid, expected_total):
    """expected_total: the method's own budget rule (``compressor.total_budget``)."""
    t, h, w, _ = grid.tokens.shape
    assert sum(s.budget for s in segments) == expected_total
    assert sum(s.frame_count for s in segments) == t
    offset = 0
    for s in segments:
        assert s.frame_offset == offset
        offset += s.frame_count
        assert torch.isfinite(s.tokens.float()).all()
        assert int(s.sizes.sum()) == s.original_tokens  # provenance: every original counted once
        assert bool((s.sizes >= 1).all())
        pos = s.positions
        assert bool((pos >= 0).all())
        assert bool((pos[:, 0] < s.frame_count).all()) and bool((pos[:, 1] < h).all())
        assert bool((pos[:, 2] < w).all())
        assert bool((s.times[1:] >= s.times[:-1]).all())
        # each token's time is the timestamp of its representative's frame
        assert torch.equal(s.times, grid.timestamps[s.frame_offset + pos[:, 0]])
        assert s.start_time == float(grid.timestamps[s.frame_offset])
        assert s.end_time == float(grid.timestamps[s.frame_offset + s.frame_count - 1])
        assert s.mean_token.shape == (grid.dim,)
        # exact provenance: every original token belongs to one kept token, sizes agree
        assert s.owner is not None and s.owner.shape == (s.original_tokens,)
        assert torch.equal(torch.bincount(s.owner, minlength=s.budget), s.sizes)
        # a kept token owns its own representative position
        h_, w_ = s.grid_size
        rep = (s.positions[:, 0] * h_ + s.positions[:, 1]) * w_ + s.positions[:, 2]
        if s.method not in ("uniform",):  # pooled cells have no single original token
            assert torch.equal(s.owner[rep], torch.arange(s.budget))


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("name", list_compressors())
def test_every_compressor_budget_and_provenance(name, ratio):
    grid = TokenGrid(
        torch.randn(16, 10, 10, 32, generator=torch.Generator().manual_seed(3)),
        torch.linspace(0.0, 7.5, 16, dtype=torch.float64),
    )
    compressor = create_compressor(name, ratio=ratio)
    segments = compressor.compress(grid)
    check_segments(segments, grid, compressor.total_budget(grid))
    if name not in OWN_RULE | {"keep_all"}:
        assert compressor.total_budget(grid) == round(ratio * 16 * 100)


@pytest.mark.parametrize("ratio", [1.0, 0.15, 0.05])
@pytest.mark.parametrize("name", sorted(OWN_RULE))
def test_exact_total_option_keeps_round_r_t_n(name, ratio, clip):
    compressor = create_compressor(name, ratio=ratio, exact_total=True)
    assert create_compressor(name).config.exact_total is False  # off by default
    for boundaries in (None, [0, 6, 16, 20, 32]):
        segments = compressor.compress(clip, boundaries=boundaries)
        check_segments(segments, clip, round(ratio * 32 * 100))
        assert compressor.total_budget(clip, boundaries) == round(ratio * 32 * 100)


@pytest.mark.parametrize("name", list_compressors())
def test_every_compressor_on_scenes_with_given_boundaries(name, clip):
    compressor = create_compressor(name, ratio=0.15)
    boundaries = [0, 6, 16, 20, 32]
    segments = compressor.compress(clip, boundaries=boundaries)
    assert [s.frame_offset for s in segments] == boundaries[:-1]
    check_segments(segments, clip, compressor.total_budget(clip, boundaries))


@pytest.mark.parametrize("name", list_compressors())
def test_out_dtype_and_saliency_override(name, clip):
    compressor = create_compressor(name, ratio=0.1, out_dtype=torch.float16)
    saliency = torch.rand(clip.tokens.shape[:3], generator=torch.Generator().manual_seed(0))
    segments = compressor.compress(clip, saliency=saliency)
    assert all(s.tokens.dtype == torch.float16 for s in segments)
    check_segments(segments, clip, compressor.total_budget(clip))


def test_compressors_are_deterministic(clip):
    for name in list_compressors():
        a = create_compressor(name, ratio=0.1).compress(clip)
        b = create_compressor(name, ratio=0.1).compress(clip)
        assert all(torch.equal(x.tokens, y.tokens) for x, y in zip(a, b)), name


def test_bf16_input_is_computed_in_fp32_and_stored_bf16(clip):
    grid = TokenGrid(clip.tokens.bfloat16(), clip.timestamps)
    segments = create_compressor("infomerge", ratio=0.15).compress(grid)
    assert all(s.tokens.dtype == torch.bfloat16 for s in segments)


def test_dyseg_cuts_at_scene_changes(clip):
    x = clip.tokens.flatten(1, 2).mean(dim=1)  # (T, D)
    assert dyseg_boundaries(x, c=4, tau_seg=0.9) == [0, 6, 16, 20, 32]
    # c - 1 smallest similarities are cut even when above tau_seg
    assert len(dyseg_boundaries(x, c=8, tau_seg=-1.0)) == 8 + 1
    assert dyseg_boundaries(x[:1]) == [0, 1]


def test_infomerge_segments_follow_scenes_and_caba_favours_short_unique_scene():
    # scene 2 is short and unlike the others (1 and 3 repeat one another)
    gen = torch.Generator().manual_seed(5)
    common = torch.randn(10, 10, 48, generator=gen)
    unique = torch.randn(10, 10, 48, generator=gen)
    scenes = [common, unique, common]
    lengths = [14, 4, 14]
    tokens = torch.cat([s + 0.05 * torch.randn(n, 10, 10, 48, generator=gen) for s, n in zip(scenes, lengths)])
    grid = TokenGrid(tokens, torch.arange(32, dtype=torch.float64))
    segments = create_compressor("infomerge", ratio=0.1, num_cuts=3).compress(grid)
    assert [s.frame_count for s in segments] == lengths
    per_frame = [s.budget / s.frame_count for s in segments]
    assert per_frame[1] > per_frame[0] and per_frame[1] > per_frame[2]
    fast = create_compressor("fastvid", ratio=0.1, num_cuts=3).compress(grid)
    assert fast[1].budget < segments[1].budget  # FastVID splits by length only


def test_constants_by_ratio():
    assert constants_for_ratio(0.15) == (1.2, 0.09)
    assert constants_for_ratio(0.10) == (1.2, 0.10)
    assert constants_for_ratio(0.05) == (2.0, 0.05)
    assert constants_for_ratio(0.25) == (1.2, 0.09)
    c = create_compressor("infomerge", ratio=0.05)
    assert (c.tau, c.rho) == (2.0, 0.05)
    assert create_compressor("infomerge", ratio=0.05, tau=0.7).tau == 0.7
    # InfoMerge (paper): T_s = floor((1 - d) r N); FastVID (official code): R - int(R d), R = int(r N)
    assert c.salient_per_frame(196) == math.floor(0.6 * 0.05 * 196) == 5
    assert create_compressor("infomerge", ratio=0.15).salient_per_frame(196) == 17
    assert fastvid_frame_budget(196, 0.15, 0.4) == (18, 11)
    assert fastvid_frame_budget(196, 0.05, 0.4) == (6, 3)
    assert create_compressor("fastvid", ratio=0.10).salient_per_frame(196) == 12


def test_static_penalty_moves_selection_off_static_positions():
    saliency = torch.zeros(3, 6)
    saliency[:, 0] = 10.0  # a static position that always looks most salient
    saliency[:, 1] = torch.tensor([1.0, 2.0, 3.0])
    saliency[:, 2:] = torch.rand(3, 4) * 0.1
    static = torch.zeros(6, dtype=torch.bool)
    static[0] = True
    with_penalty = select_salient(saliency, 1, static, lam=12.0)
    assert with_penalty[:, 0].tolist() == [True, False, False]
    assert with_penalty[1:, 1].all()
    without = select_salient(saliency, 1, static, lam=0.0)
    assert without[:, 0].all()


def test_static_salient_token_carries_the_mean_to_segment_end():
    tokens, visited = moving_object_clip(frames=8, noise=0.2)
    t, h, w, d = tokens.shape
    tokens[:, 0, 0] = tokens[0, 0, 0] + 1e-3 * torch.randn(t, d)  # nearly static: surely in S_k
    grid = TokenGrid(tokens, torch.arange(t, dtype=torch.float64))
    # make one background position (static) the most salient everywhere
    sal = torch.zeros(t, h, w)
    sal[:, 0, 0] = 5.0
    (seg,) = create_compressor("infomerge", ratio=0.2, rho=0.5).compress(grid, saliency=sal, boundaries=[0, t])
    hit = (seg.positions == torch.tensor([0, 0, 0])).all(dim=1)
    assert int(hit.sum()) == 1
    assert torch.allclose(seg.tokens[hit][0], tokens[:, 0, 0].mean(dim=0), atol=1e-6)
    assert not torch.allclose(seg.tokens[hit][0], tokens[0, 0, 0], atol=1e-5)


def density_reference(x, k):
    m, d = x.shape
    dist = [[float((x[i] - x[j]).norm()) / math.sqrt(d) for j in range(m)] for i in range(m)]
    rho = [math.exp(-sum(v * v for v in sorted(row)[:k]) / k) for row in dist]
    dmax = max(max(row) for row in dist)
    out = []
    for i in range(m):
        denser = [dist[i][j] for j in range(m) if rho[j] > rho[i] or (rho[j] == rho[i] and j < i)]
        out.append(rho[i] * (min(denser) if denser else dmax))
    return torch.tensor(out)


def test_density_peak_scores_match_reference():
    x = torch.randn(15, 8, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(density_peak_scores(x, 4), density_reference(x, 4), atol=1e-4)


def test_dtm_hard_mask_and_sizes():
    v, n, d = 8, 16, 12
    gen = torch.Generator().manual_seed(4)
    seg = torch.randn(v, n, d, generator=gen)
    salient = torch.zeros(v, n, dtype=torch.bool)
    salient[:, :4] = True
    static = torch.zeros(n, dtype=torch.bool)
    static[4:10] = True
    quotas = anchor_quotas(v, 6, n - 4, 4)
    assert quotas == [0, 0, 0, 3, 0, 0, 0, 3]
    x, flat, owner = merge_context(seg, salient, quotas, static, knn=4, mu=0.6)
    sizes = torch.bincount(owner[owner >= 0], minlength=6)
    assert bool((owner.reshape(v, n)[salient] == -1).all())
    assert x.shape == (6, d) and int(sizes.sum()) == v * (n - 4)
    frames, pos = flat // n, flat % n
    assert sorted(set(frames.tolist())) == [3, 7]  # anchor frames counted back from the last
    assert not bool(salient[frames, pos].any())
    static_pos = pos[static[pos]].tolist()
    assert len(static_pos) == len(set(static_pos))  # the hard mask: no static position twice
    assert bool((owner[flat] == torch.arange(6)).all())  # an anchor owns itself
    _, _, o_nomask = merge_context(seg, salient, quotas, None, knn=4, mu=0.6)
    assert int((o_nomask >= 0).sum()) == v * (n - 4)


def test_anchor_quotas_floor_exact_and_high_retention():
    # official floor: 11 * 6 context tokens over ceil(6 / 4) = 2 anchor frames (5 and 1)
    assert anchor_quotas(6, 66, 100, 4) == [0, 33, 0, 0, 0, 33]
    assert anchor_quotas(6, 7, 100, 4) == [0, 3, 0, 0, 0, 3]  # floor(7 / 2): one token lost
    assert anchor_quotas(6, 7, 100, 4, floor=False) == [0, 3, 0, 0, 0, 4]  # exact, extra to the latest
    assert anchor_quotas(8, 1, 100, 4) == [0, 0, 0, 0, 0, 0, 0, 1]  # B_k < #anchor frames: latest first
    # an anchor frame holds at most its 8 non-salient tokens: the interval shrinks
    assert anchor_quotas(4, 30, 8, 4) == [7, 7, 7, 7]
    assert anchor_quotas(4, 30, 8, 4, floor=False) == [7, 7, 8, 8]
    seg = torch.randn(4, 10, 6)
    salient = torch.zeros(4, 10, dtype=torch.bool)
    salient[:, :2] = True
    x, flat, owner = merge_context(seg, salient, [7, 7, 8, 8], None, knn=4, mu=0.6)
    assert x.shape[0] == 30 and int((owner >= 0).sum()) == 32


@pytest.mark.parametrize("h,w,cells", [(14, 14, 29), (14, 14, 1), (3, 7, 5), (10, 10, 100), (1, 9, 4)])
def test_pool_frame_is_an_exact_partition(h, w, cells):
    cell = pool_frame(h, w, cells)
    assert cell.shape == (h * w,)
    sizes = torch.bincount(cell)
    assert sizes.shape[0] == cells and bool((sizes > 0).all())
    assert int(sizes.max()) <= 2 * int(sizes.min()) + 2 * max(h, w) // cells + 2  # near-equal cells


def test_random_is_seeded(clip):
    a = create_compressor("random", ratio=0.1, seed=1).compress(clip)[0]
    b = create_compressor("random", ratio=0.1, seed=2).compress(clip)[0]
    assert not torch.equal(a.positions, b.positions)


def test_scene_clip_helper_is_sane():
    grid = scene_clip(lengths=(3, 3))
    assert grid.num_frames == 6


@pytest.mark.parametrize("name", sorted(OWN_RULE))
def test_tiny_ratio_keeps_a_token_per_frame_with_full_provenance(name, clip):
    # N = 100, r = 0.02: FastVID's R = 2 has int(2 * 0.4) = 0 context tokens; the dropped
    # tokens then belong to their most similar salient token
    compressor = create_compressor(name, ratio=0.02)
    segments = compressor.compress(clip)
    check_segments(segments, clip, compressor.total_budget(clip))
    assert sum(s.budget for s in segments) >= 32
