"""Qwen3-VL and Qwen3.5 adapters on tiny random checkpoints saved to disk and loaded back normally."""

import types

import numpy as np
import pytest
import torch
from test_deepstack import _infomerge_reference

from bench.random_models import tiny_qwen3_5, tiny_qwen3_vl
from streamvid import ShapeError, create_compressor
from streamvid.models import load_adapter
from streamvid.models.qwen3_vl import DeepStackPrefill
from streamvid.types import TokenGrid

QUESTION = "What happens in the video?"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3")
    return {"qwen3_vl": tiny_qwen3_vl(root / "qwen3_vl"), "qwen3_5": tiny_qwen3_5(root / "qwen3_5")}


@pytest.fixture(scope="module")
def adapters(checkpoints):
    return {name: load_adapter(str(path), device="cpu", dtype=torch.float32) for name, path in checkpoints.items()}


def frames_for(count=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 56, 84, 3), dtype=np.uint8), np.arange(count) * 0.5


def model_own_inputs(llm, frames, times, question):
    """input_ids and pixel inputs for the model's own forward: the model's video rule, one
    ``<t seconds><|vision_start|>pads<|vision_end|>`` group per temporal frame."""
    cfg = llm.model.config
    pixels, grid = llm.pixel_values(torch.from_numpy(frames))
    gt, gh, gw = grid[0].tolist()
    per_frame = (gh // 2) * (gw // 2)
    before, after = llm.prompt_parts(question)
    ids = list(before)
    for t in range(gt):
        seconds = (times[2 * t] + times[min(2 * t + 1, len(times) - 1)]) / 2  # the processor's mean
        ids += llm._ids(f"<{seconds:.1f} seconds>") + [cfg.vision_start_token_id]
        ids += [cfg.video_token_id] * per_frame + [cfg.vision_end_token_id]
    ids = torch.tensor([ids + after])
    return ids, {
        "pixel_values_videos": pixels,
        "video_grid_thw": grid,
        "mm_token_type_ids": (ids == cfg.video_token_id).int() * 2,
    }


def test_registry_lists_the_adapters_and_their_capabilities(adapters):
    from streamvid.models import adapter_capabilities, adapter_class, list_adapters

    assert {"qwen3_vl", "qwen3_5"} <= set(list_adapters())
    vl, q35 = adapter_class("qwen3_vl"), adapter_class("qwen3_5")
    assert type(adapters["qwen3_vl"]) is vl and type(adapters["qwen3_5"]) is q35
    assert vl.capabilities.positions == q35.capabilities.positions == "mrope"
    caps = adapter_capabilities()
    assert caps["qwen3_vl"].deepstack and not caps["qwen3_5"].deepstack and not caps["qwen2_5_vl"].deepstack
    assert caps["qwen3_vl"].timestamps == caps["qwen3_5"].timestamps == "text"
    assert caps["qwen2_5_vl"].timestamps == "temporal-position" and caps["llava_onevision"].timestamps == "none"
    assert caps["qwen3_5"].attention == "hybrid" and caps["qwen3_vl"].attention == "full"
    assert adapters["qwen3_vl"].deepstack_levels == 2 and adapters["qwen3_5"].deepstack_levels == 0


@pytest.mark.parametrize("name", ["qwen3_vl", "qwen3_5"])
def test_keep_all_prefill_reproduces_the_models_own_forward_and_generation(adapters, name):
    """With every token kept, our layout (frame timestamps, M-RoPE, DeepStack at the visual
    positions) is the model's own: the same logits at every position and the same greedy tokens."""
    llm = adapters[name]
    frames, times = frames_for(7)  # an odd count: the last temporal patch repeats its frame
    grid = llm.encode(frames, times, batch_size=4)
    assert grid.tokens.shape == (4, 2, 3, 64)
    assert grid.timestamps.tolist() == [0.25, 1.25, 2.25, 3.0]
    if name == "qwen3_vl":
        assert grid.deepstack.shape == (2, 4, 2, 3, 64)
    else:
        assert grid.deepstack is None
    (seg,) = create_compressor("keep_all").compress(grid)
    prefill = llm.build_prefill(QUESTION, [seg])
    ids, pixel_inputs = model_own_inputs(llm, frames, times, QUESTION)
    with torch.inference_mode():
        llm.model.model.rope_deltas = None
        reference = llm.model(input_ids=ids, **pixel_inputs).logits
        ours = llm.forward_prefill(prefill, logits_to_keep=0).logits
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    generated = llm.generate(prefill, max_new_tokens=8)
    with torch.inference_mode():
        llm.model.model.rope_deltas = None
        hf = llm.model.generate(input_ids=ids, **pixel_inputs, max_new_tokens=8, do_sample=False)
    expected = hf[0, ids.shape[1] :].tolist()
    assert generated.token_ids == expected[: len(generated.token_ids)] and generated.token_ids
    assert llm.prefill_length(QUESTION, [seg]) == prefill.length


def test_deepstack_reaches_the_language_model_at_the_visual_positions(adapters):
    llm = adapters["qwen3_vl"]
    frames, times = frames_for(6)
    (seg,) = create_compressor("keep_all").compress(llm.encode(frames, times))
    prefill = llm.build_prefill(QUESTION, [seg])
    assert isinstance(prefill, DeepStackPrefill)
    assert int(prefill.visual_mask.sum()) == prefill.visual_tokens == seg.budget
    assert torch.equal(prefill.inputs_embeds[0, prefill.visual_mask[0]], seg.tokens)
    assert torch.equal(prefill.deepstack, seg.deepstack)
    with torch.inference_mode():
        with_deep = llm.forward_prefill(prefill, logits_to_keep=0).logits
        without = llm.forward_prefill(
            DeepStackPrefill(**{**prefill.__dict__, "deepstack": torch.zeros_like(prefill.deepstack)}),
            logits_to_keep=0,
        ).logits
    first_visual = int(torch.nonzero(prefill.visual_mask[0])[0])
    torch.testing.assert_close(with_deep[:, :first_visual], without[:, :first_visual])  # causal: text before
    assert (with_deep[:, first_visual:] - without[:, first_visual:]).abs().max() > 1e-3  # the features count
    # a segment without DeepStack features is refused, never silently run without them
    plain = TokenGrid(seg.tokens.reshape(3, 2, 3, 64), torch.tensor([0.25, 1.25, 2.25], dtype=torch.float64))
    with pytest.raises(ShapeError, match="DeepStack"):
        llm.build_prefill(QUESTION, create_compressor("keep_all").compress(plain))


def test_compressed_layout_has_a_timestamp_per_kept_frame_and_the_models_positions(adapters):
    """At 15%: each frame that keeps tokens is ``<t seconds><|vision_start|>kept<|vision_end|>``
    (frames that keep none are left out), positions are the model's own for the kept frames at
    full size gathered to the representatives, and DeepStack follows the tokens' provenance."""
    llm = adapters["qwen3_vl"]
    cfg = llm.model.config
    frames, _ = frames_for(16, seed=1)
    grid_a = llm.encode(frames, np.arange(16) * 0.5)
    grid_b = llm.encode(frames[::-1].copy(), 20 + np.arange(16) * 0.5)
    comp = create_compressor("infomerge", ratio=0.15)
    segments = comp.compress(grid_b, boundaries=[0, grid_b.num_frames]) + comp.compress(
        grid_a, boundaries=[0, grid_a.num_frames]
    )
    # DeepStack provenance on the real tower's features: the slow reference of the method
    for grid, seg in ((grid_b, segments[0]), (grid_a, segments[1])):
        reference = _infomerge_reference(grid, grid.deepstack, comp)
        h, w = seg.grid_size
        for k, (t, row, col) in enumerate(seg.positions.tolist()):
            torch.testing.assert_close(seg.deepstack[:, k], reference[(t, row * w + col)], rtol=1e-5, atol=1e-5)
    prefill = llm.build_prefill("When does it change?", segments)
    ordered = sorted(segments, key=lambda s: s.start_time)
    before, after = llm.prompt_parts("When does it change?")
    # rebuild the expected token sequence (text ids, -1 for a visual token) and positions
    expected, expected_pos = list(before), [[p] * 3 for p in range(len(before))]
    cursor = len(before)
    kept_frames = 0
    grid_of = {id(segments[0]): grid_b, id(segments[1]): grid_a}
    for seg in ordered:
        h, w = seg.grid_size
        frames_kept = sorted(set(seg.positions[:, 0].tolist()))
        assert len(frames_kept) < seg.frame_count  # some frames keep nothing at 15% and are left out
        for f in frames_kept:
            idx = torch.nonzero(seg.positions[:, 0] == f).flatten()
            seconds = float(seg.times[idx[0]])
            assert seconds == float(grid_of[id(seg)].timestamps[f])  # the frame's own (mean) time
            text = llm._ids(f"<{seconds:.1f} seconds>") + [cfg.vision_start_token_id]
            expected += text
            expected_pos += [[cursor + i] * 3 for i in range(len(text))]
            cursor += len(text)
            for r, c in seg.positions[idx, 1:].tolist():  # the model's rule: t = start, h/w offsets
                expected.append(-1)
                expected_pos.append([cursor, cursor + r, cursor + c])
            cursor += max(h, w)
            expected.append(cfg.vision_end_token_id)
            expected_pos.append([cursor] * 3)
            cursor += 1
            kept_frames += 1
    expected += after
    expected_pos += [[cursor + i] * 3 for i in range(len(after))]
    assert prefill.length == len(expected)
    text_cols = torch.tensor([e >= 0 for e in expected])
    assert torch.equal(prefill.visual_mask[0], ~text_cols)
    embed = llm.embed([e for e in expected if e >= 0])
    assert torch.equal(prefill.inputs_embeds[0, text_cols], embed)
    assert torch.equal(prefill.position_ids[:, 0].T, torch.tensor(expected_pos))
    assert torch.equal(prefill.inputs_embeds[0, ~text_cols], torch.cat([s.tokens for s in ordered]))
    assert torch.equal(prefill.deepstack, torch.cat([s.deepstack for s in ordered], dim=1))
    assert prefill.visual_tokens == sum(s.budget for s in segments) and kept_frames > 2
    assert llm.prefill_length("When does it change?", segments) == prefill.length
    plan = [types.SimpleNamespace(start_time=s.start_time, budget=s.budget) for s in segments]
    assert llm.prefill_length("When does it change?", plan) >= prefill.length  # a bare plan: an upper estimate
    no_times = llm.build_prefill("When does it change?", segments, timestamps=False)
    assert no_times.length == prefill.length - sum(
        len(llm._ids(f"<{float(s.times[s.positions[:, 0] == f][0]):.1f} seconds>"))
        for s in ordered
        for f in set(s.positions[:, 0].tolist())
    )
    # generation with explicit positions continues the prompt the way a full forward reads it
    answer = llm.generate(prefill, max_new_tokens=4)
    assert 1 <= len(answer.token_ids) <= 4


@pytest.mark.parametrize("name", ["qwen3_vl", "qwen3_5"])
def test_cached_generation_matches_a_full_forward_on_a_compressed_prompt(adapters, name):
    """The KV/recurrent cache and the next positions (max + 1 + step) give the tokens that a
    full forward over prompt + generated tokens predicts."""
    llm = adapters[name]
    frames, times = frames_for(8, seed=2)
    segments = create_compressor("infomerge", ratio=0.25).compress(llm.encode(frames, times))
    prefill = llm.build_prefill(QUESTION, segments)
    answer = llm.generate(prefill, max_new_tokens=4)
    ids = answer.token_ids
    embeds = torch.cat([prefill.inputs_embeds, llm.embed(ids[:-1])[None]], dim=1)
    top = int(prefill.position_ids.max())
    extra = torch.arange(top + 1, top + len(ids), dtype=torch.long)[None, None].expand(3, 1, -1)
    full = DeepStackPrefill(
        inputs_embeds=embeds,
        attention_mask=torch.ones(1, embeds.shape[1], dtype=torch.long),
        position_ids=torch.cat([prefill.position_ids, extra], dim=2),
        visual_tokens=prefill.visual_tokens,
        visual_mask=None
        if prefill.visual_mask is None
        else torch.cat([prefill.visual_mask, torch.zeros(1, len(ids) - 1, dtype=torch.bool)], dim=1),
        deepstack=prefill.deepstack,
    )
    with torch.inference_mode():
        logits = llm.forward_prefill(full, logits_to_keep=0).logits[0]
    predicted = logits[prefill.length - 1 :].argmax(dim=-1).tolist()
    assert predicted == ids


@pytest.mark.parametrize("name", ["qwen3_vl", "qwen3_5"])
def test_streamvid_ask_works_with_each_by_local_directory(checkpoints, name, tmp_path):
    """The whole path: ingest (encode, compress, store with DeepStack), retrieve, re-merge, answer."""
    from agent_helpers import color_video
    from typer.testing import CliRunner

    from cli.main import app

    video = color_video(tmp_path / "colors.mp4", [("red", 2.0), ("green", 2.0)], size=(64, 48))
    env = {"STREAMVID_CACHE": str(tmp_path / "cache")}
    args = ["ask", str(video), "What is red?", "--model", str(checkpoints[name]), "--embedder", "none"]
    result = CliRunner().invoke(app, [*args, "--max-new-tokens", "2", "--device", "cpu"], env=env)
    assert result.exit_code == 0, result.output
    assert "segments used:" in result.output
    # and with a visual budget small enough that the segments are re-merged to fit
    result = CliRunner().invoke(
        app, [*args, "--max-new-tokens", "2", "--device", "cpu", "--max-visual-tokens", "40"], env=env
    )
    assert result.exit_code == 0, result.output
