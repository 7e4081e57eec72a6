import pytest
import torch
from conftest import moving_object_clip

from streamvid.compress.tfd import (
    IncrementalTFD,
    static_positions,
    temporal_fingerprint_difference,
)
from streamvid.errors import ShapeError


def tfd_reference(tokens: torch.Tensor) -> torch.Tensor:
    """Spec 1.2 written out with loops: tokens [V, N, D] -> [N] (float64)."""
    v, n, _ = tokens.shape
    out = torch.zeros(n, dtype=torch.float64)
    if v < 2:
        return out
    h = tokens.double() / tokens.double().norm(dim=-1, keepdim=True)
    for p in range(n):
        f = torch.zeros(v, v, dtype=torch.float64)
        for a in range(v):
            for b in range(v):
                f[a, b] = torch.dot(h[a, p], h[b, p])
        total = 0.0
        for a in range(v - 1):
            for b in range(v):
                total += abs(float(f[a + 1, b] - f[a, b]))
        out[p] = total / ((v - 1) * v)
    return out


@pytest.mark.parametrize("frames", [1, 2, 3, 7])
def test_batch_and_incremental_equal_reference(frames):
    tokens = torch.randn(frames, 5, 16, generator=torch.Generator().manual_seed(frames))
    ref = tfd_reference(tokens)
    assert torch.allclose(temporal_fingerprint_difference(tokens).double(), ref, atol=1e-5)
    inc = IncrementalTFD()
    for t in range(frames):
        inc.add(tokens[t])
        expected = tfd_reference(tokens[: t + 1])
        assert torch.allclose(inc.value().double(), expected, atol=1e-5), f"after frame {t}"
    assert inc.num_frames == frames


def test_moving_object_has_higher_tfd_than_background():
    tokens, visited = moving_object_clip()
    t, h, w, d = tokens.shape
    tfd = temporal_fingerprint_difference(tokens.reshape(t, h * w, d)).reshape(h, w)
    assert tfd[visited].min() > 5 * tfd[~visited].max()
    static = static_positions(tfd.flatten(), t, rho=0.5).reshape(h, w)
    assert not bool((static & visited).any())  # the static set is all background


def test_static_positions_empty_for_one_frame():
    assert not static_positions(torch.rand(10), num_frames=1, rho=0.5).any()
    assert static_positions(torch.rand(10), num_frames=3, rho=0.35).sum() == 3


def test_incremental_accepts_grid_and_rejects_changed_grid():
    inc = IncrementalTFD()
    with pytest.raises(ShapeError):
        inc.value()
    inc.add(torch.randn(2, 3, 8))  # [h, w, D] frame
    with pytest.raises(ShapeError):
        inc.add(torch.randn(5, 8))
    with pytest.raises(ShapeError):
        temporal_fingerprint_difference(torch.randn(4, 8))
