"""LLaVA-OneVision (transformers ``LlavaOnevisionForConditionalGeneration``).

Video path: SigLIP tower -> projector -> the model's 2x2 bilinear pooling -> [T, h, w, D];
one ``image_newline`` embedding closes the visual block; positions are contiguous (1-D RoPE).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from streamvid.models.base import Capabilities, Prefill, SegmentLike, VideoLLM
from streamvid.models.preprocess import normalize, resize_frames
from streamvid.types import CompressedSegment, TokenGrid

__all__ = ["LlavaOneVision"]


class LlavaOneVision(VideoLLM):
    capabilities = Capabilities(
        positions="1d",
        video_end_embedding=True,
        frames_per_token_step=1,
        saliency="SigLIP pooling-head attention when the tower has a head, else vision-feature norm",
    )
    model_class = "LlavaOnevisionForConditionalGeneration"

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

    def _encode(self, frames: torch.Tensor, times: torch.Tensor, batch_size: int) -> TokenGrid:
        cfg = self.model.config
        tokens, saliency = [], []
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
            saliency.append(self._saliency(out.last_hidden_state, side))
        return TokenGrid(torch.cat(tokens), times, torch.cat(saliency), saliency_source=self.saliency_source)

    @property
    def saliency_source(self) -> str:
        vision = getattr(self.model.model.vision_tower, "vision_model", None)
        return "siglip-head" if getattr(vision, "head", None) is not None else "vision-feature-norm"

    def _saliency(self, hidden: torch.Tensor, side: int) -> torch.Tensor:
        """[B, P, C] last vision states -> [B, side, side] saliency on the pooled grid."""
        vision = getattr(self.model.model.vision_tower, "vision_model", None)
        head = getattr(vision, "head", None)
        if head is not None:  # SigLIP attention-pooling head: attention of its probe over patches
            probe = head.probe.repeat(hidden.shape[0], 1, 1)
            _, weights = head.attention(probe, hidden, hidden, need_weights=True)
            score = weights[:, 0]  # (B, P)
        else:
            score = hidden.float().norm(dim=-1)  # (B, P)
        grid = int(round(score.shape[1] ** 0.5))
        score = score[:, -grid * grid :].reshape(-1, 1, grid, grid).float()
        return F.interpolate(score, size=(side, side), mode="bilinear")[:, 0]

    def visual_block_length(self, segments: Sequence[SegmentLike], timestamps: bool = True) -> int:
        text = sum(len(self.timestamp_ids(s)) for s in segments) if timestamps else 0
        return text + sum(s.budget for s in segments) + 1  # + the closing image_newline

    def _assemble(
        self, before: list[int], after: list[int], segments: Sequence[CompressedSegment], timestamps: bool
    ) -> Prefill:
        parts = [self.embed(before)]
        spans, cursor, visual = [], len(before), 0
        for seg in segments:
            if timestamps:
                ts = self.timestamp_ids(seg)
                parts.append(self.embed(ts))
                cursor += len(ts)
            parts.append(seg.tokens.to(self.device, self.dtype))
            spans.append((cursor, cursor + seg.budget))
            cursor += seg.budget
            visual += seg.budget
        parts.append(self.model.model.image_newline[None].to(self.dtype))  # ends the visual block
        parts.append(self.embed(after))
        embeds = torch.cat(parts)[None]  # (1, L, H)
        length = embeds.shape[1]
        return Prefill(
            inputs_embeds=embeds,
            attention_mask=torch.ones(1, length, dtype=torch.long, device=self.device),
            position_ids=torch.arange(length, device=self.device)[None],
            visual_tokens=visual + 1,
            segment_spans=spans,
        )
