"""Saliency and attention maps from a SigLIP vision tower (see docs/algorithms.md, Saliency).

- :class:`PoolingHead`: SigLIP's attention-pooling head with the post-layernorm in front
  of it, the part LLaVA-OneVision checkpoints ship without. :func:`load_pooling_head`
  reads only those weights from a SigLIP checkpoint (a hub name, cached by the normal
  huggingface cache, or a local directory), strictly, checked against the tower.
- :func:`head_saliency`: the attention of the head's probe over the patches, heads averaged.
- :func:`feature_norm`: the fallback when there is no head.
- :class:`AttentionRecorder`: the attention each patch receives in chosen tower layers
  (heads averaged, then averaged over queries), for the compressors that use it.
- :func:`to_pooled_grid`: a patch map onto the pooled token grid, as the model pools features.

Importing this module does not import transformers.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from streamvid.errors import ConfigError, ShapeError

__all__ = [
    "DEFAULT_SALIENCY_HEAD",
    "AttentionRecorder",
    "PoolingHead",
    "SaliencyHeadError",
    "attention_received",
    "feature_norm",
    "head_saliency",
    "load_pooling_head",
    "resolve_head_source",
    "to_pooled_grid",
]

logger = logging.getLogger(__name__)

# the SigLIP checkpoint LLaVA-OneVision's tower comes from (the official FastVID re-attaches its head)
DEFAULT_SALIENCY_HEAD = "google/siglip-so400m-patch14-384"
_DEFAULT_HEAD_SHAPE = (1152, 16)  # (width, heads) of that checkpoint's vision tower
_OFF = ("none", "off", "")


class SaliencyHeadError(ShapeError):
    """A SigLIP pooling head does not fit the vision tower it is meant for."""


def resolve_head_source(option: str | None, width: int, heads: int) -> str | None:
    """The checkpoint to read a pooling head from, or None for the fallback.

    ``"auto"``: :data:`DEFAULT_SALIENCY_HEAD` when the tower has its shape (every
    LLaVA-OneVision checkpoint), None otherwise (nothing is fetched); ``None``, ``"none"``:
    None; anything else: that hub name or local directory, used as given.
    """
    if option is None:
        return None
    if not isinstance(option, (str, os.PathLike)):
        raise ConfigError(f"saliency_head must be a hub name, a local directory, 'auto' or None, got {option!r}")
    option = os.fspath(option)
    if option.strip().lower() in _OFF:
        return None
    if option == "auto":
        return DEFAULT_SALIENCY_HEAD if (width, heads) == _DEFAULT_HEAD_SHAPE else None
    return option


class PoolingHead(nn.Module):
    """SigLIP's post-layernorm + multihead attention-pooling head, alone.

    Built from the SigLIP vision config of the checkpoint its weights come from.
    """

    def __init__(self, vision_config: Any) -> None:
        super().__init__()
        from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead

        self.post_layernorm = nn.LayerNorm(vision_config.hidden_size, eps=vision_config.layer_norm_eps)
        self.head = SiglipMultiheadAttentionPoolingHead(vision_config)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features: [B, P, C] tower states -> [B, P] probe attention over the patches (fp32)."""
        return head_saliency(self.post_layernorm, self.head, features)


