"""LLaVA-Video checkpoints (llava-hf/LLaVA-Video-7B-Qwen2-hf and its siblings) load with the
LLaVA-OneVision adapter: their config says ``model_type: llava_onevision``. A tiny checkpoint of
that shape (features from the second-to-last tower layer, an odd patch grid pooled 2 x 2)."""

import numpy as np
import pytest
import torch

from bench.random_models import tiny_llava_video
from streamvid import create_compressor
from streamvid.models import load_adapter
from streamvid.models.llava_onevision import LlavaOneVision


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    path = tiny_llava_video(tmp_path_factory.mktemp("llava_video") / "ckpt")
    return load_adapter(str(path), device="cpu", dtype=torch.float32)


def test_llava_video_loads_with_the_onevision_adapter_and_keep_all_is_the_models_own_forward(llm):
    assert isinstance(llm, LlavaOneVision)
    rng = np.random.default_rng(0)
    frames, times = rng.integers(0, 256, (4, 70, 70, 3), dtype=np.uint8), np.arange(4) * 0.5
    grid = llm.encode(frames, times)
    assert grid.tokens.shape == (4, 3, 3, 64)  # 5 x 5 patches pooled to ceil(5 / 2) = 3 per side
    (seg,) = create_compressor("keep_all").compress(grid)
    prefill = llm.build_prefill("What happens in the video?", [seg], timestamps=False)
    before, after = llm.prompt_parts("What happens in the video?")
    cfg = llm.model.config
    ids = torch.tensor([before + [cfg.video_token_index] * (seg.budget + 1) + after])  # + the newline
    pixels = llm.pixel_values(torch.from_numpy(frames))[None]
    with torch.inference_mode():
        reference = llm.model(input_ids=ids, pixel_values_videos=pixels).logits
        ours = llm.model(
            inputs_embeds=prefill.inputs_embeds,
            attention_mask=prefill.attention_mask,
            position_ids=prefill.position_ids,
        ).logits
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-4)
    generated = llm.generate(prefill, max_new_tokens=6)
    with torch.inference_mode():
        hf = llm.model.generate(input_ids=ids, pixel_values_videos=pixels, max_new_tokens=6, do_sample=False)
    expected = hf[0, ids.shape[1] :].tolist()
    assert generated.token_ids and generated.token_ids == expected[: len(generated.token_ids)]
    # compressed: the kept tokens at their positions in the uncompressed layout, the newline last
    (small,) = create_compressor("infomerge", ratio=0.25).compress(grid, boundaries=[0, 4])
    pre = llm.build_prefill("What happens in the video?", [small], timestamps=False)
    h, w = small.grid_size
    flat = (small.positions[:, 0] * h + small.positions[:, 1]) * w + small.positions[:, 2]
    a, b = pre.segment_spans[0]
    assert torch.equal(pre.position_ids[0, a:b], len(before) + flat)
    assert int(pre.position_ids[0, b]) == len(before) + seg.budget  # the newline after the full block
