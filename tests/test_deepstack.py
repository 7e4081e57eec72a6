"""DeepStack features go through every compressor, re-merge and the memory with the tokens' own
selections and merges (docs/algorithms.md, "DeepStack")."""

import math

import pytest
import torch
import torch.nn.functional as F

from streamvid import create_compressor, list_compressors
from streamvid.compress.incremental import IncrementalSegment
from streamvid.compress.infomerge import density_peak_scores, select_salient
from streamvid.compress.tfd import static_positions, temporal_fingerprint_difference
from streamvid.errors import ShapeError
from streamvid.types import TokenGrid


def clip(frames=8, h=4, w=4, dim=64, seed=0):
    """A clip with a static background and a moving patch (so TFD finds static positions)."""
    gen = torch.Generator().manual_seed(seed)
    background = torch.randn(1, h, w, dim, generator=gen)
    tokens = background.repeat(frames, 1, 1, 1) + 0.05 * torch.randn(frames, h, w, dim, generator=gen)
    for t in range(frames):
        tokens[t, t % h, (t // h) % w] += 3 * torch.randn(dim, generator=gen)
    saliency = tokens.norm(dim=-1) + 0.1 * torch.rand(frames, h, w, generator=gen)
    return TokenGrid(tokens, torch.arange(frames, dtype=torch.float64) * 0.5, saliency, saliency_source="test")


def with_deepstack(grid, deepstack):
    return TokenGrid(
        grid.tokens, grid.timestamps, grid.saliency, saliency_source=grid.saliency_source, deepstack=deepstack
    )


# every registered compressor, with the options that make it merge (not just prune) where it can
CASES = [(name, 0.15) for name in list_compressors()] + [("uniform", 0.4), ("aot", 0.4)]


@pytest.mark.parametrize("name,ratio", CASES)
def test_copies_of_the_tokens_come_out_as_the_compressed_tokens(name, ratio):
    """DeepStack levels that are copies of the tokens must come out equal to the kept tokens."""
    grid = clip()
    deep = with_deepstack(grid, grid.tokens[None].repeat(3, 1, 1, 1, 1).clone())
    comp = create_compressor(name, ratio=ratio)
    plain = comp.compress(grid, boundaries=[0, 4, 8])
    carried = comp.compress(deep, boundaries=[0, 4, 8])
    for a, b in zip(plain, carried):
        assert b.deepstack is not None and b.deepstack.shape == (3, b.budget, grid.dim)
        torch.testing.assert_close(b.tokens, a.tokens, rtol=0, atol=0)  # the tokens do not change
        for level in range(3):
            torch.testing.assert_close(b.deepstack[level], b.tokens, rtol=1e-6, atol=1e-6)
        assert torch.equal(a.owner, b.owner) and torch.equal(a.positions, b.positions)


@pytest.mark.parametrize("name,ratio", CASES)
def test_every_kept_feature_is_the_same_linear_map_of_the_originals_as_its_token(name, ratio):
    """Level 0 holds one-hot probes of the originals, so it reads out the map W each kept value is
    of the originals; level 1 (random) must then be W @ level 1, and the tokens W @ tokens."""
    grid = clip(frames=4, h=3, w=4, dim=64)
    n_orig = 4 * 3 * 4
    probes = torch.eye(n_orig, 64).reshape(4, 3, 4, 64)
    rand = torch.randn(4, 3, 4, 64, generator=torch.Generator().manual_seed(5))
    deep = with_deepstack(grid, torch.stack([probes, rand]))
    (seg,) = create_compressor(name, ratio=ratio).compress(deep, boundaries=[0, 4])
    mixing = seg.deepstack[0][:, :n_orig]  # (n, 48): the weights of each kept value
    torch.testing.assert_close(seg.deepstack[1], mixing @ rand.reshape(n_orig, 64), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seg.tokens, mixing @ grid.tokens.reshape(n_orig, 64), rtol=1e-4, atol=1e-4)
    assert bool((mixing >= -1e-6).all())  # convex weights: every method averages, none extrapolates
    torch.testing.assert_close(mixing.sum(dim=1), torch.ones(seg.budget), rtol=1e-5, atol=1e-5)


def _infomerge_reference(grid, deep, comp):
    """A slow loop over the method's steps on the DeepStack features of one segment.

    Decisions (static set, ATS, anchors, memberships) are taken from the tokens as the method
    states them; values are computed one kept token at a time. -> {(t, p): [L, D]}.
    """
    cfg = comp.config
    v, h, w, dim = grid.tokens.shape
    n = h * w
    x = grid.tokens.reshape(v, n, dim).float()
    ds = deep.reshape(deep.shape[0], v, n, dim).float()
    static = static_positions(temporal_fingerprint_difference(x), v, comp.rho)
    salient_count = comp.salient_per_frame(n)
    chosen = select_salient(grid.saliency.reshape(v, n), salient_count, static, cfg.lam)
    xc, dsc = x.clone(), ds.clone()
    for p in range(n):  # static carry: from its first choice on, a static position holds its mean
        frames = [t for t in range(v) if chosen[t, p]]
        if static[p] and frames:
            for r in range(frames[0], v):
                xc[r, p] = x[:, p].mean(dim=0)
                dsc[:, r, p] = ds[:, :, p].mean(dim=1)
    out = {}
    for t in range(v):
        for p in range(n):
            if chosen[t, p]:
                out[(t, p)] = dsc[:, t, p]
    _, _, (quotas,) = comp.plan(grid, [0, v])
    members = [(t, p) for t in range(v) for p in range(n) if not chosen[t, p]]
    taken_static = torch.zeros(n, dtype=torch.bool)
    for f, quota in enumerate(quotas):
        if quota <= 0:
            continue
        cand = [p for p in range(n) if not chosen[f, p]]
        score = density_peak_scores(xc[f, cand], cfg.knn)
        for i, p in enumerate(cand):
            if static[p] and taken_static[p]:
                score[i] = -math.inf
        picked = [cand[i] for i in torch.topk(score, k=min(quota, len(cand))).indices.tolist()]
        for p in picked:
            if static[p]:
                taken_static[p] = True
        anchors = F.normalize(xc[f, picked], dim=-1)
        groups = {p: [] for p in picked}
        for t, q in members:
            best = int((F.normalize(xc[t, q], dim=0) @ anchors.T).argmax())
            groups[picked[best]].append((t, q))
        for p, group in groups.items():
            if not group:
                out[(f, p)] = dsc[:, f, p]
                continue
            weight = max(1.0 / (len(group) + 1), cfg.mu)
            mean = torch.stack([dsc[:, t, q] for t, q in group]).mean(dim=0)
            out[(f, p)] = weight * dsc[:, f, p] + (1 - weight) * mean
    return out


def test_infomerge_at_15_percent_matches_a_slow_reference_on_random_features():
    grid = clip(frames=8, h=6, w=6, dim=32, seed=3)
    deep = torch.randn(3, 8, 6, 6, 32, generator=torch.Generator().manual_seed(9))
    comp = create_compressor("infomerge", ratio=0.15)
    (seg,) = comp.compress(with_deepstack(grid, deep), boundaries=[0, 8])
    reference = _infomerge_reference(grid, deep, comp)
    assert len(reference) == seg.budget
    h, w = seg.grid_size
    for k, (t, row, col) in enumerate(seg.positions.tolist()):
        torch.testing.assert_close(seg.deepstack[:, k], reference[(t, row * w + col)], rtol=1e-5, atol=1e-5)
    # provenance: sizes count the owners, and every kept token owns its own representative
    assert torch.equal(torch.bincount(seg.owner, minlength=seg.budget), seg.sizes)
    rep = (seg.positions[:, 0] * h + seg.positions[:, 1]) * w + seg.positions[:, 2]
    assert torch.equal(seg.owner[rep], torch.arange(seg.budget))


def test_pooled_and_pruned_features_follow_owner_and_sizes():
    """uniform: each kept feature is the mean of its owner group; pruning: the representative's."""
    grid = clip(frames=4, h=4, w=6, dim=16, seed=2)
    deep = torch.randn(2, 4, 4, 6, 16, generator=torch.Generator().manual_seed(4))
    flat = deep.reshape(2, -1, 16)
    (pooled,) = create_compressor("uniform", ratio=0.25).compress(with_deepstack(grid, deep))
    for k in range(pooled.budget):
        group = torch.nonzero(pooled.owner == k).flatten()
        assert group.numel() == int(pooled.sizes[k])
        torch.testing.assert_close(pooled.deepstack[:, k], flat[:, group].mean(dim=1), rtol=1e-5, atol=1e-5)
    for name in ("random", "vidcom2"):
        (seg,) = create_compressor(name, ratio=0.25).compress(with_deepstack(grid, deep))
        h, w = seg.grid_size
        rep = (seg.positions[:, 0] * h + seg.positions[:, 1]) * w + seg.positions[:, 2]
        assert torch.equal(seg.deepstack, flat[:, rep])


def test_the_open_segment_carries_deepstack_like_the_batch_compressor():
    grid = clip()
    deep = with_deepstack(grid, torch.randn(2, *grid.tokens.shape, generator=torch.Generator().manual_seed(1)))
    comp = create_compressor("infomerge", ratio=0.15)
    (batch,) = comp.compress(deep, boundaries=[0, 8])
    open_seg = IncrementalSegment(comp)
    for a in range(0, 8, 3):
        open_seg.add(deep.slice(a, min(a + 3, 8)))
    live = open_seg.close()
    torch.testing.assert_close(live.deepstack, batch.deepstack, rtol=1e-5, atol=1e-5)
    with pytest.raises(ShapeError, match="DeepStack levels"):
        other = IncrementalSegment(comp)
        other.add(deep.slice(0, 2))
        other.add(grid.slice(2, 4))


def test_deepstack_shapes_are_checked_and_never_dropped_silently():
    grid = clip()
    with pytest.raises(ShapeError, match=r"\[L, T, h, w, D\]"):
        with_deepstack(grid, grid.tokens.clone())
    deep = with_deepstack(grid, grid.tokens[None].clone())
    assert deep.deepstack_levels == 1 and deep.slice(2, 5).deepstack.shape == (1, 3, 4, 4, 64)
    (seg,) = create_compressor("keep_all").compress(deep)
    with pytest.raises(ShapeError, match="DeepStack"):
        seg.with_tokens(seg.tokens[:4], seg.sizes[:4], seg.positions[:4], seg.times[:4])
    with pytest.raises(ShapeError, match=r"\[L, n, D\]"):
        seg.with_tokens(seg.tokens[:4], seg.sizes[:4], seg.positions[:4], seg.times[:4], deepstack=seg.tokens[:4])


@pytest.mark.parametrize("token_dtype", ["float16", "bfloat16", "int8", "int4"])
def test_the_memory_stores_deepstack_in_the_token_format(tmp_path, token_dtype):
    """Shards hold the DeepStack levels quantized like the tokens (their bytes counted in the
    shard), and ``get`` gives them back with the tokens."""
    from memory import TokenMemory
    from memory.quant import dequantize, quantize, vector_bytes

    grid = clip(frames=4, h=4, w=4, dim=64)
    deep = torch.randn(3, 4, 4, 4, 64, generator=torch.Generator().manual_seed(7))
    (seg,) = create_compressor("infomerge", ratio=0.25).compress(with_deepstack(grid, deep), boundaries=[0, 4])
    (plain,) = create_compressor("infomerge", ratio=0.25).compress(grid, boundaries=[0, 4])
    mem = TokenMemory(tmp_path / "m", cap_tokens=10_000, dtype=token_dtype)
    mem_plain = TokenMemory(tmp_path / "plain", cap_tokens=10_000, dtype=token_dtype)
    sid = mem.add(seg, torch.ones(4))
    sid_plain = mem_plain.add(plain, torch.ones(4))
    (back,) = mem.get([sid])
    assert back.deepstack is not None and back.deepstack.shape == (3, seg.budget, 64)
    for level in range(3):  # exactly what the format keeps of each level
        stored = dequantize(quantize(seg.deepstack[level], token_dtype), 64)
        torch.testing.assert_close(back.deepstack[level], stored, rtol=0, atol=0)
    assert mem_plain.get([sid_plain])[0].deepstack is None
    ds_bytes = 3 * seg.budget * vector_bytes(64, token_dtype)  # three more copies of the vectors
    extra = mem.manifest.row(sid).nbytes - mem_plain.manifest.row(sid_plain).nbytes
    assert ds_bytes <= extra <= ds_bytes + 256  # + their header entries
    mem.close()
    mem_plain.close()


def test_remerge_carries_deepstack_with_the_tokens_size_weighted_means():
    """Re-merge (one segment and the batched form): copies stay equal to the tokens, and on random
    features each kept feature is the size-weighted mean of its owner group (from keep_all, every
    original has size 1, so the plain mean of the originals it stands for)."""
    from streamvid.compress.remerge import remerge, remerge_many

    grid = clip(frames=6, h=4, w=4, dim=32, seed=5)
    copies = with_deepstack(grid, grid.tokens[None].repeat(2, 1, 1, 1, 1).clone())
    deep = torch.randn(2, 6, 4, 4, 32, generator=torch.Generator().manual_seed(8))
    keep = create_compressor("keep_all")
    (seg_copies,) = keep.compress(copies)
    (seg_random,) = keep.compress(with_deepstack(grid, deep))
    (seg_small,) = create_compressor("infomerge", ratio=0.4).compress(with_deepstack(grid, deep), boundaries=[0, 6])
    one = [remerge(seg_copies, 11), remerge(seg_random, 11), remerge(seg_small, 5)]
    many = remerge_many([seg_copies, seg_random, seg_small], [11, 11, 5])
    for a, b in zip(one, many):
        assert b.budget == a.budget and torch.equal(a.owner, b.owner)
        torch.testing.assert_close(b.deepstack, a.deepstack, rtol=1e-6, atol=1e-6)
    for level in range(2):
        torch.testing.assert_close(one[0].deepstack[level], one[0].tokens, rtol=1e-6, atol=1e-6)
    merged = one[1]
    flat = deep.reshape(2, -1, 32)
    for k in range(merged.budget):
        group = torch.nonzero(merged.owner == k).flatten()
        assert group.numel() == int(merged.sizes[k])
        torch.testing.assert_close(merged.deepstack[:, k], flat[:, group].mean(dim=1), rtol=1e-5, atol=1e-5)
    # from a compressed segment: sizes weigh the kept features exactly as they weigh the tokens
    small = one[2]
    weights = torch.zeros(small.budget, seg_small.budget)
    for i in range(seg_small.original_tokens):  # old kept token of original i -> new kept token
        weights[small.owner[i], seg_small.owner[i]] = seg_small.sizes[seg_small.owner[i]].float()
    weights = weights / weights.sum(dim=1, keepdim=True)
    torch.testing.assert_close(small.tokens.float(), weights @ seg_small.tokens.float(), rtol=1e-4, atol=1e-4)
    for level in range(2):
        torch.testing.assert_close(small.deepstack[level], weights @ seg_small.deepstack[level], rtol=1e-4, atol=1e-4)


def test_a_byte_cap_counts_the_deepstack_levels_and_a_memory_keeps_one_level_count(tmp_path):
    """Each DeepStack level is one more stored vector per token: a byte cap holds 1 / (1 + L) as
    many tokens' worth of vectors; a segment with another level count is refused, nothing lost."""
    from memory import TokenMemory
    from memory.quant import vector_bytes

    grid = clip(frames=4, h=4, w=4, dim=64)
    deep = torch.randn(3, 4, 4, 4, 64, generator=torch.Generator().manual_seed(3))
    (seg,) = create_compressor("infomerge", ratio=0.25).compress(with_deepstack(grid, deep), boundaries=[0, 4])
    (plain,) = create_compressor("infomerge", ratio=0.25).compress(grid, boundaries=[0, 4])
    cap_bytes = 100_000
    mem = TokenMemory(tmp_path / "m", cap_bytes=cap_bytes, dtype="float16")
    mem.add(seg, torch.ones(4))
    assert mem.deepstack_levels == 3
    per_token = mem.config.token_bytes(64, 3)
    assert per_token >= 4 * vector_bytes(64, "float16")
    assert mem.token_cap == cap_bytes // per_token < cap_bytes // mem.config.token_bytes(64)
    with pytest.raises(ShapeError, match="DeepStack levels"):
        mem.add(plain, torch.ones(4))
    assert mem.stats().segments_live == 1
    mem.close()
    reopened = TokenMemory(tmp_path / "m")
    assert reopened.deepstack_levels == 3 and reopened.token_cap == cap_bytes // per_token
    reopened.close()
