"""A deterministic embedder and coloured videos: the content that should be found is planted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


class ColorEmbedder:
    """Frames -> one-hot of their dominant colour; text -> the colour it names."""

    dim = 3
    recency_only = False

    def embed_frames(self, frames) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(frames)).float().mean(dim=(1, 2))  # (K, 3)
        return F.one_hot(x.argmax(dim=1), 3).float()

    def embed_text(self, texts) -> torch.Tensor:
        out = torch.full((len(texts), 3), 1 / 3**0.5)
        for i, text in enumerate(texts):
            for j, name in enumerate(COLORS):
                if name in text.lower():
                    out[i] = F.one_hot(torch.tensor(j), 3).float()
        return out


def color_video(path: Path, plan: list[tuple[str, float]], fps: int = 4, size=(56, 56)) -> Path:
    """Scenes of solid colour (with texture), e.g. [("red", 4.0), ("green", 4.0)] seconds each."""
    from media import write_video

    times, colors = [], []
    t = 0.0
    for name, seconds in plan:
        for _ in range(round(seconds * fps)):
            times.append(round(t, 6))
            colors.append(name)
            t += 1 / fps
    lookup = dict(zip(times, colors))
    rng = np.random.default_rng(0)
    texture = rng.integers(-20, 20, (size[1], size[0], 3))

    def frame_at(time: float) -> np.ndarray:
        base = np.array(COLORS[lookup[round(time, 6)]])
        return np.clip(base + texture, 0, 255).astype(np.uint8)

    return write_video(path, times, frame_at, size=size)
