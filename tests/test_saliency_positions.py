"""LLaVA-OneVision: re-attached SigLIP saliency head, attention maps, original positions.

Tiny random checkpoints saved to disk; a tiny SigLIP vision tower with a pooling head
stands in for google/siglip-so400m-patch14-384. Offline (conftest sets HF_HUB_OFFLINE).
"""

import logging
import math
import time
import warnings

import numpy as np
import pytest
import torch

from bench.random_models import tiny_llava, tiny_siglip, tiny_siglip_vision
from streamvid import ConfigError, ShapeError, create_compressor
from streamvid.models import load_adapter
from streamvid.models.base import check_position_layout
from streamvid.models.llava_onevision import LlavaOneVision
from streamvid.models.qwen2_5_vl import Qwen25VL
from streamvid.models.saliency import DEFAULT_SALIENCY_HEAD, SaliencyHeadError, resolve_head_source

QUESTION = "When does it change?"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("saliency")
    return {
        "llava": tiny_llava(root / "llava"),
        "head": tiny_siglip_vision(root / "head"),
        "headless": tiny_siglip_vision(root / "headless", use_head=False),
        "wide": tiny_siglip_vision(root / "wide", hidden_size=48),
        "four_heads": tiny_siglip_vision(root / "four_heads", heads=4),
        "siglip": tiny_siglip(root / "siglip"),  # text + vision, saved as google/siglip-* checkpoints are
    }


@pytest.fixture(scope="module")
def plain(paths):
    """The adapter as loaded by default: 'auto' finds no head for this tiny tower."""
    return load_adapter(str(paths["llava"]), device="cpu", dtype=torch.float32)


def variant(llm, **options):
    """Another adapter over the same loaded model, with other options."""
    return LlavaOneVision(llm.model, llm.tokenizer, llm.processor_config, **options)


def frames(count=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 56, 56, 3), dtype=np.uint8), np.arange(count) * 0.5


def tower_states(llm, pixels, **kwargs):
    with torch.inference_mode():
        return llm.model.model.vision_tower(pixels, output_hidden_states=True, **kwargs)


