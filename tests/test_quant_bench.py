"""The stored-token benchmarks (token_dtype): the readout of quantized tokens and the needle stream
per dtype, on small synthetic inputs (no downloads, no EfficientNet)."""

import pytest
import torch
import torch.nn.functional as F

from bench.needles import build_stream, run_needles, run_needles_dtypes
from bench.readout import (
    HeadClip,
    _cache_file,
    _load_cached,
    _save_cached,
    evaluate_quantized,
    quantized_findings,
    quantized_table,
    stored_tokens,
)
from memory import TokenMemory
from memory.config import MemoryConfig
from streamvid.compress import create_compressor
from streamvid.errors import ConfigError
from streamvid.types import TokenGrid

C = 48  # classes = token width (not a multiple of 32: int4 pads its last group)


def class_clip(frames: int = 32, seed: int = 0) -> tuple[HeadClip, torch.Tensor, torch.Tensor]:
    """Tokens in class space: each 4-frame window has five loud classes of its own (40 in all),
    on a noisy background, so half of them are outside the clip's top-20 (needles)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, 4, 4, C, generator=gen) * 0.3
    for f in range(frames):
        window = f // 4
        for p in range(16):
            x[f, p // 4, p % 4, (window * 5 + p % 5) % C] += 3.0 + 0.1 * window + 0.02 * (p % 5)
    grid = TokenGrid(x, torch.arange(frames, dtype=torch.float64))
    early = torch.rand(frames, 4, 4, generator=gen)
    return HeadClip(grid, early), torch.eye(C) * 2.0, torch.zeros(C)


def test_float16_stored_readout_agrees_with_itself_and_int4_is_a_fraction():
    clip, weight, bias = class_clip()
    rows = evaluate_quantized({"a": clip}, weight, bias, ratios=(0.25,), dtypes=("float16", "int8", "int4"))
    by = {r["token_dtype"]: r for r in rows}
    assert set(by) == {"float16", "int8", "int4"}
    f16 = by["float16"]["vs_float16"]
    assert by["float16"]["vs_all"]["needle_total"] > 0  # the clip has window-specific classes
    for key in ("window_top5", "video_top5", "needle_recall"):
        assert f16[key]["mean"] == 1.0
        for dt in ("int8", "int4"):
            for ref in ("vs_all", "vs_float16"):
                assert 0.0 <= by[dt][ref][key]["mean"] <= 1.0
    assert [by[dt]["vector_bytes"] for dt in ("float16", "int8", "int4")] == [2 * C, C + 4, 2 * 20]
    text = quantized_table({"ratios": [0.25], "dtypes": ["float16", "int8", "int4"], "rows": rows})
    assert text.count("\n") == 4 and "int4" in text
    lines = quantized_findings({"ratios": [0.25], "dtypes": ["float16", "int8", "int4"], "rows": rows})
    assert len(lines) == 2 and "int8 at 25%" in lines[0] and "target" in lines[0]


def test_the_stored_readout_sees_int4_damage():
    """One large value per token sets int4's step (20/15) far above the class scores' spread, so
    the stored readout must move away from float16's; int8's step (20/127) keeps most of it."""
    gen = torch.Generator().manual_seed(3)
    frames, d = 16, 32
    x = torch.rand(frames, 4, 4, d, generator=gen)
    x[..., 0] = 20.0
    clip = HeadClip(TokenGrid(x, torch.arange(frames, dtype=torch.float64)), torch.rand(frames, 4, 4))
    weight = torch.eye(d) * 4.0
    rows = evaluate_quantized({"a": clip}, weight, torch.zeros(d), ratios=(0.5,), dtypes=("float16", "int8", "int4"))
    by = {r["token_dtype"]: r["vs_float16"]["window_top5"]["mean"] for r in rows}
    assert by["float16"] == 1.0
    assert by["int4"] < 0.5 < by["int8"]


@pytest.mark.parametrize("token_dtype", ["float16", "int8", "int4"])
def test_tokens_read_back_from_a_memory_equal_the_benchmark_path(tmp_path, token_dtype):
    clip, _, _ = class_clip()
    (seg,) = create_compressor("infomerge", ratio=0.25).compress(clip.grid, boundaries=[0, clip.grid.num_frames])
    key = F.normalize(torch.randn(8, generator=torch.Generator().manual_seed(1)), dim=0)
    with TokenMemory(tmp_path / "mem", cap_tokens=10_000, token_dtype=token_dtype) as mem:
        sid = mem.add(seg, key)
    with TokenMemory(tmp_path / "mem", read_only=True) as mem:  # read from the shard on disk
        (back,) = mem.get([sid])
    expected = stored_tokens(seg.tokens, token_dtype)
    assert back.tokens.dtype == expected.dtype == torch.float16
    assert torch.equal(back.tokens, expected)
    if token_dtype != "float16":
        assert not torch.equal(expected, seg.tokens.half())  # the quantization is really applied


def test_head_features_cache_round_trip_and_damage(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMVID_CACHE", str(tmp_path / "cache"))
    # the cache key names the checkpoint file; its package (the bench extra) is not needed here
    monkeypatch.setattr("bench.efficientnet.weights_path", lambda: tmp_path / "efficientnet_lite0.pth")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded here")
    where = _cache_file(video, 16)
    assert where.parent == tmp_path / "cache" / "features" and where != _cache_file(video, 32)
    assert _load_cached(where) is None
    clip, _, _ = class_clip(frames=8)
    _save_cached(where, clip)
    back = _load_cached(where)
    assert torch.equal(back.grid.tokens, clip.grid.tokens) and torch.equal(back.early, clip.early)
    assert torch.equal(back.grid.timestamps, clip.grid.timestamps)
    where.write_bytes(b"damaged")
    assert _load_cached(where) is None  # recomputed by load_clips, never an error


@pytest.fixture
def one_thread():
    """The memory's re-merges are many small tensor ops; with two threads on a shared 2-core
    machine each op waits on the other thread (seconds per run instead of a fraction)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def needle_stream() -> dict:
    """6 minutes at 1 fps of a near-static 6 x 6 x 64 scene with two distinct needles."""
    gen = torch.Generator().manual_seed(0)
    scene = torch.randn(6, 6, 64, generator=gen)
    base = scene + 0.05 * torch.randn(30, 6, 6, 64, generator=gen)
    heads = F.normalize(torch.randn(30, 16, generator=gen), dim=-1)
    needles = {
        f"n{i}": (torch.randn(6, 6, 64, generator=gen) * 3, F.normalize(torch.randn(16, generator=gen), dim=0))
        for i in range(2)
    }
    stream = build_stream(base, heads, needles, hours=0.1, static_every=120, static_seconds=20)
    assert all(0 <= a < b <= 360 for a, b in stream["needles"].values())  # both needles inside the stream
    return stream


