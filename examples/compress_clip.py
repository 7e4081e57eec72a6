"""Compress a clip's visual tokens with InfoMerge, then shrink one segment further.

    python examples/compress_clip.py

With a Video-LLM the TokenGrid comes from the model's vision tower; here it is a
synthetic clip of pixel patches, so the example runs anywhere without weights.
"""

import torch

from bench.demo import patch_tokens, synthetic_frames
from streamvid import TokenGrid, create_compressor, list_compressors, remerge

frames, times = synthetic_frames(num_frames=32)
grid = TokenGrid(patch_tokens(frames), torch.from_numpy(times))  # [32, 14, 14, 768]
print("compressors:", ", ".join(list_compressors()))

segments = create_compressor("infomerge", ratio=0.15).compress(grid)
for seg in segments:
    print(
        f"segment {seg.segment_index}: {seg.start_time:5.1f}-{seg.end_time:5.1f} s, "
        f"{seg.frame_count:2d} frames, {seg.budget:3d} tokens standing for "
        f"{int(seg.sizes.sum())} (uniqueness {seg.uniqueness:.3f}, richness {seg.richness:.3f})"
    )

smaller = remerge(segments[0], budget=segments[0].budget // 2)
print(f"re-merged segment 0 to {smaller.budget} tokens; sizes still sum to {int(smaller.sizes.sum())}")
