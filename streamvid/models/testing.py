"""Small in-memory pieces for tests and benchmarks that must not download anything."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["CHATML", "bpe_tokenizer"]

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


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
