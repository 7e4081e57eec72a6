"""Qwen3.5 (transformers ``Qwen3_5ForConditionalGeneration``): natively multimodal, hybrid attention.

The vision side and the video layout are Qwen3-VL's (see :mod:`streamvid.models.qwen3_vl`):
our own preprocessing, 16 px patches merged 2x2, two frames per temporal token, per-frame
``<t seconds>`` texts, positions from the model's own ``get_rope_index`` gathered to the kept
tokens. There is no DeepStack: the tower's merged tokens are all the language model sees.

What the hybrid attention changes for prefill cost: three of every four decoder layers are
Gated-DeltaNet linear attention (a causal depthwise convolution, then a gated delta-rule
recurrence over a fixed-size state, computed in chunks), and only every fourth layer is full
softmax attention. A linear layer costs O(L) in the prompt length L and keeps an O(1) state
instead of a KV cache, so the quadratic attention term, the part that compression removes
fastest, is a quarter of what a same-shape full-attention model pays; the rest (MLPs,
projections, the delta rule) is linear in L. Compression therefore still cuts prefill time
about in proportion to the tokens removed, but the extra gain from the quadratic term at long
prompts is smaller than for Qwen2/Qwen3-VL. When the ``flash-linear-attention`` and
``causal-conv1d`` kernels are absent (as on CPU), transformers runs its torch fallback of the
same computation, which is slower per token but has the same shape of cost.

Saliency: the L2 norm of the merged visual tokens (no pooling head), as for Qwen3-VL.
"""

from __future__ import annotations

from streamvid.models.base import Capabilities
from streamvid.models.qwen3_vl import Qwen3Family

__all__ = ["Qwen35"]


class Qwen35(Qwen3Family):
    """Qwen3.5: frame timestamps, M-RoPE, hybrid linear/full attention, no DeepStack."""

    capabilities = Capabilities(
        positions="mrope",
        video_end_embedding=False,
        frames_per_token_step=2,
        saliency=(
            "fallback: L2 norm of the merged visual tokens ('merged-token-norm'); this tower has no "
            "pooling head to re-attach"
        ),
        position_layouts=("original",),
        timestamps="text",
        attention="hybrid",
    )
    model_class = "Qwen3_5ForConditionalGeneration"