def head_saliency(norm: nn.Module, head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Attention of a SigLIP pooling head's probe over the patches, heads averaged.

    norm: the layernorm applied before the head; head: a ``SiglipMultiheadAttentionPoolingHead``;
    features: [B, P, C] -> [B, P] float32, each row summing to 1. Runs in the head's dtype.
    """
    dtype = head.probe.dtype
    x = norm(features.to(dtype))  # (B, P, C)
    probe = head.probe.expand(x.shape[0], -1, -1)  # (B, 1, C)
    _, weights = head.attention(probe, x, x, need_weights=True, average_attn_weights=True)  # (B, 1, P)
    return weights[:, 0].float()


def feature_norm(features: torch.Tensor) -> torch.Tensor:
    """features: [B, P, C] -> [B, P] L2 norm in fp32 (the saliency used without a head)."""
    return features.float().norm(dim=-1)


def attention_received(weights: torch.Tensor) -> torch.Tensor:
    """weights: [B, H, Q, K] attention probabilities -> [B, K] attention each key receives,
    heads averaged, then averaged over the queries (fp32)."""
    return weights.float().mean(dim=1).mean(dim=1)


def to_pooled_grid(score: torch.Tensor, side: int) -> torch.Tensor:
    """score: [B, P] over the tower's patches -> [B, side, side] on the pooled token grid.

    The last g*g entries are the g x g patch grid (a leading class token, if any, is
    dropped); bilinear resizing, as LLaVA-OneVision pools its features.
    """
    grid = int(round(score.shape[1] ** 0.5))
    if grid * grid > score.shape[1] or grid == 0:
        raise ShapeError(f"a patch map needs a square patch grid, got {score.shape[1]} entries")
    patches = score[:, -grid * grid :].reshape(-1, 1, grid, grid).float()  # (B, 1, g, g)
    if grid == side:
        return patches[:, 0]
    return F.interpolate(patches, size=(side, side), mode="bilinear")[:, 0]


# -- loading a pooling head -----------------------------------------------------------------


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _fetch(source: str, filename: str) -> str | None:
    """A file of ``source`` (local directory or hub name), from the cache first; None when
    it is missing or cannot be fetched (offline, no network: no retry)."""
    if os.path.isdir(source):
        path = os.path.join(source, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(source, filename, local_files_only=True)
    except (OSError, EntryNotFoundError, ValueError):
        pass
    if _hub_offline():
        return None
    try:
        return hf_hub_download(source, filename)
    except (OSError, EntryNotFoundError, ValueError) as err:
        logger.debug("cannot fetch %s from %s: %s", filename, source, err)
        return None


def _vision_config(path: str) -> Any:
    """A SigLIP checkpoint's config.json -> its SiglipVisionConfig (defaults filled in)."""
    from transformers import SiglipVisionConfig

    with open(path) as fh:
        raw = json.load(fh)
    vision = raw.get("vision_config", raw)
    vision = {k: v for k, v in vision.items() if k not in ("model_type", "architectures", "transformers_version")}
    return SiglipVisionConfig(**vision)


def _head_tensors(source: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The post-layernorm and pooling-head tensors of a checkpoint, by their names in
    :class:`PoolingHead` (None and the reason when there are none)."""
    from safetensors import safe_open

    single = _fetch(source, "model.safetensors")
    index = None if single is not None else _fetch(source, "model.safetensors.index.json")
    if single is not None:
        with safe_open(single, "pt") as fh:
            weight_map: dict[str, str] = dict.fromkeys(fh.keys(), "model.safetensors")
    elif index is not None:  # sharded: only the shards holding the head are read
        with open(index) as fh:
            weight_map = json.load(fh)["weight_map"]
    else:
        return None, f"no model.safetensors in {source!r} (offline, unreachable or missing)"
    probes = [k for k in weight_map if k.endswith("head.probe") and "text" not in k]
    if not probes:
        return None, f"{source!r} has no vision pooling head (no head.probe weight)"
    prefix = min(probes, key=len)[: -len("head.probe")]
    wanted = {
        k: k[len(prefix) :]
        for k in weight_map
        if k.startswith(prefix + "head.") or k.startswith(prefix + "post_layernorm.")
    }
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted({weight_map[k] for k in wanted}):
        path = _fetch(source, shard)
        if path is None:
            return None, f"cannot fetch {shard} of {source!r}"
        with safe_open(path, "pt") as fh:
            for key in fh.keys():
                if key in wanted:
                    tensors[wanted[key]] = fh.get_tensor(key)
    return tensors, ""


@functools.lru_cache(maxsize=8)
def _read_head(source: str) -> tuple[Any, dict[str, torch.Tensor] | None, str]:
    """(vision config, tensors, reason) of a checkpoint's head, read once per process."""
    config_path = _fetch(source, "config.json")
    if config_path is None:
        return None, None, f"no config.json in {source!r} (offline, unreachable or missing)"
    tensors, reason = _head_tensors(source)
    return _vision_config(config_path), tensors, reason


def load_pooling_head(source: str, width: int, heads: int) -> tuple[PoolingHead | None, str]:
    """The pooling head of a SigLIP checkpoint, checked against a tower ``width`` wide with ``heads`` heads.

    Returns (head on CPU in fp32, "") or (None, why) when the checkpoint cannot be read or
    has no head (the caller falls back). Only the head's and post-layernorm's weights are
    read, and strictly: a width or head count that differs from the tower's raises
    :class:`SaliencyHeadError`.
    """
    config, tensors, reason = _read_head(source)
    if tensors is None:
        return None, reason
    fits = (
        f"use the SigLIP checkpoint the tower was trained from (a vision tower with hidden_size={width} "
        f"and num_attention_heads={heads}; {DEFAULT_SALIENCY_HEAD} for LLaVA-OneVision), or saliency_head=None"
    )
    probe = tensors.get("head.probe")
    got_width = int(probe.shape[-1]) if probe is not None else config.hidden_size
    if (got_width, config.num_attention_heads) != (width, heads):
        raise SaliencyHeadError(
            f"the saliency head in {source!r} is {got_width} wide with {config.num_attention_heads} heads but the "
            f"vision tower is {width} wide with {heads} heads; {fits}"
        )
    module = PoolingHead(config).float()
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise SaliencyHeadError(
            f"the saliency head in {source!r} does not load into a SigLIP pooling head "
            f"({' '.join(s.strip() for s in first[:2])}); {fits}"
        ) from None
    return module.eval().requires_grad_(False), ""


# -- attention each patch receives ---------------------------------------------------------


class AttentionRecorder:
    """Records the attention each patch receives in chosen layers of a SigLIP-like tower.

    layers: map name -> encoder layer index. While entered, the tower runs with eager
    attention (so its attention modules return weights; the previous implementation is
    restored on exit) and a hook on each chosen layer keeps only the reduced
    [B, P] map (:func:`attention_received`), never the full [B, H, P, P] weights.
    :meth:`pop` returns the maps of the last forward. A layer whose attention returns no
    weights is left out. Use :meth:`for_tower`, which returns None for towers without
    ``encoder.layers[i].self_attn``.
    """

    def __init__(self, tower: nn.Module, attention_modules: Mapping[str, nn.Module]) -> None:
        self.tower = tower
        self.modules = dict(attention_modules)
        self._maps: dict[str, torch.Tensor] = {}
        self._hooks: list[Any] = []
        self._previous: str | None = None

    @classmethod
    def for_tower(cls, tower: nn.Module, layers: Mapping[str, int]) -> AttentionRecorder | None:
        blocks = getattr(getattr(tower, "encoder", None), "layers", None)
        if blocks is None or not hasattr(tower, "set_attn_implementation"):
            return None
        modules = {}
        for name, index in layers.items():
            attention = getattr(blocks[index], "self_attn", None) if -len(blocks) <= index < len(blocks) else None
            if attention is None:
                return None
            modules[name] = attention
        return cls(tower, modules)

    def __enter__(self) -> AttentionRecorder:
        config = self.tower.config
        self._previous = getattr(config, "_attn_implementation", None)
        if self._previous != "eager":
            self.tower.set_attn_implementation("eager")
        for name, module in self.modules.items():
            self._hooks.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self._previous is not None and self._previous != "eager":
            self.tower.set_attn_implementation(self._previous)

    def _hook(self, name: str):
        def record(module: nn.Module, args: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if isinstance(weights, torch.Tensor) and weights.ndim == 4:
                self._maps[name] = attention_received(weights)  # (B, P)

        return record

    def pop(self) -> dict[str, torch.Tensor]:
        """name -> [B, P] of the forward just run (only the layers that returned weights)."""
        maps, self._maps = self._maps, {}
        return maps
