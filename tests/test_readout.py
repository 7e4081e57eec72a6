"""Class-query readout, its controls and the planted-needle provenance, on constructed cases (no downloads)."""

import pytest
import torch

from bench.needle_frame import needle_report, representatives, represented
from bench.readout import (
    HeadClip,
    TopNorm,
    agreement,
    class_readout,
    grid_readout,
    readout,
    segments_readout,
    summarise,
    uses_saliency,
    variants,
)
from streamvid.compress import create_compressor
from streamvid.types import TokenGrid

C = 40  # classes
INSERT = 39  # the class of the distinctive insert
INSERT_FRAMES = (9, 10)  # inside window 2 (frames 8-11)


def test_class_readout_matches_the_equation():
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(7, 5, generator=gen), torch.randn(3, 5, generator=gen), torch.randn(3, generator=gen)
    z = class_readout(x @ w.T, b)
    for c in range(3):  # z_c = w_c . sum_i softmax_i(w_c . x_i) x_i + b_c
        a = torch.softmax(x @ w[c], dim=0)
        assert float(z[c]) == pytest.approx(float(w[c] @ (a[:, None] * x).sum(0) + b[c]), abs=1e-5)


def insert_clip() -> tuple[TokenGrid, torch.Tensor, torch.Tensor]:
    """24 frames of 4 x 4 tokens in class space (D = C): six windows of four frames.

    Each window holds five loud classes (window 2 only four), so the clip's top-20 is
    loud classes only; frames 9 and 10 are a quiet insert of class 39, which ranks
    fifth in window 2 and nowhere near the clip's top-20: a needle.
    """
    gen = torch.Generator().manual_seed(1)
    frames = torch.randn(24, 16, C, generator=gen) * 0.01
    loud = iter(range(29))
    for window in range(6):
        classes = [next(loud) for _ in range(4 if window == 2 else 5)]
        for f in range(4 * window, 4 * window + 4):
            for p in range(16):
                c = classes[p % len(classes)]
                frames[f, p, c] += 5.0 + 0.02 * c  # distinct loudness: no ties
    for f in INSERT_FRAMES:
        frames[f] = torch.randn(16, C, generator=gen) * 0.01
        frames[f, :, INSERT] += 2.0
    grid = TokenGrid(frames.reshape(24, 4, 4, C), torch.arange(24, dtype=torch.float64) * 0.5)
    return grid, torch.eye(C) * 3.0, torch.zeros(C)


def insert_mask() -> torch.Tensor:
    mask = torch.zeros(24, 4, 4, dtype=torch.bool)
    mask[list(INSERT_FRAMES)] = True
    return mask


def top5(z: torch.Tensor) -> set[int]:
    return set(torch.topk(z, 5).indices.tolist())


def test_the_insert_is_a_needle_of_the_full_readout():
    grid, w, b = insert_clip()
    full = grid_readout(grid, w, b)
    assert INSERT in top5(full.windows[2])
    assert INSERT not in set(torch.topk(full.video, 20).indices.tolist())
    assert agreement(full, full)["needle_total"] >= 1


@pytest.mark.parametrize("method,ratio", [("keep_all", 1.0), ("uniform", 0.5)])
def test_a_method_that_keeps_the_insert_keeps_its_needle(method, ratio):
    grid, w, b = insert_clip()
    full = grid_readout(grid, w, b)
    segs = create_compressor(method, ratio=ratio).compress(grid)
    comp = segments_readout(segs, grid.timestamps, w, b)
    assert INSERT in top5(comp.windows[2])
    report = needle_report(grid, segs, [insert_mask()], w, b)
    assert report["represented"] == [True]
    assert report["windows"] == [2]
    assert report["needle_hits"] >= 1
    if method == "keep_all":
        assert agreement(full, comp) == {**agreement(full, full)}
        assert agreement(full, comp)["window_top5"] == 1.0


def test_dropping_the_insert_loses_the_needle_and_its_provenance():
    grid, w, b = insert_clip()
    (seg,) = create_compressor("keep_all").compress(grid)
    frame = seg.positions[:, 0]
    keep = (frame != INSERT_FRAMES[0]) & (frame != INSERT_FRAMES[1])
    dropped = seg.with_tokens(seg.tokens[keep], seg.sizes[keep], seg.positions[keep], seg.times[keep])
    comp = segments_readout([dropped], grid.timestamps, w, b)
    assert INSERT not in top5(comp.windows[2])
    report = needle_report(grid, [dropped], [insert_mask()], w, b)
    assert report["represented"] == [False] and report["needle_hits"] == 0


