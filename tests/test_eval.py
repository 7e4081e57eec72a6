"""Evaluation pieces on constructed cases with known answers (no downloads)."""

import pytest
import torch
import torch.nn.functional as F

from bench.efficientnet import BLOCKS, EfficientNetLite0, SameConv2d
from bench.metrics import (
    attention_fidelity,
    coverage,
    effective_keys,
    inverse_temperature,
    rms_normalise,
    sample_queries,
    segment_coverage,
)
from streamvid.compress import create_compressor
from streamvid.types import TokenGrid


def published_state_dict() -> dict[str, torch.Tensor]:
    """Random tensors under the key layout of the published Lite0 checkpoint."""

    def bn(prefix, c):
        return {
            f"{prefix}.weight": torch.rand(c) + 0.5,
            f"{prefix}.bias": torch.randn(c) * 0.1,
            f"{prefix}.running_mean": torch.randn(c) * 0.1,
            f"{prefix}.running_var": torch.rand(c) + 0.5,
            f"{prefix}.num_batches_tracked": torch.tensor(0),
        }

    sd = {"_conv_stem.weight": torch.randn(32, 3, 3, 3) * 0.1, **bn("_bn0", 32)}
    for i, (k, _s, e, cin, cout) in enumerate(BLOCKS):
        hidden = cin * e
        p = f"_blocks.{i}"
        if e != 1:
            sd[f"{p}._expand_conv.weight"] = torch.randn(hidden, cin, 1, 1) * 0.1
            sd.update(bn(f"{p}._bn0", hidden))
        sd[f"{p}._depthwise_conv.weight"] = torch.randn(hidden, 1, k, k) * 0.1
        sd.update(bn(f"{p}._bn1", hidden))
        sd[f"{p}._project_conv.weight"] = torch.randn(cout, hidden, 1, 1) * 0.1
        sd.update(bn(f"{p}._bn2", cout))
    sd["_conv_head.weight"] = torch.randn(1280, 320, 1, 1) * 0.05
    sd.update(bn("_bn1", 1280))
    sd["_fc.weight"] = torch.randn(1000, 1280) * 0.01
    sd["_fc.bias"] = torch.zeros(1000)
    return sd


def test_efficientnet_strict_load_and_grids():
    model = EfficientNetLite0()
    model.load_state_dict(published_state_dict(), strict=True)  # every key, every shape
    assert len(model.state_dict()) == 296  # the published checkpoint has 296 entries
    with torch.inference_mode():
        stage5, head = model.eval().features(torch.randn(2, 3, 224, 224))
        logits = model(torch.randn(1, 3, 224, 224))
    assert stage5.shape == (2, 14, 14, 112) and head.shape == (2, 7, 7, 1280)
    assert logits.shape == (1, 1000)


def test_same_padding_is_asymmetric_like_tensorflow():
    conv = SameConv2d(1, 1, 3, stride=2, bias=False)
    torch.nn.init.ones_(conv.weight)
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = conv(x)
    assert y.shape == (1, 1, 2, 2)
    # TF SAME at stride 2 on an even size pads 0 before and 1 after
    expected = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, stride=2)
    assert torch.equal(y, expected)


def test_fidelity_of_merged_exact_duplicates_is_one_with_size_bias():
    gen = torch.Generator().manual_seed(0)
    distinct = torch.randn(10, 16, generator=gen)
    counts = torch.tensor([1, 5, 2, 1, 1, 3, 1, 1, 4, 1])
    full = distinct.repeat_interleave(counts, dim=0)  # duplicates of each distinct token
    with_bias = attention_fidelity(full, distinct, counts, target_keys=5.0, size_bias=True)
    without = attention_fidelity(full, distinct, counts, target_keys=5.0, size_bias=False)
    assert with_bias == pytest.approx(1.0, abs=1e-6)
    assert without < with_bias


