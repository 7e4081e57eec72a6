"""Random-weight models built from configs: nothing here downloads anything.

Two kinds, in one place:

- tiny checkpoints saved to disk the way real ones are (``tiny_llava``, ``tiny_qwen``,
  ``tiny_siglip``, ``tiny_siglip_vision``): loaded back through the real ``from_pretrained`` path by the
  tests, the examples' tests and the small benchmarks;
- shape-true models (``qwen2_shape``, ``build_llava_with_lm``, ``siglip_so400m_encoder``):
  their outputs are meaningless but their cost is exactly the real model's cost, for the
  speed benchmarks.

The tokenizer is a byte-level BPE trained in memory on a few sentences, wrapped as a
Qwen2 tokenizer with the specials both model families use and a ChatML template.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from streamvid.errors import ConfigError
from streamvid.models.base import CHATML

__all__ = [
    "CORPUS",
    "SPECIALS",
    "bpe_tokenizer",
    "build_llava_with_lm",
    "build_qwen3_with_lm",
    "qwen3_shape",
    "make_tokenizer",
    "qwen2_shape",
    "siglip_so400m_encoder",
    "tiny_llava",
    "tiny_llava_video",
    "tiny_qwen",
    "tiny_qwen3_5",
    "tiny_qwen3_vl",
    "tiny_siglip",
    "tiny_siglip_vision",
]


def bpe_tokenizer(corpus: Sequence[str], specials: Sequence[str], vocab_size: int = 400) -> Any:
    """A byte-level BPE trained in memory, wrapped as a Qwen2 tokenizer (EOS ``<|im_end|>``,
    ChatML template). ``specials`` must include ``<|im_start|>`` and ``<|im_end|>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(list(corpus), trainer)
    pad = "<|endoftext|>" if "<|endoftext|>" in specials else None
    tok = Qwen2Tokenizer(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token=pad, unk_token=None, bos_token=None)
    tok.chat_template = CHATML
    return tok


SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<image>",
    "<video>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
CORPUS = [
    "What happens in the video? A person walks across the plaza and a car drives by.",
    "When does the red square appear? It appears at 00:00:12 and leaves at 00:00:20.",
    "Describe the scene: a street, bikes, trees, a bright sky, people talking.",
] * 20


def make_tokenizer() -> Any:
    """The tokenizer of the tiny checkpoints."""
    return bpe_tokenizer(CORPUS, SPECIALS)


def _text_config(vocab: int, eos: int) -> dict:
    return dict(
        vocab_size=vocab,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=None,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )


def tiny_llava(root: Path) -> Path:
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    torch.manual_seed(0)
    tok = make_tokenizer()
    vocab = len(tok)
    config = LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", **_text_config(vocab, tok.eos_token_id)},
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,  # three, so the late attention map is a layer of its own
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
            vision_use_head=False,  # as real LLaVA-OneVision checkpoints ship their tower
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(root)
    tok.save_pretrained(root)
    (root / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255})
    )
    return root


def tiny_llava_video(root: Path) -> Path:
    """A LLaVA-Video-shaped checkpoint (llava-hf/LLaVA-Video-7B-Qwen2-hf: model_type
    ``llava_onevision``, SigLIP tower without its head, features from the second-to-last layer,
    an odd patch grid (27 x 27 there, 5 x 5 here) pooled 2 x 2 to ceil(27 / 2) = 14 (here 3))."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    torch.manual_seed(0)
    tok = make_tokenizer()
    config = LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", **_text_config(len(tok), tok.eos_token_id)},
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=70,
            patch_size=14,
            vision_use_head=False,
        ),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(root)
    tok.save_pretrained(root)
    (root / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255})
    )
    return root


def tiny_qwen(root: Path) -> Path:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    tok = make_tokenizer()
    vocab = len(tok)
    config = Qwen2_5_VLConfig(
        text_config={
            "model_type": "qwen2_5_vl_text",
            **_text_config(vocab, tok.eos_token_id),
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        },
        vision_config=dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        ),
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(root)
    tok.save_pretrained(root)
    (root / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "min_pixels": 56 * 56,
                "max_pixels": 112 * 112,
                "patch_size": 14,
                "merge_size": 2,
                "temporal_patch_size": 2,
            }
        )
    )
    return root


def _qwen3_ids(tok: Any) -> dict[str, int]:
    return dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )


def _qwen3_vision(out: int, **extra: Any) -> dict[str, Any]:
    return dict(
        depth=3,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=out,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=64,
        **extra,
    )


def _save_qwen3(model: Any, tok: Any, root: Path) -> Path:
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(root)
    tok.save_pretrained(root)
    (root / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_mean": [0.5, 0.5, 0.5],
                "image_std": [0.5, 0.5, 0.5],
                "min_pixels": 64 * 64,
                "max_pixels": 128 * 128,
                "patch_size": 16,
                "merge_size": 2,
                "temporal_patch_size": 2,
            }
        )
    )
    return root


def tiny_qwen3_vl(root: Path) -> Path:
    """Qwen3-VL with DeepStack from two of its three vision layers (into LM layers 0 and 1)."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(0)
    tok = make_tokenizer()
    text = _text_config(len(tok), tok.eos_token_id)
    config = Qwen3VLConfig(
        text_config={
            "model_type": "qwen3_vl_text",
            **text,
            "head_dim": 16,
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
                "rope_theta": 10000.0,
            },
        },
        vision_config=_qwen3_vision(text["hidden_size"], deepstack_visual_indexes=[0, 1]),
        **_qwen3_ids(tok),
    )
    return _save_qwen3(Qwen3VLForConditionalGeneration(config).eval(), tok, root)


