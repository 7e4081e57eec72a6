"""Shared fixtures: synthetic clips with known structure. Offline, CPU."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from streamvid.types import TokenGrid


def moving_object_clip(
    frames: int = 12, h: int = 8, w: int = 8, dim: int = 32, noise: float = 0.01, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A static background with a 2x2 object moving one column per frame.

    Returns tokens [T, h, w, D] and a bool [h, w] map of every position the object visits.
    """
    gen = torch.Generator().manual_seed(seed)
    background = torch.randn(h, w, dim, generator=gen)
    obj = torch.randn(dim, generator=gen) * 3
    tokens = background.expand(frames, h, w, dim).clone()
    visited = torch.zeros(h, w, dtype=torch.bool)
    for t in range(frames):
        col = t % (w - 1)
        tokens[t, 3:5, col : col + 2] = obj
        visited[3:5, col : col + 2] = True
    tokens += noise * torch.randn(tokens.shape, generator=gen)
    return tokens, visited


def scene_clip(
    lengths: tuple[int, ...] = (6, 10, 4, 12),
    h: int = 10,
    w: int = 10,
    dim: int = 48,
    noise: float = 0.05,
    seed: int = 0,
) -> TokenGrid:
    """Scenes of the given lengths: each scene a fixed random grid plus per-frame noise."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for length in lengths:
        scene = torch.randn(h, w, dim, generator=gen)
        parts.append(scene + noise * torch.randn(length, h, w, dim, generator=gen))
    tokens = torch.cat(parts)
    return TokenGrid(tokens, torch.arange(tokens.shape[0], dtype=torch.float64) * 0.5)


@pytest.fixture
def clip() -> TokenGrid:
    return scene_clip()
