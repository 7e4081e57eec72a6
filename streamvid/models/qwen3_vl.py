"""Qwen3-VL (transformers ``Qwen3VLForConditionalGeneration``) and what the Qwen3 family shares.

Video path: our own preprocessing (smart resize to multiples of patch * merge = 32, normalise,
patchify two frames per temporal patch; no torchvision, no HF video processor), the vision
tower with its 2x2 merger -> tokens [T/2, h, w, D]. The timestamp of a temporal token is the
mean of its two frames' times, as the model's processor computes it.

DeepStack: the tower also returns, from ``len(deepstack_visual_indexes)`` of its layers, merged
features that the language model adds to its hidden states at the visual positions after each
of its first L layers. ``encode`` puts them in ``TokenGrid.deepstack`` [L, T/2, h, w, D]; every
compressor applies its selections and merges to them exactly as to the tokens, the memory stores
them, and the prefill hands the kept tokens' features to the language model at exactly the kept
visual positions (``visual_pos_masks`` / ``deepstack_visual_embeds`` of its text model, the path
the model's own forward takes). A segment without them is refused for this model (ShapeError).

Layout (docs/algorithms.md, "Positions"): the model's own video rule, per temporal frame
``<{t:.1f} seconds><|vision_start|>tokens<|vision_end|>``. After compression a frame holds its
kept tokens (in raster order) and a frame with none is left out with its time text. Positions:
the model's own ``get_rope_index`` on the layout of the kept frames at full size, gathered to the
kept tokens (a merged token takes its representative's position), so within a frame the spatial
gaps are kept; position ids are always passed with ``inputs_embeds``. ``timestamps=False`` drops
the time texts and keeps the frame markers.

Saliency: this tower has no pooling head; the fallback is the L2 norm of the merged visual
tokens (``saliency_source="merged-token-norm"``). Attention maps are not implemented for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from streamvid.errors import ShapeError
from streamvid.models.base import Capabilities, Prefill, SegmentLike, VideoLLM
from streamvid.models.preprocess import normalize, qwen_patchify, resize_frames, smart_resize
from streamvid.types import CompressedSegment, TokenGrid

__all__ = ["DeepStackPrefill", "Qwen3Family", "Qwen3VL"]

QWEN3_MEAN = [0.5, 0.5, 0.5]
QWEN3_STD = [0.5, 0.5, 0.5]


@dataclass
class DeepStackPrefill(Prefill):
    """A Prefill with the DeepStack features of its visual tokens.

    visual_mask: bool [1, L], True at the visual positions (in order); deepstack: [levels, V, D]
    for those V positions, or None for a model without DeepStack.
    """

    visual_mask: torch.Tensor | None = None
    deepstack: torch.Tensor | None = None


class Qwen3Family(VideoLLM):
    """Preprocessing, frame-timestamp layout and prefill shared by Qwen3-VL and Qwen3.5."""

    model_class: ClassVar[str]
    encode_batch_size = 16

    @property
    def _vision(self) -> Any:
        return self.model.config.vision_config

    @property
    def saliency_source(self) -> str:
        return "merged-token-norm"

    @property
    def deepstack_levels(self) -> int:
        """L, the DeepStack levels this model adds into its first L layers (0 without DeepStack)."""
        return len(getattr(self._vision, "deepstack_visual_indexes", ()) or ()) if self.capabilities.deepstack else 0

    def pixel_values(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [T, H, W, 3] -> (patches [N, C*2*16*16], video_grid_thw [1, 3]); an odd last
        frame is repeated to fill its temporal patch, as the model's processor does."""
        cfg, vis = self.processor_config, self._vision
        patch, merge, temporal = vis.patch_size, vis.spatial_merge_size, vis.temporal_patch_size
        factor = patch * merge
        height, width = smart_resize(
            frames.shape[1],
            frames.shape[2],
            factor,
            cfg.get("min_pixels", 128 * factor * factor),
            cfg.get("max_pixels", 768 * factor * factor),
        )
        x = resize_frames(frames, height, width)
        x = normalize(
            x, cfg.get("image_mean", QWEN3_MEAN), cfg.get("image_std", QWEN3_STD), cfg.get("rescale_factor", 1 / 255)
        )
        if x.shape[0] % temporal:
            x = torch.cat([x, x[-1:].expand(temporal - x.shape[0] % temporal, -1, -1, -1)])
        patches, grid = qwen_patchify(x, patch, merge, temporal)
        return patches.to(self.device, self.dtype), torch.tensor([grid], device=self.device)

    def _encode(self, frames: torch.Tensor, times: torch.Tensor, batch_size: int, attention_scores: bool) -> TokenGrid:
        """Tokens [ceil(T/2), h, w, D] (+ DeepStack [L, ceil(T/2), h, w, D]); a temporal token's
        time is the mean of its two frames' (the repeated last frame counts as itself)."""
        temporal, merge = self._vision.temporal_patch_size, self._vision.spatial_merge_size
        batch = max(temporal, batch_size - batch_size % temporal)
        tokens: list[torch.Tensor] = []
        deep: list[torch.Tensor] = []
        for i in range(0, frames.shape[0], batch):
            pixels, grid = self.pixel_values(frames[i : i + batch])
            out = self.model.model.get_video_features(pixels, grid, return_dict=True)
            gt, gh, gw = grid[0].tolist()
            shape = (gt, gh // merge, gw // merge, -1)
            tokens.append(torch.cat(list(out.pooler_output)).reshape(shape))
            if self.deepstack_levels:
                levels = [torch.cat(list(level)).reshape(shape) for level in out.deepstack_features]
                deep.append(torch.stack(levels))  # (L, gt, h, w, D)
        grid_tokens = torch.cat(tokens)
        padded = torch.cat([times, times[-1:].expand(-times.shape[0] % temporal)])
        token_times = padded.reshape(-1, temporal)[:, [0, -1]].mean(dim=1)  # (T',)
        saliency = grid_tokens.float().norm(dim=-1)  # (T', h, w)
        return TokenGrid(
            grid_tokens,
            token_times,
            saliency,
            saliency_source=self.saliency_source,
            deepstack=torch.cat(deep, dim=1) if deep else None,
        )

    # -- layout -----------------------------------------------------------------------------

    def frame_time_ids(self, seconds: float) -> list[int]:
        """The model's time text before a frame: ``<{seconds:.1f} seconds>``."""
        return self._ids(f"<{seconds:.1f} seconds>")

    @staticmethod
    def _kept_frames(segment: CompressedSegment) -> list[tuple[float, torch.Tensor]]:
        """(time, indices of its kept tokens) of each frame that keeps any, in time order."""
        t = segment.positions[:, 0]
        out = []
        for f in torch.unique(t).tolist():
            idx = torch.nonzero(t == f).flatten()
            out.append((float(segment.times[idx[0]]), idx))
        return out

    def visual_block_length(self, segments: Sequence[SegmentLike], timestamps: bool = True) -> int:
        """Exact for compressed segments; for bare (start_time, budget) plans an estimate that lets
        every kept token open a frame of its own (each with the start's time text plus a digit)."""
        total = 0
        for s in segments:
            if isinstance(s, CompressedSegment):
                frames = [seconds for seconds, _ in self._kept_frames(s)]
                text = sum(len(self.frame_time_ids(sec)) for sec in frames) if timestamps else 0
                total += text + 2 * len(frames) + s.budget
            else:
                opened = min(s.budget, getattr(s, "frame_count", s.budget))
                per = len(self.frame_time_ids(s.start_time)) + 1 if timestamps else 0
                total += opened * (per + 2) + s.budget
        return total

    def _assemble(
        self,
        before: list[int],
        after: list[int],
        segments: Sequence[CompressedSegment],
        timestamps: bool,
        position_layout: str,
    ) -> Prefill:
        cfg = self.model.config
        merge = self._vision.spatial_merge_size
        start_id, end_id, pad_id = cfg.vision_start_token_id, cfg.vision_end_token_id, cfg.video_token_id
        levels = self.deepstack_levels
        for seg in segments:
            if levels and seg.deepstack_levels != levels:
                raise ShapeError(
                    f"this model adds {levels} DeepStack levels but a segment carries {seg.deepstack_levels}; "
                    "encode and compress the video with this model (segments from another encoder lack them)"
                )
        # the layout of the kept frames at full size: text, then per frame [time, <start>, h*w pads, <end>]
        ids: list[int] = list(before)
        kinds: list[int] = [0] * len(before)
        keep: list[torch.Tensor] = [torch.arange(len(before))]
        embeds: list[torch.Tensor] = [self.embed(before)]
        deep: list[torch.Tensor] = []
        grids, spans = [], []
        out_len, visual = len(before), 0
        for seg in segments:
            h, w = seg.grid_size
            tokens = seg.tokens.to(self.device, self.dtype)
            seg_start = out_len
            for seconds, idx in self._kept_frames(seg):
                text = (self.frame_time_ids(seconds) if timestamps else []) + [start_id]
                keep.append(torch.arange(len(ids), len(ids) + len(text)))
                embeds.append(self.embed(text))
                ids += text
                kinds += [0] * len(text)
                local = seg.positions[idx, 1] * w + seg.positions[idx, 2]  # raster column within the frame
                keep.append(len(ids) + local)
                embeds.append(tokens[idx.to(self.device)])
                if levels:
                    deep.append(seg.deepstack[:, idx].to(self.device, self.dtype))
                ids += [pad_id] * (h * w)
                kinds += [2] * (h * w)
                grids.append([1, h * merge, w * merge])
                keep.append(torch.tensor([len(ids)]))
                embeds.append(self.embed([end_id]))
                ids.append(end_id)
                kinds.append(0)
                out_len += len(text) + idx.numel() + 1
                visual += idx.numel()
            spans.append((seg_start, out_len))
        keep.append(torch.arange(len(ids), len(ids) + len(after)))
        embeds.append(self.embed(after))
        ids += after
        kinds += [0] * len(after)
        input_ids = torch.tensor([ids], device=self.device)
        positions, _ = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=torch.tensor([kinds], device=self.device),
            video_grid_thw=torch.tensor(grids, device=self.device, dtype=torch.long) if grids else None,
        )  # (3, 1, L_kept_frames)
        columns = torch.cat(keep).to(self.device)
        inputs_embeds = torch.cat(embeds)[None]  # (1, L, H)
        kept_kinds = torch.tensor(kinds, device=self.device)[columns]
        return DeepStackPrefill(
            inputs_embeds=inputs_embeds,
            attention_mask=torch.ones(1, inputs_embeds.shape[1], dtype=torch.long, device=self.device),
            position_ids=positions[:, :, columns],  # (3, 1, L)
            visual_tokens=visual,
            segment_spans=spans,
            position_layout="original",
            visual_mask=(kept_kinds == 2)[None],
            deepstack=torch.cat(deep, dim=1) if levels else None,
        )

    # -- prefill --------------------------------------------------------------------------

    def forward_prefill(self, prefill: Prefill, *, logits_to_keep: int = 1) -> Any:
        """The forward over the prompt with a KV cache (``logits_to_keep=0``: logits at every position).

        With DeepStack, the text model takes the kept tokens' features at the visual positions
        (``visual_pos_masks``, ``deepstack_visual_embeds``), then the LM head runs: what the
        model's own forward does after it has scattered the tower's outputs.
        """
        deep = getattr(prefill, "deepstack", None)
        if deep is None:
            return self.model(
                inputs_embeds=prefill.inputs_embeds,
                attention_mask=prefill.attention_mask,
                position_ids=prefill.position_ids,
                use_cache=True,
                logits_to_keep=logits_to_keep,
            )
        from transformers.modeling_outputs import CausalLMOutputWithPast

        out = self.model.model.language_model(
            inputs_embeds=prefill.inputs_embeds,
            attention_mask=prefill.attention_mask,
            position_ids=prefill.position_ids,
            use_cache=True,
            visual_pos_masks=prefill.visual_mask,
            deepstack_visual_embeds=list(deep),
        )
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return CausalLMOutputWithPast(logits=self.model.lm_head(hidden), past_key_values=out.past_key_values)

    def run_prefill(self, prefill: Prefill) -> Any:
        """One forward over the prompt with a KV cache, logits for the last position (what
        generation runs; DeepStack features included)."""
        with self.lock, torch.inference_mode():
            return self.forward_prefill(prefill, logits_to_keep=1)


class Qwen3VL(Qwen3Family):
    """Qwen3-VL: DeepStack features carried through compression, frame timestamps, M-RoPE."""

    capabilities = Capabilities(
        positions="mrope",
        video_end_embedding=False,
        frames_per_token_step=2,
        saliency=(
            "fallback: L2 norm of the merged visual tokens ('merged-token-norm'); this tower has no "
            "pooling head to re-attach"
        ),
        position_layouts=("original",),
        deepstack=True,
        timestamps="text",
    )
    model_class = "Qwen3VLForConditionalGeneration"