def tiny_qwen3_5(root: Path) -> Path:
    """Qwen3.5 with hybrid attention: 3 Gated-DeltaNet (linear) layers and 1 full-attention layer."""
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration

    torch.manual_seed(0)
    tok = make_tokenizer()
    text = {**_text_config(len(tok), tok.eos_token_id), "num_hidden_layers": 4}
    config = Qwen3_5Config(
        text_config={
            "model_type": "qwen3_5_text",
            **text,
            "head_dim": 16,
            "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 16,
            "linear_value_head_dim": 16,
            "linear_num_key_heads": 2,
            "linear_num_value_heads": 4,
            "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
            "rope_parameters": {
                "rope_type": "default",
                "mrope_section": [1, 1, 2],
                "mrope_interleaved": True,
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
            },
        },
        vision_config=_qwen3_vision(text["hidden_size"]),
        **_qwen3_ids(tok),
    )
    return _save_qwen3(Qwen3_5ForConditionalGeneration(config).eval(), tok, root)


def tiny_siglip(root: Path) -> Path:
    from transformers import SiglipConfig, SiglipModel

    torch.manual_seed(0)
    tok = make_tokenizer()
    config = SiglipConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=None,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
        ),
    )
    SiglipModel(config).eval().save_pretrained(root)
    tok.save_pretrained(root)
    (root / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return root


def tiny_siglip_vision(
    root: Path, *, hidden_size: int = 32, heads: int = 2, use_head: bool = True, seed: int = 1
) -> Path:
    """A SigLIP vision tower saved as a checkpoint, with its attention-pooling head by default:
    the stand-in for google/siglip-so400m-patch14-384 as the source of a re-attached saliency
    head (the defaults fit ``tiny_llava``'s tower)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    config = SiglipVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=heads,
        image_size=56,
        patch_size=14,
        vision_use_head=use_head,
    )
    SiglipVisionModel(config).eval().save_pretrained(root)
    return root


# -- shape-true models for the speed benchmarks ------------------------------------------


def qwen2_shape(size: str) -> dict[str, Any]:
    if size == "0.5b":
        return dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
        )
    if size == "7b":
        return dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
        )
    raise ConfigError(f"unknown LM size {size!r}; use '0.5b' or '7b'")


def build_llava_with_lm(size: str, device: torch.device, dtype: torch.dtype):
    """A LLaVA-OneVision adapter whose LM has the given Qwen2 shape (tiny vision tower: the
    benchmark feeds visual tokens directly)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    from streamvid.models.llava_onevision import LlavaOneVision

    tokenizer = bpe_tokenizer(
        ["What happens in the video? When does the car stop?"] * 10,
        ["<|im_start|>", "<|im_end|>", "<video>"],
        vocab_size=300,
    )
    config = LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", **qwen2_shape(size), "max_position_embeddings": 32768},
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            vision_use_head=False,
        ),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
    )
    with torch.device(device):
        model = LlavaOnevisionForConditionalGeneration(config).to(dtype)
    return LlavaOneVision(model, tokenizer, {}, saliency_head=None)


