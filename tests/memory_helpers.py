"""Synthetic compressed segments for the memory tests (fast, no compressor needed)."""

from __future__ import annotations

import torch

from streamvid.types import CompressedSegment


def make_segment(
    n: int,
    *,
    frames: int = 4,
    grid: tuple[int, int] = (4, 4),
    dim: int = 16,
    seed: int = 0,
    stream: str = "cam",
    start: float = 0.0,
    index: int = 0,
    center: torch.Tensor | None = None,
    spread: float = 1.0,
) -> CompressedSegment:
    """n tokens standing for frames * h * w originals (sizes sum exactly), sorted in time."""
    gen = torch.Generator().manual_seed(seed)
    h, w = grid
    original = frames * h * w
    n = max(1, min(n, original))
    base = torch.zeros(dim) if center is None else center
    tokens = base + spread * torch.randn(n, dim, generator=gen)
    sizes = torch.ones(n, dtype=torch.long)
    if original > n:
        extra = torch.multinomial(torch.ones(n), original - n, replacement=True, generator=gen)
        sizes += torch.bincount(extra, minlength=n)
    t = torch.sort(torch.randint(0, frames, (n,), generator=gen)).values
    positions = torch.stack([t, torch.randint(0, h, (n,), generator=gen), torch.randint(0, w, (n,), generator=gen)], 1)
    times = start + t.double()
    return CompressedSegment(
        tokens=tokens.half(),
        sizes=sizes,
        positions=positions,
        times=times,
        grid_size=grid,
        frame_count=frames,
        start_time=start,
        end_time=start + frames - 1,
        mean_token=(tokens * sizes[:, None]).sum(0) / original,
        richness=0.5,
        stream_id=stream,
        segment_index=index,
        method="synthetic",
    )
