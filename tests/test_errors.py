import pytest
import torch

from streamvid import (
    ConfigError,
    EmptyInputError,
    ShapeError,
    StreamvidError,
    UnknownNameError,
    create_compressor,
    list_compressors,
)
from streamvid.types import CompressedSegment, Segment, TokenGrid


def test_registry_lists_methods_and_rejects_unknown_names():
    assert list_compressors() == ["aot", "fastvid", "infomerge", "keep_all", "random", "uniform", "vidcom2"]
    with pytest.raises(UnknownNameError) as err:
        create_compressor("tome")
    assert "infomerge" in str(err.value) and "vidcom2" in str(err.value)
    assert isinstance(err.value, LookupError) and isinstance(err.value, StreamvidError)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.01, 5])
@pytest.mark.parametrize("name", list_compressors())
def test_ratio_outside_unit_interval(name, ratio):
    with pytest.raises(ConfigError, match="ratio"):
        create_compressor(name, ratio=ratio)


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="lamda"):
        create_compressor("infomerge", lamda=3)


def test_wrong_rank():
    with pytest.raises(ShapeError, match=r"\[T, h, w, D\]"):
        TokenGrid(torch.randn(4, 196, 32), torch.arange(4.0))
    with pytest.raises(ShapeError):
        TokenGrid(torch.randn(4, 2, 2, 8), torch.arange(3.0))
    with pytest.raises(ShapeError, match="non-decreasing"):
        TokenGrid(torch.randn(3, 2, 2, 8), torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(ShapeError, match="saliency"):
        TokenGrid(torch.randn(3, 2, 2, 8), torch.arange(3.0), saliency=torch.rand(3, 4))
    with pytest.raises(ShapeError, match="TokenGrid"):
        create_compressor("infomerge").compress(torch.randn(3, 2, 2, 8))


def test_empty_clip():
    with pytest.raises(EmptyInputError):
        TokenGrid(torch.randn(0, 2, 2, 8), torch.zeros(0))
    with pytest.raises(EmptyInputError):
        Segment(torch.zeros(0, 4, 4, 3, dtype=torch.uint8), torch.zeros(0))
    with pytest.raises(EmptyInputError):
        CompressedSegment(
            torch.zeros(0, 4),
            torch.zeros(0),
            torch.zeros(0, 3),
            torch.zeros(0),
            (2, 2),
            1,
            0.0,
            0.0,
            torch.zeros(4),
            0.0,
        )


def test_bad_frames_and_boundaries():
    with pytest.raises(ShapeError, match="uint8"):
        Segment(torch.zeros(2, 4, 4, 3), torch.arange(2.0))
    grid = TokenGrid(torch.randn(6, 2, 2, 8), torch.arange(6.0))
    with pytest.raises(ShapeError, match="boundaries"):
        create_compressor("infomerge").compress(grid, boundaries=[0, 3, 3, 6])
    with pytest.raises(ShapeError, match="boundaries"):
        create_compressor("uniform").compress(grid, boundaries=[0, 4])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list_compressors())
def test_cuda_matches_cpu(name):
    grid = TokenGrid(torch.randn(16, 14, 14, 64), torch.arange(16.0))
    cpu = create_compressor(name, ratio=0.15).compress(grid)
    gpu = create_compressor(name, ratio=0.15, device="cuda").compress(grid)
    assert [s.budget for s in cpu] == [s.budget for s in gpu]
    for a, b in zip(cpu, gpu):
        assert torch.allclose(a.tokens, b.tokens.cpu(), atol=1e-3)
        assert torch.equal(a.sizes, b.sizes.cpu())