def _flat_grid(tokens: torch.Tensor, frames: int) -> TokenGrid:
    m, d = tokens.shape
    side = int(round((m // frames) ** 0.5))
    return TokenGrid(tokens.reshape(frames, side, side, d), torch.arange(frames, dtype=torch.float64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fidelity_queries_are_independent_of_random_keep(seed):
    # distinct rows, so every query and every kept token can be traced to its index
    full = torch.randn(8 * 36, 12, generator=torch.Generator().manual_seed(5))
    queries = sample_queries(full, num=64)[:-1]  # drop the clip mean
    q_index = set((torch.cdist(queries, full).argmin(dim=1)).tolist())
    (seg,) = create_compressor("random", ratio=0.15, seed=seed).compress(_flat_grid(full, 8))
    kept_index = set(torch.cdist(seg.tokens.float(), full).argmin(dim=1).tolist())
    shared = len(q_index & kept_index) / len(q_index)
    # independent draws share about the retention ratio; a shared generator would share all of them
    assert shared < 0.35
    assert not q_index <= kept_index


def test_effective_keys_and_temperature_against_the_definition():
    uniform = torch.zeros(3, 50)
    assert effective_keys(uniform) == pytest.approx(50.0)
    peaked = torch.full((2, 50), -1e4)
    peaked[:, 7] = 0.0
    assert effective_keys(peaked) == pytest.approx(1.0, abs=1e-6)
    gen = torch.Generator().manual_seed(3)
    q, k = rms_normalise(torch.randn(20, 16, generator=gen)), rms_normalise(torch.randn(300, 16, generator=gen))
    for target in (5.0, 40.0, 250.0):
        b = inverse_temperature(q, k, target)
        # slow reference: exp(entropy) of each attention row, averaged
        per_row = []
        for row in q:
            a = torch.softmax(b * (k @ row) / 16, dim=0).double()
            per_row.append(float(torch.exp(-(a * a.log()).sum())))
        assert sum(per_row) / len(per_row) == pytest.approx(target, rel=1e-3)
    assert inverse_temperature(q, k, 1.0) == float("inf")


def test_hard_max_fidelity_picks_the_most_similar_key():
    gen = torch.Generator().manual_seed(4)
    full = torch.randn(60, 8, generator=gen) * torch.rand(60, 1, generator=gen) * 10  # mixed norms
    kept = full[::3]
    queries = torch.randn(9, 8, generator=gen)
    got = attention_fidelity(full, kept, queries=queries, target_keys=1.0)
    # slow reference: each query takes its best key by RMS-normalised dot product
    cos = []
    for q in rms_normalise(queries):
        best_full = full[int(torch.argmax(rms_normalise(full) @ q))]
        best_kept = kept[int(torch.argmax(rms_normalise(kept) @ q))]
        cos.append(float(F.cosine_similarity(best_full, best_kept, dim=0)))
    assert got == pytest.approx(sum(cos) / len(cos), abs=1e-5)


def test_coverage_is_scored_inside_each_segment():
    gen = torch.Generator().manual_seed(6)
    tokens = torch.randn(4, 2, 2, 8, generator=gen)
    grid = TokenGrid(tokens, torch.arange(4, dtype=torch.float64))
    segs = create_compressor("random", ratio=0.25).compress(grid, boundaries=[0, 2, 4])
    cov = segment_coverage(tokens, segs)
    # slow reference: every token against the kept tokens of its own segment only
    sims = []
    for s in segs:
        kept = F.normalize(s.tokens.float(), dim=-1)
        for t in range(s.frame_offset, s.frame_offset + s.frame_count):
            for x in tokens[t].reshape(-1, 8):
                sims.append(float((kept @ F.normalize(x, dim=0)).max()))
    assert cov["nearest_mean"] == pytest.approx(sum(sims) / len(sims), abs=1e-5)
    # pruning: the provenance owner is the nearest kept token, so both rules agree
    assert cov["provenance_mean"] == pytest.approx(cov["nearest_mean"], abs=1e-6)
    # a merge that puts a token under a worse representative scores lower by provenance
    bad = [s.with_tokens(s.tokens, s.sizes, s.positions, s.times, owner=torch.zeros_like(s.owner)) for s in segs]
    assert segment_coverage(tokens, bad)["provenance_mean"] < cov["nearest_mean"]


def test_dropping_the_only_distinct_content_lowers_low_coverage():
    gen = torch.Generator().manual_seed(1)
    common, rare = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    full = common + 0.01 * torch.randn(40, 16, generator=gen)
    full[36:] = rare + 0.01 * torch.randn(4, 16, generator=gen)  # 10% of the tokens: rare content
    kept_with, kept_without = full[[0, 36]], full[[0, 1]]
    mean_w, p5_w = coverage(full, kept_with)
    mean_wo, p5_wo = coverage(full, kept_without)
    assert p5_w > 0.99 and mean_w > 0.99
    assert p5_wo < 0.5 and mean_wo < mean_w  # the 5th percentile sees the loss first
    # provenance-based: the same answer when each token is owned by its true representative
    owner = torch.zeros(40, dtype=torch.long)
    owner[36:] = 1
    assert coverage(full, kept_with, owner) == pytest.approx((mean_w, p5_w), abs=1e-6)
    # a merge that put the rare tokens under the common one is penalised
    assert coverage(full, kept_with, torch.zeros(40, dtype=torch.long))[1] < 0.5


def test_the_method_plan_runs_every_compressor_keep_all_once_and_seeds_only_where_they_matter():
    from bench.report import method_runs, seeded_compressor
    from streamvid.compress import list_compressors

    plan = method_runs((0.25, 0.1), seeds=3)
    assert [(r, m) for r, m, _, _ in plan if m == "keep_all"] == [(0.25, "keep_all")]
    assert {m for _, m, _, _ in plan} == set(list_compressors())
    assert all(run == 1.0 for _, m, run, _ in plan if m == "keep_all")
    seeds = {m: s for _, m, _, s in plan}
    assert seeds["random"] == [0, 1, 2] and seeds["infomerge"] == [0]
    assert seeded_compressor("random", 0.1, seed=2).config.seed == 2
