"""Video-LLM adapters, registered lazily by the checkpoint's ``model_type``.

Importing this package does not import transformers; :func:`load_adapter` reads the
checkpoint's config, picks the adapter class by ``model_type`` (never by a
substring of the model name) and imports it then.

>>> from streamvid.models import load_adapter
>>> llm = load_adapter("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")   # or a local directory
>>> grid = llm.encode(frames, timestamps)                             # TokenGrid
>>> prefill = llm.build_prefill("What happens?", segments)            # inputs_embeds, positions
>>> prefill.saliency_source, prefill.position_layout                   # ("siglip-head", "original")
>>> answer = llm.generate(prefill, max_new_tokens=64)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from streamvid.errors import UnknownNameError

if TYPE_CHECKING:
    from streamvid.models.base import Capabilities

__all__ = ["ADAPTERS", "adapter_capabilities", "adapter_class", "list_adapters", "load_adapter"]

# model_type -> "module:Class"
ADAPTERS: dict[str, str] = {
    "llava_onevision": "streamvid.models.llava_onevision:LlavaOneVision",
    "qwen2_5_vl": "streamvid.models.qwen2_5_vl:Qwen25VL",
    "qwen3_5": "streamvid.models.qwen3_5:Qwen35",
    "qwen3_vl": "streamvid.models.qwen3_vl:Qwen3VL",
}


def list_adapters() -> list[str]:
    """Supported checkpoint ``model_type`` values."""
    return sorted(ADAPTERS)


def adapter_capabilities() -> dict[str, Capabilities]:
    """Every adapter's declared :class:`Capabilities`, by ``model_type`` (imports the adapters)."""
    return {name: adapter_class(name).capabilities for name in list_adapters()}


def adapter_class(model_type: str) -> type:
    try:
        target = ADAPTERS[model_type]
    except KeyError:
        raise UnknownNameError("Video-LLM model_type", model_type, ADAPTERS) from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def load_adapter(name_or_path: str, **kwargs: Any):
    """Load a checkpoint (hub name or local path) with the adapter for its ``model_type``.

    kwargs: ``device``, ``dtype``, ``attn_implementation`` (see the adapter's
    ``from_pretrained``) and the adapter options ``saliency_head`` (``"auto"``, a SigLIP hub
    name or local directory, or None for the fallback), ``attention_scores`` (fill the
    attention maps in ``TokenGrid.scores`` on encode) and ``position_layout``
    (``"original"`` or ``"contiguous"``); see ``streamvid.models.base.VideoLLM``.
    """
    from transformers import AutoConfig

    from streamvid.errors import ConfigError

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"cannot read a model config from {name_or_path!r} ({err}); pass a local checkpoint "
            "directory or a hub name that is downloaded or reachable"
        ) from None
    return adapter_class(config.model_type).from_pretrained(name_or_path, config=config, **kwargs)
