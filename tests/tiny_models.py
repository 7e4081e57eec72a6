"""Tiny random-weight Video-LLM checkpoints for tests, saved the way real ones are.

The tokenizer is a byte-level BPE trained in memory on a few sentences, wrapped as
a Qwen2 tokenizer with the specials both model families use and a ChatML template.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

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


def make_tokenizer():
    from streamvid.models.testing import bpe_tokenizer

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
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=56,
            patch_size=14,
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
