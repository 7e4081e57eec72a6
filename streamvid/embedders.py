"""Retrieval embedders: frames and questions into one vector space for the memory's keys.

An embedder has ``dim``, ``embed_frames(frames [K, H, W, 3] uint8) -> [K, dim]`` and
``embed_text(texts) -> [n, dim]``, both unit-normalised. A segment's key is the
normalised mean of a few key frames' embeddings (:func:`segment_key`), not of every
frame. ``NoEmbedder`` ("none") gives constant keys: retrieval falls back to recency.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from streamvid.errors import ConfigError, UnknownNameError
from streamvid.ingest.sampler import evenly_spaced
from streamvid.models.base import check_frames, default_device_dtype, read_processor_config
from streamvid.models.preprocess import normalize, resize_frames

__all__ = [
    "Embedder",
    "HFEmbedder",
    "NoEmbedder",
    "load_embedder",
    "segment_key",
    "key_frame_indices",
    "DEFAULT_EMBEDDER",
]

DEFAULT_EMBEDDER = "google/siglip-base-patch16-224"


@runtime_checkable
class Embedder(Protocol):
    dim: int
    recency_only: bool

    def embed_frames(self, frames: Any) -> torch.Tensor: ...

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor: ...


def key_frame_indices(count: int, key_frames: int = 3) -> list[int]:
    """Evenly spread frame indices (first, middle, last for 3)."""
    return evenly_spaced(count, key_frames)


def segment_key(embedder: Embedder, frames: Any, key_frames: int = 3) -> torch.Tensor:
    """Key of a segment: the normalised mean embedding of a few key frames. -> float32 [dim]."""
    frames_t = frames if isinstance(frames, torch.Tensor) else torch.from_numpy(np.asarray(frames))
    picks = key_frame_indices(frames_t.shape[0], key_frames)
    emb = embedder.embed_frames(frames_t[picks])  # (k, dim)
    return F.normalize(emb.float().mean(dim=0), dim=0).cpu()


class NoEmbedder:
    """Constant keys: every segment looks alike, so answers use the newest segments."""

    dim = 1
    recency_only = True

    def embed_frames(self, frames: Any) -> torch.Tensor:
        return torch.ones(len(frames), 1)

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.ones(len(texts), 1)


class HFEmbedder:
    """A CLIP or SigLIP checkpoint on transformers (by hub name or local path).

    Frames are resized and normalised by our own code with the checkpoint's values.
    """

    recency_only = False

    def __init__(self, model: Any, tokenizer: Any, processor_config: dict[str, Any]) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processor_config = processor_config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        vision = model.config.vision_config
        self.image_size = int(vision.image_size)
        self.dim = int(getattr(model.config, "projection_dim", None) or model.config.text_config.hidden_size)
        self.lock = threading.RLock()  # one model, many threads (ingest keys and question queries)
        self._siglip = model.config.model_type.startswith("siglip")

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device: Any = None, dtype: Any = None) -> HFEmbedder:
        from transformers import AutoModel, AutoTokenizer

        dev, dt = default_device_dtype(device, dtype)
        try:
            model = AutoModel.from_pretrained(name_or_path, dtype=dt).to(dev)
            tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        except (OSError, ValueError) as err:  # ValueError: a config transformers does not recognise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(
                f"cannot load the embedder {name_or_path!r} ({first}); pass a local CLIP/SigLIP directory, "
                "a reachable hub name, or embedder='none' for recency-only retrieval"
            ) from None
        if model.config.model_type not in ("siglip", "clip", "siglip2"):
            raise UnknownNameError("embedder model_type", model.config.model_type, ["clip", "siglip", "siglip2"])
        return cls(model, tokenizer, read_processor_config(name_or_path))

    def embed_frames(self, frames: Any) -> torch.Tensor:
        f, _ = check_frames(frames, np.zeros(len(frames)))
        cfg = self.processor_config
        x = resize_frames(f, self.image_size, self.image_size)
        x = normalize(
            x, cfg.get("image_mean", [0.5] * 3), cfg.get("image_std", [0.5] * 3), cfg.get("rescale_factor", 1 / 255)
        )
        with self.lock, torch.inference_mode():
            out = self.model.get_image_features(pixel_values=x.to(self.device, self.dtype))
        out = getattr(out, "pooler_output", out)
        return F.normalize(out.float(), dim=-1).cpu()

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        kwargs: dict[str, Any] = {"padding": "max_length", "max_length": 64} if self._siglip else {"padding": True}
        enc = self.tokenizer(list(texts), truncation=True, return_tensors="pt", **kwargs)
        with self.lock, torch.inference_mode():
            out = self.model.get_text_features(
                **{k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            )
        out = getattr(out, "pooler_output", out)
        return F.normalize(out.float(), dim=-1).cpu()


def load_embedder(name: str | Embedder | None = DEFAULT_EMBEDDER, **kwargs: Any) -> Embedder:
    """'none' -> NoEmbedder; an Embedder -> itself; otherwise a CLIP/SigLIP checkpoint."""
    if name is None or (isinstance(name, str) and name.lower() == "none"):
        return NoEmbedder()
    if not isinstance(name, str):
        return name
    return HFEmbedder.from_pretrained(name, **kwargs)