def test_represented_needs_a_planted_representative_and_a_planted_majority():
    mask = torch.tensor([True, True, False, False, False])
    # kept 0 is planted and owns both planted originals: represented
    assert represented(torch.tensor([0, 0, 1, 1, 1]), mask, torch.tensor([0, 2])) == (True, 1)
    # the planted originals joined a background token: not represented, even as its majority
    assert represented(torch.tensor([1, 1, 1, 0, 0]), mask, torch.tensor([3, 2]))[0] is False
    # a planted representative diluted by background: not represented
    assert represented(torch.tensor([0, 0, 0, 0, 0]), mask, torch.tensor([0]))[0] is False


def test_an_empty_window_scores_zero():
    gen = torch.Generator().manual_seed(2)
    tokens, w, b = torch.randn(8, 4, generator=gen), torch.randn(10, 4, generator=gen), torch.zeros(10)
    frame_times = torch.arange(8, dtype=torch.float64)  # one token per frame; windows: frames 0-3, 4-7
    full = readout(tokens, frame_times, frame_times, w, b)
    comp = readout(tokens[:2], frame_times[:2], frame_times, w, b)  # nothing kept in the second window
    assert bool(full.present.all()) and comp.present.tolist() == [True, False]
    a = agreement(full, comp)
    assert a["windows_empty"] == 1.0 and a["window_top5"] <= 0.5


def test_top_norm_control_keeps_the_largest_tokens_of_each_frame():
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randn(5, 3, 4, 6, generator=gen)
    grid = TokenGrid(tokens, torch.arange(5, dtype=torch.float64))
    (seg,) = TopNorm(ratio=0.25).compress(grid)
    assert seg.budget == round(0.25 * 5 * 12)
    assert torch.equal(seg.sizes, torch.bincount(seg.owner, minlength=seg.budget))
    reps = representatives(grid, [seg])
    for f in range(5):  # slow reference: the top-k norms of each frame
        mine = sorted(int(r) - f * 12 for r in reps if f * 12 <= r < (f + 1) * 12)
        norms = tokens[f].reshape(12, 6).norm(dim=-1)
        assert mine == sorted(torch.topk(norms, len(mine)).indices.tolist())
        assert len(mine) == 3


def test_saliency_controls_appear_only_for_methods_that_use_saliency():
    gen = torch.Generator().manual_seed(4)
    grid = TokenGrid(torch.randn(8, 4, 4, 16, generator=gen), torch.arange(8, dtype=torch.float64))
    clip = HeadClip(grid, torch.rand(8, 4, 4, generator=gen))
    assert uses_saliency("infomerge", clip, 0.25)
    assert not uses_saliency("random", clip, 0.25)
    rows = variants(["infomerge", "random"], ["infomerge"], seeds=3)
    labels = {r.label: r for r in rows}
    assert labels["random"].seeds == (0, 1, 2)  # seeded methods: three seeds
    assert labels["infomerge + random saliency"].seeds == (0, 1, 2)
    assert "top_norm (control)" in labels and "random + random saliency" not in labels


def test_summary_is_mean_and_range_over_seeds():
    runs = {
        clip: [
            {
                "video_top5": v,
                "window_top5": v,
                "needle_hits": h,
                "needle_total": 4.0,
                "tokens": 10.0,
                "windows_empty": 0.0,
            }
            for v, h in zip(vals, hits)
        ]
        for clip, vals, hits in (("a", (0.2, 0.4, 0.6), (1.0, 2.0, 3.0)), ("b", (0.4, 0.4, 0.4), (1.0, 2.0, 1.0)))
    }
    s = summarise({"runs": runs, "seeds": [0, 1, 2]})
    assert s["video_top5"]["mean"] == pytest.approx(0.4)
    assert (s["video_top5"]["min"], s["video_top5"]["max"]) == pytest.approx((0.3, 0.5))
    assert s["needle_recall"]["mean"] == pytest.approx((2 / 8 + 4 / 8 + 4 / 8) / 3)


def test_efficientnet_taps_at_448():
    from bench.efficientnet import EfficientNetLite0

    with torch.inference_mode():
        taps = EfficientNetLite0().eval().taps(torch.randn(1, 3, 448, 448))
    assert taps["head"].shape == (1, 14, 14, 1280)
    assert taps["stage3"].shape == (1, 56, 56, 40) and taps["stage5"].shape == (1, 28, 28, 112)
