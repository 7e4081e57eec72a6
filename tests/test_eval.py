"""Evaluation pieces on constructed cases with known answers (no downloads)."""

import pytest
import torch
import torch.nn.functional as F

from bench.efficientnet import BLOCKS, EfficientNetLite0, SameConv2d
from bench.metrics import attention_fidelity, coverage


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
    with_bias = attention_fidelity(full, distinct, counts, sharpness=4.0, size_bias=True)
    without = attention_fidelity(full, distinct, counts, sharpness=4.0, size_bias=False)
    assert with_bias == pytest.approx(1.0, abs=1e-6)
    assert without < with_bias


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
