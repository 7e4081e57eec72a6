"""Video-LLM adapters on tiny random checkpoints saved to disk and loaded back normally."""

import sys
import threading
import types

import numpy as np
import pytest
import torch

from bench.random_models import tiny_llava, tiny_qwen
from streamvid import BudgetError, ConfigError, EmptyInputError, ShapeError, UnknownNameError, create_compressor
from streamvid.models import list_adapters, load_adapter
from streamvid.models.base import Generation
from streamvid.models.preprocess import qwen_patchify


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {"llava": tiny_llava(root / "llava"), "qwen": tiny_qwen(root / "qwen")}


@pytest.fixture(scope="module")
def adapters(checkpoints):
    return {name: load_adapter(str(path), device="cpu", dtype=torch.float32) for name, path in checkpoints.items()}


def frames_for(name, count=6):
    rng = np.random.default_rng(0)
    shape = (count, 56, 56, 3) if name == "llava" else (count, 56, 84, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8), np.arange(count) * 0.5


def model_own_inputs(llm, name, frames, question, n_visual):
    """input_ids and pixel inputs for the model's own forward, from the same prompt parts."""
    before, after = llm.prompt_parts(question)
    cfg = llm.model.config
    if name == "llava":
        ids = before + [cfg.video_token_index] * (n_visual + 1) + after
        return torch.tensor([ids]), {"pixel_values_videos": llm.pixel_values(torch.from_numpy(frames))[None]}
    ids = torch.tensor(
        [before + [cfg.vision_start_token_id] + [cfg.video_token_id] * n_visual + [cfg.vision_end_token_id] + after]
    )
    pixels, grid = llm.pixel_values(torch.from_numpy(frames))
    return ids, {
        "pixel_values_videos": pixels,
        "video_grid_thw": grid,
        "mm_token_type_ids": (ids == cfg.video_token_id).int() * 2,
        "second_per_grid_ts": torch.tensor([1.0]),  # our segment: temporal tokens 1 s apart
    }


def test_registry_is_lazy_and_typed(tmp_path):
    assert list_adapters() == ["llava_onevision", "qwen2_5_vl", "qwen3_5", "qwen3_vl"]
    code = "import sys, streamvid.models; print('transformers' in sys.modules)"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    from transformers import BertConfig

    BertConfig(
        vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8
    ).save_pretrained(tmp_path)
    with pytest.raises(UnknownNameError, match="llava_onevision, qwen2_5_vl"):
        load_adapter(str(tmp_path))
    with pytest.raises(ConfigError, match="cannot read a model config"):
        load_adapter(str(tmp_path / "missing"))


@pytest.mark.parametrize("name", ["llava", "qwen"])
def test_keep_all_prefill_reproduces_the_models_own_forward_and_generation(adapters, name):
    llm = adapters[name]
    frames, times = frames_for(name)
    grid = llm.encode(frames, times)
    (seg,) = create_compressor("keep_all").compress(grid)
    prefill = llm.build_prefill("What happens in the video?", [seg], timestamps=False)
    ids, pixel_inputs = model_own_inputs(llm, name, frames, "What happens in the video?", seg.budget)
    with torch.inference_mode():
        if hasattr(llm.model.model, "rope_deltas"):
            llm.model.model.rope_deltas = None
        reference = llm.model(input_ids=ids, **pixel_inputs).logits
        ours = llm.model(
            inputs_embeds=prefill.inputs_embeds,
            attention_mask=prefill.attention_mask,
            position_ids=prefill.position_ids,
        ).logits
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    generated = llm.generate(prefill, max_new_tokens=8)
    with torch.inference_mode():
        if hasattr(llm.model.model, "rope_deltas"):
            llm.model.model.rope_deltas = None
        hf = llm.model.generate(input_ids=ids, **pixel_inputs, max_new_tokens=8, do_sample=False)
    expected = hf[0, ids.shape[1] :].tolist()
    assert generated.token_ids == expected[: len(generated.token_ids)]
    assert isinstance(generated, Generation) and generated.prefill_seconds > 0


@pytest.mark.parametrize("name", ["llava", "qwen"])
def test_encode_shapes_and_saliency(adapters, name):
    llm = adapters[name]
    frames, times = frames_for(name, count=5)
    grid = llm.encode(frames, times, batch_size=2)
    if name == "llava":
        assert grid.tokens.shape == (5, 2, 2, 64)
        assert torch.equal(grid.timestamps, torch.from_numpy(times).double())
    else:  # two frames per temporal token, the last one padded
        assert grid.tokens.shape == (3, 2, 3, 64)
        assert grid.timestamps.tolist() == [0.0, 1.0, 2.0]
    assert grid.saliency.shape == grid.tokens.shape[:3] and torch.isfinite(grid.saliency).all()


