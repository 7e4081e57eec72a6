"""Qwen2.5-VL (transformers ``Qwen2_5_VLForConditionalGeneration``).

Video path: smart resize to multiples of 28, our own patchify (2 frames per
temporal patch), the vision tower with its 2x2 merger -> [T/2, h, w, D].
Positions: M-RoPE computed by the model's own ``get_rope_index`` on the full,
uncompressed layout of every segment, then gathered to the kept tokens (a merged
token takes its representative's position). position_ids are always passed; this is the
"original" position layout, the only one M-RoPE takes here.
Saliency: this tower has no SigLIP pooling head, so the fallback is used: the L2 norm of
the merged visual tokens (``saliency_source="merged-token-norm"``). Attention maps are not
implemented for this tower: ``attention_scores`` has no effect and ``TokenGrid.scores`` stays empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from streamvid.models.base import Capabilities, Prefill, SegmentLike, VideoLLM
from streamvid.models.preprocess import normalize, qwen_patchify, resize_frames, smart_resize
from streamvid.types import CompressedSegment, TokenGrid

__all__ = ["Qwen25VL"]

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class Qwen25VL(VideoLLM):
    capabilities = Capabilities(
        positions="mrope",
        video_end_embedding=False,
        frames_per_token_step=2,
        saliency=(
            "fallback: L2 norm of the merged visual tokens ('merged-token-norm'); this tower has no "
            "pooling head to re-attach"
        ),
        position_layouts=("original",),
        timestamps="temporal-position",
    )
    model_class = "Qwen2_5_VLForConditionalGeneration"

    @property
    def _vision(self) -> Any:
        return self.model.config.vision_config

    def pixel_values(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [T, H, W, 3] -> (patches [N, C*2*14*14], video_grid_thw [1, 3])."""
        cfg, vis = self.processor_config, self._vision
        patch, merge, temporal = vis.patch_size, vis.spatial_merge_size, vis.temporal_patch_size
        height, width = smart_resize(
            frames.shape[1],
            frames.shape[2],
            patch * merge,
            cfg.get("min_pixels", 128 * 28 * 28),
            cfg.get("max_pixels", 768 * 28 * 28),
        )
        x = resize_frames(frames, height, width)
        x = normalize(
            x, cfg.get("image_mean", CLIP_MEAN), cfg.get("image_std", CLIP_STD), cfg.get("rescale_factor", 1 / 255)
        )
        if x.shape[0] % temporal:  # pad the last temporal patch by repeating the last frame
            x = torch.cat([x, x[-1:].expand(temporal - x.shape[0] % temporal, -1, -1, -1)])
        patches, grid = qwen_patchify(x, patch, merge, temporal)
        return patches.to(self.device, self.dtype), torch.tensor([grid], device=self.device)

    encode_batch_size = 16

    @property
    def saliency_source(self) -> str:
        return "merged-token-norm"

    def _encode(self, frames: torch.Tensor, times: torch.Tensor, batch_size: int, attention_scores: bool) -> TokenGrid:
        """Tokens [ceil(T/2), h, w, D]; the timestamp of a temporal token is its first frame's."""
        temporal, merge = self._vision.temporal_patch_size, self._vision.spatial_merge_size
        batch = max(temporal, batch_size - batch_size % temporal)
        tokens = []
        for i in range(0, frames.shape[0], batch):
            pixels, grid = self.pixel_values(frames[i : i + batch])
            out = self.model.model.get_video_features(pixels, grid, return_dict=True)
            feats = torch.cat(list(out.pooler_output))  # (gt * gh/m * gw/m, D)
            gt, gh, gw = grid[0].tolist()
            tokens.append(feats.reshape(gt, gh // merge, gw // merge, -1))
        grid_tokens = torch.cat(tokens)
        saliency = grid_tokens.float().norm(dim=-1)  # (T', h, w)
        return TokenGrid(grid_tokens, times[::temporal], saliency, saliency_source=self.saliency_source)

    def seconds_per_token_step(self, segment: CompressedSegment) -> float:
        """Seconds between temporal tokens of a segment (its frame_count counts temporal tokens)."""
        if segment.frame_count > 1:
            return (segment.end_time - segment.start_time) / (segment.frame_count - 1)
        return float(self._vision.temporal_patch_size)  # one step: assume 1 fps sampling

    def visual_block_length(self, segments: Sequence[SegmentLike], timestamps: bool = True) -> int:
        text = sum(len(self.timestamp_ids(s)) for s in segments) if timestamps else 0
        return text + sum(s.budget + 2 for s in segments)  # + <|vision_start|> and <|vision_end|>

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
        # the full, uncompressed layout: text, then per segment [time text, <start>, pads, <end>], text
        ids: list[int] = list(before)
        kinds: list[int] = [0] * len(before)
        pieces: list[tuple[str, Any]] = [("text", before)]
        grids, seconds = [], []
        for seg in segments:
            text = (self.timestamp_ids(seg) if timestamps else []) + [start_id]
            pieces.append(("text", text))
            ids += text
            kinds += [0] * len(text)
            h, w = seg.grid_size
            full = seg.frame_count * h * w
            pieces.append(("video", seg))
            ids += [pad_id] * full
            kinds += [2] * full
            grids.append([seg.frame_count, h * merge, w * merge])
            seconds.append(self.seconds_per_token_step(seg))
            pieces.append(("text", [end_id]))
            ids.append(end_id)
            kinds.append(0)
        pieces.append(("text", after))
        ids += after
        kinds += [0] * len(after)
        input_ids = torch.tensor([ids], device=self.device)
        positions, _ = self.model.model.get_rope_index(
            input_ids,
            mm_token_type_ids=torch.tensor([kinds], device=self.device),
            video_grid_thw=torch.tensor(grids, device=self.device),
            second_per_grid_ts=torch.tensor(seconds, device=self.device),
        )  # (3, 1, L_full)
        # keep text columns and, per segment, the columns of its kept tokens
        embeds, keep, spans = [], [], []
        cursor, out_len, visual = 0, 0, 0
        for kind, item in pieces:
            if kind == "text":
                embeds.append(self.embed(item))
                keep.append(torch.arange(cursor, cursor + len(item), device=self.device))
                cursor += len(item)
                out_len += len(item)
                continue
            seg = item
            h, w = seg.grid_size
            pos = seg.positions.to(self.device)
            local = (pos[:, 0] * h + pos[:, 1]) * w + pos[:, 2]  # representative's column in the block
            keep.append(cursor + local)
            embeds.append(seg.tokens.to(self.device, self.dtype))
            spans.append((out_len, out_len + seg.budget))
            cursor += seg.frame_count * h * w
            out_len += seg.budget
            visual += seg.budget
        columns = torch.cat(keep)
        inputs_embeds = torch.cat(embeds)[None]  # (1, L, H)
        return Prefill(
            inputs_embeds=inputs_embeds,
            attention_mask=torch.ones(1, inputs_embeds.shape[1], dtype=torch.long, device=self.device),
            position_ids=positions[:, :, columns],  # (3, 1, L)
            visual_tokens=visual,
            segment_spans=spans,
            position_layout="original",
        )
