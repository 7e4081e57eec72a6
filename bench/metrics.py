"""Fidelity of a compressed token set to the full one (evaluation spec, section 2)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["attention_fidelity"]


def attention_fidelity(
    full: torch.Tensor,
    compressed: torch.Tensor,
    sizes: torch.Tensor | None = None,
    *,
    sharpness: float = 1.0,
    size_bias: bool = False,
    num_queries: int = 256,
    seed: int = 0,
) -> float:
    """Mean cosine between attention outputs over the full and the compressed tokens.

    full: [M, D]; compressed: [n, D]; sizes: [n] (needed when ``size_bias``).
    Queries: a seeded sample of ``full``'s own tokens plus the clip mean.
    O = softmax(b Q K^T) K with b = sharpness / sqrt(D); with ``size_bias`` the
    compressed logits get + log(size) (proportional attention).
    """
    full = full.float()
    comp = compressed.float()
    m, dim = full.shape
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(m, generator=gen)[: min(num_queries, m)].to(full.device)
    queries = torch.cat([full[pick], full.mean(dim=0, keepdim=True)])  # (q, D)
    b = sharpness / math.sqrt(dim)
    out_full = torch.softmax(b * queries @ full.T, dim=-1) @ full  # (q, D)
    logits = b * queries @ comp.T  # (q, n)
    if size_bias:
        if sizes is None:
            raise ValueError("size_bias needs the sizes of the compressed tokens")
        logits = logits + sizes.float().log().to(logits.device)[None, :]
    out_comp = torch.softmax(logits, dim=-1) @ comp
    return float(F.cosine_similarity(out_full, out_comp, dim=-1).mean())


def coverage(
    full: torch.Tensor,
    compressed: torch.Tensor,
    owner: torch.Tensor | None = None,
) -> tuple[float, float]:
    """(mean, 5th percentile) over original tokens of the cosine to the kept token that represents it.

    full: [M, D]; compressed: [n, D]. owner: int64 [M], the index of the kept token that
    stands for each original (from provenance, for merging methods); without it each
    original is represented by its most similar kept token (pruning methods).
    """
    x = F.normalize(full.float(), dim=-1)
    y = F.normalize(compressed.float(), dim=-1)
    if owner is None:
        sims = (x @ y.T).max(dim=1).values  # (M,)
    else:
        sims = (x * y[owner.to(x.device)]).sum(dim=-1)
    return float(sims.mean()), float(torch.quantile(sims, 0.05))