@pytest.mark.parametrize("name", ["llava", "qwen"])
def test_compressed_prefill_length_positions_and_generation(adapters, name):
    llm = adapters[name]
    frames, _ = frames_for(name, count=16)
    grid_a = llm.encode(frames, np.arange(16) * 0.5)
    grid_b = llm.encode(frames[::-1].copy(), 20 + np.arange(16) * 0.5)
    comp = create_compressor("infomerge", ratio=0.15)
    segments = comp.compress(grid_b, boundaries=[0, grid_b.num_frames]) + comp.compress(
        grid_a, boundaries=[0, grid_a.num_frames]
    )
    before, after = llm.prompt_parts("When does it change?")
    prefill = llm.build_prefill("When does it change?", segments)
    ordered = sorted(segments, key=lambda s: s.start_time)
    ts_len = sum(len(llm.timestamp_ids(s)) for s in ordered)
    kept = sum(s.budget for s in segments)
    extra = 1 if name == "llava" else 2 * len(segments)  # newline, or <start>/<end> per segment
    assert prefill.length == len(before) + len(after) + ts_len + kept + extra
    assert prefill.visual_tokens == kept + (1 if name == "llava" else 0)
    # the planned length is the built length, for real segments and for bare (start, budget) plans
    assert llm.prefill_length("When does it change?", segments) == prefill.length
    plan = [types.SimpleNamespace(start_time=s.start_time, budget=s.budget) for s in segments]
    assert llm.prefill_length("When does it change?", plan) == prefill.length
    assert llm.context_length == 4096
    # segments are laid out in time order, each span holding exactly its tokens
    for (a, b), seg in zip(prefill.segment_spans, ordered):
        assert torch.equal(prefill.inputs_embeds[0, a:b], seg.tokens.to(llm.dtype))
    if name == "llava":  # default "original" positions: tests/test_saliency_positions.py
        assert prefill.position_layout == "original"
        contiguous = llm.build_prefill("When does it change?", segments, position_layout="contiguous")
        assert torch.equal(contiguous.position_ids[0], torch.arange(prefill.length))
        assert torch.equal(contiguous.inputs_embeds, prefill.inputs_embeds)
    else:
        full = llm._assemble(before, after, [_keep_all_like(s) for s in ordered], True, "original")
        # a kept token's position is the full-layout position of its representative
        for (a, b), seg, (fa, _) in zip(prefill.segment_spans, ordered, full.segment_spans):
            h, w = seg.grid_size
            local = (seg.positions[:, 0] * h + seg.positions[:, 1]) * w + seg.positions[:, 2]
            assert torch.equal(prefill.position_ids[:, 0, a:b], full.position_ids[:, 0, fa + local])
    pieces = []
    answer = llm.generate(prefill, max_new_tokens=5, on_text=pieces.append)
    assert 1 <= len(answer.token_ids) <= 5 and "".join(pieces) == answer.text
    sampled = llm.generate(prefill, max_new_tokens=5, do_sample=True, temperature=0.8, top_p=0.9, seed=3)
    again = llm.generate(prefill, max_new_tokens=5, do_sample=True, temperature=0.8, top_p=0.9, seed=3)
    assert sampled.token_ids == again.token_ids


def _keep_all_like(seg):
    """A stand-in with every position of the segment's grid (for the full layout's positions)."""
    t, (h, w) = seg.frame_count, seg.grid_size
    n = t * h * w
    grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    return seg.with_tokens(
        tokens=torch.zeros(n, seg.dim, dtype=seg.tokens.dtype),
        sizes=torch.ones(n, dtype=torch.long),
        positions=grid.reshape(n, 3),
        times=torch.full((n,), seg.start_time, dtype=torch.float64),
    )


def test_bad_input_is_typed(adapters):
    llm = adapters["llava"]
    frames, times = frames_for("llava")
    with pytest.raises(ShapeError, match="uint8"):
        llm.encode(frames.astype(np.float32), times)
    with pytest.raises(ShapeError, match=r"\[T, H, W, 3\]"):
        llm.encode(frames[..., 0], times)
    with pytest.raises(ShapeError, match="one timestamp per frame"):
        llm.encode(frames, times[:2])
    with pytest.raises(EmptyInputError):
        llm.encode(frames[:0], times[:0])
    with pytest.raises(EmptyInputError, match="no video segments"):
        llm.build_prefill("What?", [])
    (seg,) = create_compressor("keep_all").compress(llm.encode(frames, times))
    with pytest.raises(BudgetError, match="prefill budget is 10"):
        llm.build_prefill("What happens?", [seg], max_prefill_tokens=10)
    with pytest.raises(ConfigError, match="empty"):
        llm.build_prefill("  ", [seg])
    wrong = seg.with_tokens(seg.tokens[:, :32], seg.sizes, seg.positions, seg.times)
    with pytest.raises(ShapeError, match="width"):
        llm.build_prefill("What?", [wrong])


def test_multi_turn_history_is_in_the_prompt(adapters):
    llm = adapters["qwen"]
    before, _ = llm.prompt_parts("And then?", history=[("What happens?", "A car passes.")])
    text = llm.tokenizer.decode(before)
    assert "What happens?" in text and "A car passes." in text


def test_qwen_patchify_matches_the_reference_layout():
    x = torch.arange(2 * 3 * 56 * 84, dtype=torch.float32).reshape(2, 3, 56, 84)
    patches, (gt, gh, gw) = qwen_patchify(x, 14, 2, 2)
    assert (gt, gh, gw) == (1, 4, 6) and patches.shape == (24, 3 * 2 * 14 * 14)
    # the first row is the top-left patch of the first merge block, channels then time then pixels
    want = x[:, :, :14, :14].permute(1, 0, 2, 3).reshape(-1)
    assert torch.equal(patches[0], want)
    # the second row is the patch to its right inside the same 2x2 block
    assert torch.equal(patches[1], x[:, :, :14, 14:28].permute(1, 0, 2, 3).reshape(-1))
    # the third row starts the block's second patch row
    assert torch.equal(patches[2], x[:, :, 14:28, :14].permute(1, 0, 2, 3).reshape(-1))


def test_the_adapter_lock_serialises_model_use(adapters):
    """While one thread holds the adapter's lock, another thread's encode waits for it."""
    llm = adapters["llava"]
    frames, times = frames_for("llava", count=2)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (llm.encode(frames, times), done.set()))
    with llm.lock:
        worker.start()
        assert not done.wait(0.5)  # blocked behind the lock we hold
    worker.join(timeout=60)
    assert done.is_set()
