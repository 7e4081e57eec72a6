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
    "make_tokenizer",
    "qwen2_shape",
    "siglip_so400m_encoder",
    "tiny_llava",
    "tiny_qwen",
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
