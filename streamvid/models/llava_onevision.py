"""LLaVA-OneVision (transformers ``LlavaOnevisionForConditionalGeneration``).

Video path: SigLIP tower -> projector -> the model's 2x2 bilinear pooling -> [T, h, w, D];
one ``image_newline`` embedding closes the visual block; 1-D RoPE positions, by default
each kept token's index in the uncompressed layout (see docs/algorithms.md, Positions).

Saliency (see docs/algorithms.md, Saliency): the attention of SigLIP's pooling-head probe
over the patches of the features the model takes (``vision_feature_layer``), after the
head checkpoint's post-layernorm. LLaVA-OneVision checkpoints ship the tower without that
head, so it is read from ``saliency_head`` (default ``"auto"``: google/siglip-so400m-patch14-384
for a so400m-shaped tower) once, through the huggingface cache; a tower that has its own
head uses it (unless ``saliency_head=None``). Without a head (offline and not cached, no head in the checkpoint, turned
off with ``saliency_head=None``) the fallback is the norm of those vision features.
``TokenGrid.saliency_source`` and ``Prefill.saliency_source`` say which ran.

Attention maps (``attention_scores=True``): ``scores["attn_received"]`` is the attention
each patch receives in the last tower layer the model uses, heads averaged and averaged
over queries; ``scores["attn_received_late"]`` the same two layers earlier; both mapped
onto the pooled grid like saliency. The tower runs with eager attention for that encode
(its implementation is restored after); if its attention returns no weights, the maps are
left out.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from streamvid.models.base import POSITION_LAYOUTS, Capabilities, Prefill, SegmentLike, VideoLLM
from streamvid.models.preprocess import normalize, resize_frames
from streamvid.models.saliency import (
    AttentionRecorder,
    PoolingHead,
    feature_norm,
    head_saliency,
    load_pooling_head,
    resolve_head_source,
    to_pooled_grid,
)
from streamvid.types import CompressedSegment, TokenGrid

__all__ = ["LlavaOneVision"]

logger = logging.getLogger(__name__)

LATE_LAYER_OFFSET = 2  # "attn_received_late" is this many layers before the last layer used


class LlavaOneVision(VideoLLM):
    capabilities = Capabilities(
        positions="1d",
        video_end_embedding=True,
        frames_per_token_step=1,
        saliency=(
            "SigLIP pooling-head probe attention (the head re-attached from saliency_head, default "
            "google/siglip-so400m-patch14-384), else the norm of the vision features"
        ),
        position_layouts=POSITION_LAYOUTS,
        score_maps=("attn_received", "attn_received_late"),
    )
    model_class = "LlavaOnevisionForConditionalGeneration"

    @property
    def _tower(self) -> Any:
        return self.model.model.vision_tower

    def _setup_saliency(self, saliency_head: str | None) -> None:
        """Re-attach a pooling head from ``saliency_head``; with ``"auto"``, a tower that has
        its own head uses it, else the default checkpoint when it fits the tower."""
        self.pooling_head: PoolingHead | None = None
        self.saliency_head_source: str | None = None
        self._own_head: tuple[torch.nn.Module, torch.nn.Module] | None = None
        vision = self.model.config.vision_config
        auto = saliency_head == "auto"
        if auto:
            self._own_head = _own_head(self._tower)
            if self._own_head is not None:
                self.saliency_head_source = "vision tower"
                return
        source = resolve_head_source(saliency_head, vision.hidden_size, vision.num_attention_heads)
        if source is None:
            if auto:
                logger.info(
                    "saliency: this vision tower has no pooling head and no default fits its shape; "
                    "using the vision-feature norm (pass saliency_head=... to re-attach one)"
                )
            return  # turned off, or nothing fits
        head, reason = load_pooling_head(source, vision.hidden_size, vision.num_attention_heads)
        if head is None:
            logger.info("saliency: %s; using the vision-feature norm", reason)
            return
        self.pooling_head = head.to(self.device)
        self.saliency_head_source = source

    @property
    def saliency_source(self) -> str:
        has_head = self.pooling_head is not None or self._own_head is not None
        return "siglip-head" if has_head else "vision-feature-norm"

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    def pixel_values(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 [T, H, W, 3] -> [T, 3, S, S] normalised with the checkpoint's own values."""
        cfg = self.processor_config
        x = resize_frames(frames, self.image_size, self.image_size)
        x = normalize(
            x, cfg.get("image_mean", [0.5] * 3), cfg.get("image_std", [0.5] * 3), cfg.get("rescale_factor", 1 / 255)
        )
        return x.to(self.device, self.dtype)

    @property
    def feature_layer(self) -> int:
        """Index into the tower's hidden states of the features the model takes (the last one
        when it concatenates several)."""
        layer = self.model.config.vision_feature_layer
        return int(layer if isinstance(layer, int) else layer[-1])

    def score_layers(self) -> dict[str, int]:
        """Encoder layer of each attention map: the last layer the model uses, and the late one."""
        depth = len(self._tower.encoder.layers)
        last = max(self.feature_layer % (depth + 1) - 1, 0)  # hidden_states[k] is layer k-1's output
        return {"attn_received": last, "attn_received_late": max(last - LATE_LAYER_OFFSET, 0)}

    def _encode(self, frames: torch.Tensor, times: torch.Tensor, batch_size: int, attention_scores: bool) -> TokenGrid:
        cfg = self.model.config
        recorder = AttentionRecorder.for_tower(self._tower, self.score_layers()) if attention_scores else None
        tokens, saliency = [], []
        maps: dict[str, list[torch.Tensor]] = {}
        with recorder if recorder is not None else nullcontext():
            for i in range(0, frames.shape[0], batch_size):
                pixels = self.pixel_values(frames[i : i + batch_size])  # (B, 3, S, S)
                out = self.model.model.get_video_features(
                    pixels[None],
                    vision_feature_layer=cfg.vision_feature_layer,
                    vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                    return_dict=True,
                )
                b = pixels.shape[0]
                feats = out.pooler_output[0, :-1]  # drop the newline: (B * h * w, D)
                side = int(round((feats.shape[0] / b) ** 0.5))
                tokens.append(feats.reshape(b, side, side, -1))
                vision = out.hidden_states[self.feature_layer]  # (B, P, C) what the projector takes
                saliency.append(to_pooled_grid(self._patch_saliency(vision), side))
                if recorder is not None:
                    for name, received in recorder.pop().items():  # (B, P) each
                        maps.setdefault(name, []).append(to_pooled_grid(received, side))
        count = len(tokens)
        scores = {name: torch.cat(parts) for name, parts in maps.items() if len(parts) == count}
        return TokenGrid(
            torch.cat(tokens), times, torch.cat(saliency), saliency_source=self.saliency_source, scores=scores
        )

    def _patch_saliency(self, vision: torch.Tensor) -> torch.Tensor:
        """[B, P, C] vision features -> [B, P] saliency (fp32)."""
        if self._own_head is not None:
            return head_saliency(self._own_head[0], self._own_head[1], vision)
        if self.pooling_head is not None:
            return self.pooling_head(vision)
        return feature_norm(vision)

    def visual_block_length(self, segments: Sequence[SegmentLike], timestamps: bool = True) -> int:
        text = sum(len(self.timestamp_ids(s)) for s in segments) if timestamps else 0
        return text + sum(s.budget for s in segments) + 1  # + the closing image_newline

    def _assemble(
        self,
        before: list[int],
        after: list[int],
        segments: Sequence[CompressedSegment],
        timestamps: bool,
        position_layout: str,
    ) -> Prefill:
        dev = self.device
        parts = [self.embed(before)]
        # positions in the uncompressed layout: each segment at full length after its time text
        original = [torch.arange(len(before), device=dev)]
        spans, cursor, full, visual = [], len(before), len(before), 0
        for seg in segments:
            if timestamps:
                ts = self.timestamp_ids(seg)
                parts.append(self.embed(ts))
                original.append(torch.arange(full, full + len(ts), device=dev))
                cursor += len(ts)
                full += len(ts)
            parts.append(seg.tokens.to(dev, self.dtype))
            h, w = seg.grid_size
            pos = seg.positions.to(dev)
            original.append(full + (pos[:, 0] * h + pos[:, 1]) * w + pos[:, 2])  # flat index t*N + p
            spans.append((cursor, cursor + seg.budget))
            cursor += seg.budget
            full += seg.original_tokens
            visual += seg.budget
        parts.append(self.model.model.image_newline[None].to(self.dtype))  # ends the visual block
        parts.append(self.embed(after))
        original.append(torch.arange(full, full + 1 + len(after), device=dev))
        embeds = torch.cat(parts)[None]  # (1, L, H)
        length = embeds.shape[1]
        if position_layout == "original":
            positions = torch.cat(original).long()[None]  # (1, L)
        else:
            positions = torch.arange(length, device=dev)[None]
        return Prefill(
            inputs_embeds=embeds,
            attention_mask=torch.ones(1, length, dtype=torch.long, device=dev),
            position_ids=positions,
            visual_tokens=visual + 1,
            segment_spans=spans,
            position_layout=position_layout,
        )


def _own_head(tower: Any) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(post-layernorm, pooling head) of a tower that ships its head, else None."""
    vision = getattr(tower, "vision_model", tower)  # older transformers nest the modules one level down
    head = getattr(vision, "head", None)
    norm = getattr(vision, "post_layernorm", None)
    if head is None or norm is None or not hasattr(head, "probe"):
        return None
    return norm, head
