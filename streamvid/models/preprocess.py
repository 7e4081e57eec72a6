"""Frame preprocessing in our own code (no torchvision, no HF video processor)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["resize_frames", "normalize", "smart_resize", "qwen_patchify"]


def resize_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [T, 3, height, width] in 0..255 (bicubic, antialiased)."""
    x = frames.permute(0, 3, 1, 2).float()  # (T, 3, H, W)
    if x.shape[-2:] == (height, width):
        return x
    x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return x.clamp(0, 255)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], scale: float = 1 / 255) -> torch.Tensor:
    """[T, 3, H, W] in 0..255 -> (x * scale - mean) / std per channel."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x * scale - m) / s


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's rule: sides divisible by ``factor``, area within [min_pixels, max_pixels], aspect kept."""
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen_patchify(x: torch.Tensor, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Qwen2-VL video patches. x: [T, C, H, W] (T a multiple of ``temporal``) ->
    ([grid_t * grid_h * grid_w, C * temporal * patch * patch], (grid_t, grid_h, grid_w)).

    Order: temporal patch, then merge blocks in raster order, then the m x m patches
    inside each block, as the vision tower's merger expects.
    """
    t, c, h, w = x.shape
    gt, gh, gw = t // temporal, h // patch, w // patch
    x = x.reshape(gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (gt, gh/m, gw/m, m, m, C, tp, p, p)
    return x.reshape(gt * gh * gw, c * temporal * patch * patch), (gt, gh, gw)