def block_mean(maps):
    """[B, 4, 4] patch maps -> [B, 2, 2] (bilinear halving == mean of each 2x2 block), by loops."""
    b, g, _ = maps.shape
    out = torch.zeros(b, g // 2, g // 2)
    for i in range(b):
        for r in range(g // 2):
            for c in range(g // 2):
                out[i, r, c] = maps[i, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].mean()
    return out


def slow_probe_attention(states, ref):
    """The pooling head's probe attention over patches, from its weights: states [B, P, C] -> [B, P]."""
    head, norm = ref.head, ref.post_layernorm
    c = states.shape[-1]
    heads = ref.config.num_attention_heads
    d = c // heads
    w_q, w_k, _ = head.attention.in_proj_weight.split(c)
    b_q, b_k, _ = head.attention.in_proj_bias.split(c)
    out = torch.zeros(states.shape[:2])
    for i in range(states.shape[0]):
        x = states[i].double()
        x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + norm.eps)
        x = x * norm.weight.double() + norm.bias.double()
        q = head.probe[0, 0].double() @ w_q.double().T + b_q.double()  # (C,)
        k = x @ w_k.double().T + b_k.double()  # (P, C)
        for h in range(heads):
            logits = torch.tensor([float(q[h * d : (h + 1) * d] @ k[p, h * d : (h + 1) * d]) for p in range(len(k))])
            out[i] += torch.softmax(logits / math.sqrt(d), 0).float() / heads
    return out


# -- saliency --------------------------------------------------------------------------------


def test_head_weights_are_loaded_strictly_from_the_configured_source(plain, paths):
    from transformers import SiglipVisionModel

    llm = variant(plain, saliency_head=str(paths["head"]))
    assert llm.saliency_source == "siglip-head" and llm.saliency_head_source == str(paths["head"])
    saved = SiglipVisionModel.from_pretrained(paths["head"]).state_dict()
    ours = llm.pooling_head.state_dict()
    assert set(ours) == {k for k in saved if k.startswith(("head.", "post_layernorm."))}
    for key, value in ours.items():
        assert torch.equal(value, saved[key]), key
    # the LLaVA model itself is untouched
    assert not any(k.startswith("model.vision_tower.head") for k in llm.model.state_dict())


def test_the_head_is_found_in_a_full_siglip_checkpoint(plain, paths):
    from safetensors.torch import load_file

    llm = variant(plain, saliency_head=str(paths["siglip"]))
    saved = load_file(paths["siglip"] / "model.safetensors")
    ours = llm.pooling_head.state_dict()
    assert len(ours) == len([k for k in saved if k.startswith(("vision_model.head.", "vision_model.post_layernorm."))])
    for key, value in ours.items():
        assert torch.equal(value, saved["vision_model." + key]), key


def test_head_saliency_is_the_probe_attention_over_patches(plain, paths):
    from transformers import SiglipVisionModel

    llm = variant(plain, saliency_head=str(paths["head"]))
    clip, times = frames(3)
    grid = llm.encode(clip, times, batch_size=2)
    assert grid.saliency_source == "siglip-head" and grid.saliency.shape == (3, 2, 2)
    states = tower_states(llm, llm.pixel_values(torch.from_numpy(clip))).hidden_states[-1]  # (3, 16, 32)
    ref = SiglipVisionModel.from_pretrained(paths["head"]).eval().requires_grad_(False)
    patch = slow_probe_attention(states, ref)  # (3, 16)
    torch.testing.assert_close(patch.sum(-1), torch.ones(3))
    expected = block_mean(patch.reshape(3, 4, 4))
    torch.testing.assert_close(grid.saliency, expected, atol=1e-6, rtol=1e-5)
    fallback = block_mean(states.float().norm(dim=-1).reshape(3, 4, 4))
    assert not torch.allclose(grid.saliency, fallback)
    # the prefill records which saliency ran
    (seg,) = create_compressor("keep_all").compress(grid)
    assert llm.build_prefill("What?", [seg]).saliency_source == "siglip-head"


def test_a_tower_with_its_own_head_uses_it_unless_turned_off(plain):
    import copy

    from transformers import LlavaOnevisionForConditionalGeneration

    config = copy.deepcopy(plain.model.config)
    config.vision_config.vision_use_head = True
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    llm = LlavaOneVision(model, plain.tokenizer, plain.processor_config)
    assert llm.saliency_source == "siglip-head" and llm.pooling_head is None
    clip, times = frames(2)
    grid = llm.encode(clip, times)
    tower = model.model.vision_tower.requires_grad_(False)
    states = tower_states(llm, llm.pixel_values(torch.from_numpy(clip))).hidden_states[-1]
    expected = block_mean(slow_probe_attention(states, tower).reshape(2, 4, 4))
    torch.testing.assert_close(grid.saliency, expected, atol=1e-6, rtol=1e-5)
    off = LlavaOneVision(model, plain.tokenizer, plain.processor_config, saliency_head=None)
    assert off.saliency_source == "vision-feature-norm"
    assert off.encode(clip, times).saliency_source == "vision-feature-norm"


@pytest.mark.parametrize("source", ["headless", "missing", "hub", None, "none"])
def test_no_head_falls_back_to_the_feature_norm_quietly_and_fast(plain, paths, caplog, source):
    option = {
        "headless": str(paths["headless"]),
        "missing": str(paths["head"].parent / "does-not-exist"),
        "hub": "streamvid-tests/not-in-any-cache",  # offline: must not try the network
        None: None,
        "none": "none",
    }[source]
    caplog.set_level(logging.DEBUG, logger="streamvid")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        llm = variant(plain, saliency_head=option)
        elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    assert not [w for w in caught if "streamvid" in str(w.filename)]
    ours = [r for r in caplog.records if r.name.startswith("streamvid") and r.levelno >= logging.INFO]
    assert len(ours) <= 1 and all(r.levelno < logging.WARNING for r in ours)
    if option is None or option == "none":
        assert not ours  # turned off on purpose: nothing to say
    assert llm.pooling_head is None and llm.saliency_source == "vision-feature-norm"
    clip, times = frames(2)
    grid = llm.encode(clip, times)
    assert grid.saliency_source == "vision-feature-norm"
    states = tower_states(llm, llm.pixel_values(torch.from_numpy(clip))).hidden_states[-1]
    norms = torch.stack([torch.tensor([float(torch.linalg.norm(v)) for v in frame]) for frame in states])
    torch.testing.assert_close(grid.saliency, block_mean(norms.reshape(2, 4, 4)), atol=1e-5, rtol=1e-5)
    (seg,) = create_compressor("keep_all").compress(grid)
    assert llm.build_prefill("What?", [seg]).saliency_source == "vision-feature-norm"


@pytest.mark.parametrize(("name", "want"), [("wide", "48 wide with 2 heads"), ("four_heads", "32 wide with 4 heads")])
def test_a_head_of_another_shape_is_a_typed_error_naming_what_fits(plain, paths, name, want):
    with pytest.raises(SaliencyHeadError, match=want) as err:
        variant(plain, saliency_head=str(paths[name]))
    assert isinstance(err.value, ShapeError)
    message = str(err.value)
    assert "hidden_size=32 and num_attention_heads=2" in message and DEFAULT_SALIENCY_HEAD in message
    assert "\n" not in message


def test_auto_means_the_so400m_head_for_so400m_towers_only():
    assert resolve_head_source("auto", 1152, 16) == DEFAULT_SALIENCY_HEAD
    assert resolve_head_source("auto", 32, 2) is None  # nothing fetched for other towers
    assert resolve_head_source(None, 1152, 16) is None
    assert resolve_head_source("None", 1152, 16) is None
    assert resolve_head_source("some/siglip", 32, 2) == "some/siglip"
    with pytest.raises(ConfigError, match="saliency_head"):
        resolve_head_source(3, 32, 2)
    assert "merged" in Qwen25VL.capabilities.saliency  # Qwen2.5-VL documents its fallback


# -- attention maps --------------------------------------------------------------------------


def test_attention_maps_equal_the_towers_own_attentions(plain):
    llm = variant(plain, saliency_head=None, attention_scores=True)
    tower = llm.model.model.vision_tower
    assert llm.score_layers() == {"attn_received": 2, "attn_received_late": 0}  # 3 layers, features of the last
    clip, times = frames(3)
    grid = llm.encode(clip, times, batch_size=2)
    assert set(grid.scores) == {"attn_received", "attn_received_late"}
    assert tower.config._attn_implementation == "sdpa"  # restored after the encode
    pixels = llm.pixel_values(torch.from_numpy(clip))
    tower.set_attn_implementation("eager")
    try:
        attentions = tower_states(llm, pixels, output_attentions=True).attentions
    finally:
        tower.set_attn_implementation("sdpa")
    for name, layer in (("attn_received", 2), ("attn_received_late", 0)):
        weights = attentions[layer]  # (B, H, P, P)
        b, heads, p, _ = weights.shape
        received = torch.zeros(b, p)
        for i in range(b):
            for k in range(p):
                received[i, k] = sum(float(weights[i, h, q, k]) for h in range(heads) for q in range(p)) / (heads * p)
        got = grid.scores[name]
        assert got.shape == (3, 2, 2) and bool((got >= 0).all())
        torch.testing.assert_close(got, block_mean(received.reshape(b, 4, 4)), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(grid.scores["attn_received"], grid.scores["attn_received_late"])
    # tokens and saliency are those of the normal path
    normal = plain.encode(clip, times)
    assert not normal.scores
    torch.testing.assert_close(grid.tokens, normal.tokens)
    torch.testing.assert_close(grid.saliency, normal.saliency)
    # per call, on an adapter without the option
    assert set(plain.encode(clip, times, attention_scores=True).scores) == set(grid.scores)
    assert not llm.encode(clip, times, attention_scores=False).scores


def test_attention_maps_are_left_out_when_the_tower_gives_no_weights(plain, monkeypatch):
    tower = plain.model.model.vision_tower
    monkeypatch.setattr(tower, "set_attn_implementation", lambda impl: None)  # stuck on sdpa: no weights
    clip, times = frames(2)
    grid = plain.encode(clip, times, attention_scores=True)
    assert grid.scores == {} and grid.saliency.shape == (2, 2, 2)


# -- positions -------------------------------------------------------------------------------


def expected_original_positions(llm, question, segments, timestamps=True):
    """Slow reference: every token's index in the uncompressed layout of the segments."""
    before, after = llm.prompt_parts(question)
    pos = list(range(len(before)))
    cursor = len(before)
    for seg in sorted(segments, key=lambda s: s.start_time):
        ts = llm.timestamp_ids(seg) if timestamps else []
        pos += [cursor + i for i in range(len(ts))]
        cursor += len(ts)
        h, w = seg.grid_size
        for t, row, col in seg.positions.tolist():
            pos.append(cursor + t * h * w + row * w + col)
        cursor += seg.frame_count * h * w
    pos.append(cursor)  # image_newline
    cursor += 1
    pos += [cursor + i for i in range(len(after))]
    return torch.tensor(pos)


def hand_embeds(llm, question, segments):
    before, after = llm.prompt_parts(question)
    parts = [llm.embed(before)]
    for seg in sorted(segments, key=lambda s: s.start_time):
        parts += [llm.embed(llm.timestamp_ids(seg)), seg.tokens.float()]
    parts += [llm.model.model.image_newline[None], llm.embed(after)]
    return torch.cat(parts)[None]


@pytest.fixture(scope="module")
def compressed(plain):
    clip, _ = frames(12, seed=1)
    grid_a = plain.encode(clip, np.arange(12) * 0.5)
    grid_b = plain.encode(clip[::-1].copy(), 20 + np.arange(12) * 0.5)
    comp = create_compressor("infomerge", ratio=0.15)
    return comp.compress(grid_b, boundaries=[0, 12]) + comp.compress(grid_a, boundaries=[0, 12]), grid_a


def test_keep_all_original_equals_contiguous(plain, compressed):
    _, grid = compressed
    (seg,) = create_compressor("keep_all").compress(grid)
    original = plain.build_prefill(QUESTION, [seg])
    contiguous = plain.build_prefill(QUESTION, [seg], position_layout="contiguous")
    assert original.position_layout == "original" and contiguous.position_layout == "contiguous"
    assert torch.equal(original.position_ids, contiguous.position_ids)
    assert torch.equal(original.position_ids[0], torch.arange(original.length))


def test_original_positions_keep_the_gaps_and_match_the_models_own_forward(plain, compressed):
    segments, _ = compressed
    prefill = plain.build_prefill(QUESTION, segments)
    expected = expected_original_positions(plain, QUESTION, segments)
    assert torch.equal(prefill.position_ids[0], expected)
    assert int(torch.diff(expected).max()) > 1  # gaps where tokens were dropped
    full = sum(len(plain.timestamp_ids(s)) + s.original_tokens for s in segments)
    before, after = plain.prompt_parts(QUESTION)
    assert int(expected[-1]) == len(before) + full + 1 + len(after) - 1  # text after follows the full length
    with torch.inference_mode():
        embeds = hand_embeds(plain, QUESTION, segments)
        torch.testing.assert_close(embeds, prefill.inputs_embeds)
        reference = plain.model(inputs_embeds=embeds, position_ids=expected[None]).logits[:, -1]
        ours = plain.run_prefill(prefill).logits[:, -1]
        contiguous = plain.run_prefill(plain.build_prefill(QUESTION, segments, position_layout="contiguous"))
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    assert (contiguous.logits[:, -1] - reference).abs().max() > 1e-4  # the positions matter


def test_generation_continues_from_the_last_original_position(plain, compressed):
    segments, _ = compressed
    prefill = plain.build_prefill(QUESTION, segments)
    expected = expected_original_positions(plain, QUESTION, segments)
    assert int(plain.next_positions(prefill, 0)) == int(expected[-1]) + 1
    answer = plain.generate(prefill, max_new_tokens=6)
    # hand-rolled greedy loop, no cache: every step re-runs the whole sequence
    eos = {plain.tokenizer.eos_token_id, plain.model.generation_config.eos_token_id}
    embeds, pos, ids = hand_embeds(plain, QUESTION, segments), expected[None], []
    with torch.inference_mode():
        for _ in range(6):
            token = int(plain.model(inputs_embeds=embeds, position_ids=pos).logits[0, -1].argmax())
            ids.append(token)
            if token in eos:
                break
            embeds = torch.cat([embeds, plain.embed([token])[None]], dim=1)
            pos = torch.cat([pos, pos[:, -1:] + 1], dim=1)
    assert answer.token_ids == ids


def test_position_layout_is_validated_and_configurable(plain, compressed):
    segments, _ = compressed
    with pytest.raises(ConfigError, match="'original', 'contiguous'.*'gapped'"):
        plain.build_prefill(QUESTION, segments, position_layout="gapped")
    with pytest.raises(ConfigError, match="position_layout"):
        variant(plain, saliency_head=None, position_layout="gapped")
    contiguous = variant(plain, saliency_head=None, position_layout="contiguous")
    prefill = contiguous.build_prefill(QUESTION, segments)
    assert prefill.position_layout == "contiguous"
    assert torch.equal(prefill.position_ids[0], torch.arange(prefill.length))
    # Qwen2.5-VL keeps its gathered M-RoPE positions: "original" only
    assert Qwen25VL.capabilities.position_layouts == ("original",)
    with pytest.raises(ConfigError, match="must be one of 'original', got 'contiguous'"):
        check_position_layout("contiguous", Qwen25VL.capabilities.position_layouts)


def test_without_network_the_hub_is_asked_once_and_never_again(plain, monkeypatch):
    """Not flagged offline but unreachable: one cache look-up, one network try, then the
    fallback; a second adapter in the same process does not ask again."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from streamvid.models import saliency

    calls = []

    def unreachable(repo_id, filename, local_files_only=False, **kwargs):
        calls.append((filename, local_files_only))
        if local_files_only:
            raise LocalEntryNotFoundError("not in the cache")
        raise OSError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    monkeypatch.setattr(saliency, "_hub_offline", lambda: False)
    source = "streamvid-tests/unreachable-once"
    llm = variant(plain, saliency_head=source)
    assert llm.saliency_source == "vision-feature-norm"
    assert calls == [("config.json", True), ("config.json", False)]
    variant(plain, saliency_head=source)
    assert len(calls) == 2
