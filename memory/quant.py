"""Quantized token storage: what a shard holds for each ``token_dtype``, and back (pure functions).

    float16 / bfloat16  the vectors as they are, 2 bytes a value
    int8                symmetric per token: q = round(x / s), s = max|x| / 127 (float32, one per token);
                        |x - s q| <= s / 2
    int4                asymmetric per group of ``INT4_GROUP`` = 32 consecutive values of a token:
                        q = round((x - m) / s) in 0..15, m = group min, s = (group max - m) / 15,
                        both float16 (m rounded down, s rounded up, so no value clamps); two values a
                        byte (low nibble first); |x - (m + s q)| <= s / 2

Bytes per token vector (``vector_bytes``): 2 D, D + 4, 20 ceil(D / 32) (int4:
16 bytes of values, padded to whole groups, and 4 of scale and min per group). Reading returns
float16 on the caller's device (dequantized there, in float32).
"""

from __future__ import annotations

import math

import torch

__all__ = ["INT4_GROUP", "TOKEN_DTYPES", "dequantize", "quantize", "vector_bytes"]

TOKEN_DTYPES = ("float16", "bfloat16", "int8", "int4")
INT4_GROUP = 32


def vector_bytes(dim: int, token_dtype: str) -> int:
    """Stored bytes of one token vector of width ``dim`` (values plus their scales)."""
    if token_dtype in ("float16", "bfloat16"):
        return 2 * dim
    if token_dtype == "int8":
        return dim + 4
    if token_dtype == "int4":
        groups = math.ceil(dim / INT4_GROUP)
        return groups * (INT4_GROUP // 2 + 4)  # packed values (padded to whole groups) + scale + min
    raise ValueError(f"unknown token_dtype {token_dtype!r}; choose from {TOKEN_DTYPES}")


def quantize(tokens: torch.Tensor, token_dtype: str) -> dict[str, torch.Tensor]:
    """tokens: [n, D] -> the shard tensors for ``token_dtype`` (CPU, contiguous).

    float16/bfloat16: {"tokens": [n, D]}; int8: {"tokens": int8 [n, D], "scales": f32 [n]};
    int4: {"tokens": uint8 [n, G * 16], "scales": f16 [n, G], "mins": f16 [n, G]}, G = ceil(D / 32).
    """
    x = tokens.detach().to("cpu", torch.float32)
    if token_dtype in ("float16", "bfloat16"):
        return {"tokens": x.to(getattr(torch, token_dtype)).contiguous()}
    if token_dtype == "int8":
        scale = x.abs().amax(dim=1) / 127.0  # (n,)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(x / safe[:, None]).clamp_(-127, 127).to(torch.int8)
        return {"tokens": q.contiguous(), "scales": scale.contiguous()}
    if token_dtype == "int4":
        n, d = x.shape
        groups = math.ceil(d / INT4_GROUP)
        pad = groups * INT4_GROUP - d
        if pad:  # pad with each token's last value: it changes no group's min or max
            x = torch.cat([x, x[:, -1:].expand(n, pad)], dim=1)
        g = x.reshape(n, groups, INT4_GROUP)  # (n, G, 32)
        lo, hi = g.amin(dim=2), g.amax(dim=2)  # (n, G)
        m16 = _round_down_half(lo)
        s16 = _round_up_half((hi - m16.float()) / 15.0)
        s = s16.float()
        safe = torch.where(s > 0, s, torch.ones_like(s))
        q = torch.round((g - m16.float()[..., None]) / safe[..., None]).clamp_(0, 15).to(torch.uint8)
        q = q.reshape(n, groups * INT4_GROUP // 2, 2)  # (n, G * 16, 2): value pairs
        packed = q[..., 0] | (q[..., 1] << 4)
        return {"tokens": packed.contiguous(), "scales": s16.contiguous(), "mins": m16.contiguous()}
    raise ValueError(f"unknown token_dtype {token_dtype!r}; choose from {TOKEN_DTYPES}")


def dequantize(tensors: dict[str, torch.Tensor], dim: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The shard tensors (any ``token_dtype``, told apart by the tokens' dtype) -> float16 [n, dim]
    on ``device`` (default: where they are). Old float16/bfloat16 shards read as they are."""
    q = tensors["tokens"]
    if device is not None:
        q = q.to(device)
    if q.dtype in (torch.float16, torch.bfloat16, torch.float32):
        return q.to(torch.float16, copy=True)  # never the stored (possibly cached) tensor itself
    if q.dtype == torch.int8:
        scale = tensors["scales"].to(q.device, torch.float32)
        return (q.float() * scale[:, None]).to(torch.float16)
    if q.dtype == torch.uint8:
        n = q.shape[0]
        s = tensors["scales"].to(q.device, torch.float32)  # (n, G)
        m = tensors["mins"].to(q.device, torch.float32)
        pairs = torch.stack([q & 0x0F, q >> 4], dim=-1)  # (n, G * 16, 2)
        vals = pairs.reshape(n, s.shape[1], INT4_GROUP).float()  # (n, G, 32)
        x = m[..., None] + s[..., None] * vals
        return x.reshape(n, -1)[:, :dim].to(torch.float16)
    raise ValueError(f"shard tokens of dtype {q.dtype} are not a stored token format")


def _round_down_half(x: torch.Tensor) -> torch.Tensor:
    """float32 -> float16 no greater than x."""
    h = x.to(torch.float16)
    over = h.float() > x
    return torch.where(over, torch.nextafter(h, torch.full_like(h, -math.inf)), h)


def _round_up_half(x: torch.Tensor) -> torch.Tensor:
    """float32 (>= 0) -> float16 no smaller than x."""
    h = x.to(torch.float16)
    under = h.float() < x
    return torch.where(under, torch.nextafter(h, torch.full_like(h, math.inf)), h)