def test_needles_per_dtype_under_a_token_cap_and_a_byte_cap(tmp_path, one_thread):
    stream = needle_stream()
    raw = int(0.02 * 360 * 36)
    out = run_needles_dtypes(stream, dtypes=("float16", "int8"), cap_fraction=0.02)
    runs = {(r["cap_unit"], r["token_dtype"]): r for r in out["runs"]}
    assert list(runs) == [("tokens", "float16"), ("tokens", "int8"), ("bytes", "float16"), ("bytes", "int8")]
    f16_bytes = MemoryConfig(cap_tokens=1).token_bytes(64)
    int8_bytes = MemoryConfig(cap_tokens=1, token_dtype="int8").token_bytes(64)
    assert runs["tokens", "int8"]["cap_tokens"] == runs["tokens", "float16"]["cap_tokens"] == raw
    assert runs["bytes", "float16"]["cap_tokens"] == raw
    assert runs["bytes", "int8"]["cap_bytes"] == raw * f16_bytes
    assert runs["bytes", "int8"]["cap_tokens"] == raw * f16_bytes // int8_bytes > raw
    for r in runs.values():
        assert r["max_tokens_held"] <= r["cap_tokens"] and r["tokens_held"] <= r["cap_tokens"]
        assert r["needles_total"] == 2 and 0 <= r["needles_survived"] <= 2
        assert 0 < r["shard_bytes"] <= r["disk_bytes"]
    held = runs["tokens", "int8"]["tokens_held"]
    assert runs["tokens", "int8"]["bytes_held"] == held * int8_bytes
    assert runs["tokens", "int8"]["shard_bytes"] < runs["tokens", "float16"]["shard_bytes"]
    assert runs["bytes", "int8"]["tokens_held"] > runs["bytes", "float16"]["tokens_held"]  # more tokens, same bytes
    assert runs["bytes", "int8"]["bytes_held"] <= runs["bytes", "int8"]["cap_bytes"]
    with pytest.raises(ConfigError, match="cap_unit"):
        run_needles(stream, root=tmp_path, cap_unit="frames")


def test_the_quantized_part_prints_and_writes_both_measurements(one_thread):
    """``streamvid bench quantized``: the readout table with its findings, then the needle table,
    and one markdown page with both sections (results from the two measurements above)."""
    from bench.parts import get_part
    from bench.quantized import summary

    clip, weight, bias = class_clip()
    rows = evaluate_quantized({"a": clip}, weight, bias, ratios=(0.25,), dtypes=("float16", "int8"))
    readout = {"clips": {"a": list(clip.grid.tokens.shape)}, "ratios": [0.25], "dtypes": ["float16", "int8"],
               "method": "infomerge", "rows": rows}  # fmt: skip
    needles = run_needles_dtypes(needle_stream(), dtypes=("float16", "int8"), cap_fraction=0.02)
    result = {"readout": readout, "needles": needles}
    lines = summary(result)
    assert "int8" in lines[0] and any("int8 at 25%" in line for line in lines[1:-1])
    assert "tokens held / cap" in lines[-1] and lines[-1].count("\n") == 5  # header, rule, 4 runs
    page = get_part("quantized").markdown(result, "images")
    assert "## Class-query readout of the stored tokens" in page and "## Needles under a 2% cap" in page