def qwen3_shape(family: str) -> dict[str, Any]:
    """Text-model shapes for the shape-true Qwen3-family benchmarks, at 4 decoder layers.

    ``qwen3_vl``: Qwen3-VL-8B's language model (Qwen3-8B: hidden 4096, MLP 12288, 32 query and
    8 key/value heads of 128, 36 layers there). ``qwen3_5``: transformers' default Qwen3.5 text
    shape (hidden 4096, MLP 12288, 16 query and 4 key/value heads of 256; Gated-DeltaNet with 16
    key and 32 value heads of 128; full attention every 4th layer). Four layers are one hybrid
    period (3 linear + 1 full), so both rows compare per-layer cost at the same depth.
    """
    if family == "qwen3_vl":
        return dict(
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=4,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
        )
    if family == "qwen3_5":
        return dict(
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=4,
            num_attention_heads=16,
            num_key_value_heads=4,
            head_dim=256,
            linear_conv_kernel_dim=4,
            linear_key_head_dim=128,
            linear_value_head_dim=128,
            linear_num_key_heads=16,
            linear_num_value_heads=32,
            layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
        )
    raise ConfigError(f"unknown Qwen3 family {family!r}; use 'qwen3_vl' or 'qwen3_5'")


def build_qwen3_with_lm(family: str, device: torch.device, dtype: torch.dtype):
    """A Qwen3-VL or Qwen3.5 adapter whose LM has the shape of :func:`qwen3_shape` (tiny vision
    tower with Qwen3-VL's 3 DeepStack levels: the benchmark feeds visual tokens directly). The
    vocabulary is the in-memory tokenizer's: the LM head runs on one position in a prefill, so
    the real 151k-248k vocabulary would only cost memory."""
    import transformers

    from streamvid.models.qwen3_5 import Qwen35
    from streamvid.models.qwen3_vl import Qwen3VL

    tok = bpe_tokenizer(
        ["What happens in the video? When does the car stop? <0.5 seconds> <12.0 seconds>"] * 10,
        ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>"],
        vocab_size=300,
    )
    shape = qwen3_shape(family)
    rope = {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True, "rope_theta": 5e6}
    text = {"vocab_size": len(tok), "max_position_embeddings": 32768, "eos_token_id": tok.eos_token_id, **shape}
    if family == "qwen3_5":
        rope = {**rope, "mrope_section": [11, 11, 10], "partial_rotary_factor": 0.25}
    deep = {"deepstack_visual_indexes": [0, 1, 2]} if family == "qwen3_vl" else {}
    config_cls, model_cls, adapter = (
        (transformers.Qwen3VLConfig, transformers.Qwen3VLForConditionalGeneration, Qwen3VL)
        if family == "qwen3_vl"
        else (transformers.Qwen3_5Config, transformers.Qwen3_5ForConditionalGeneration, Qwen35)
    )
    config = config_cls(
        text_config={"model_type": f"{family}_text", **text, "rope_parameters": rope},
        vision_config=_qwen3_vision(shape["hidden_size"], **deep),
        **_qwen3_ids(tok),
    )
    with torch.device(device):
        model = model_cls(config).to(dtype)
    return adapter(model, tok, {})


def siglip_so400m_encoder(llm_dim: int, device: torch.device, dtype: torch.dtype):
    """SigLIP-so400m/14 @ 384 vision tower + 2-layer GELU projector, random weights."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        image_size=384,
        patch_size=14,
    )
    tower = SiglipVisionModel(config).to(device=device, dtype=dtype).eval()
    projector = torch.nn.Sequential(
        torch.nn.Linear(1152, llm_dim), torch.nn.GELU(), torch.nn.Linear(llm_dim, llm_dim)
    ).to(device=device, dtype=dtype)

    @torch.inference_mode()
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        """pixels: [B, 3, 384, 384] -> tokens [B, 14, 14, D]."""
        hidden = tower(pixel_values=pixels).last_hidden_state  # (B, 729, 1152)
        x = projector(hidden)  # (B, 729, D)
        b = x.shape[0]
        x = x.reshape(b, 27, 27, llm_dim).permute(0, 3, 1, 2)  # (B, D, 27, 27)
        x = torch.nn.functional.interpolate(x, size=(14, 14), mode="bilinear")  # LLaVA-OV pooling
        return x.permute(0, 2, 3, 1)  # (B, 14, 14, D)

    return encode
