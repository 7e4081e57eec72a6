"""Fidelity of a compressed token set to the full one: attention outputs and coverage.

Attention-output fidelity compares softmax(b Q X^T) X over all tokens X [M, D] with
softmax(b Q Y^T) Y over the kept tokens Y [n, D]. Three choices make it honest:

- the queries never come from a compressor's randomness: they are tokens of held-out
  frames (between the sampled ones), or a sample drawn with numpy's PCG64 generator,
  which no compressor uses (compressors draw from torch generators);
- queries and keys are RMS-normalised (each vector scaled to unit root-mean-square),
  so raw feature norms (EfficientNet tokens have norms near 65) cannot turn the
  softmax into a hard max;
- the inverse temperature b is chosen, on the full tokens, so that the queries attend
  to a target *effective number of keys*: exp(entropy of the attention row), averaged
  over the queries. Target 1 is the hard-max limit (each query takes its best key).

Coverage scores every method by one rule: each original token's cosine to the most
similar kept token of its own segment; the provenance rule (the kept token it was
merged into, from ``owner``) is reported beside it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from streamvid.errors import ConfigError

__all__ = [
    "attention_fidelity",
    "coverage",
    "effective_keys",
    "inverse_temperature",
    "rms_normalise",
    "sample_queries",
    "segment_coverage",
]

QUERY_SEED = 20_240_917  # numpy PCG64 seed of the query sample (no compressor uses numpy's generator)


def rms_normalise(x: torch.Tensor) -> torch.Tensor:
    """x: [..., D] -> fp32 [..., D] with unit root-mean-square over D (norm sqrt(D))."""
    x = x.float()
    return x / x.pow(2).mean(dim=-1, keepdim=True).clamp_min(1e-12).sqrt()


def sample_queries(tokens: torch.Tensor, num: int = 256, seed: int = QUERY_SEED) -> torch.Tensor:
    """A fixed sample of ``tokens`` [M, D] plus their mean -> queries [min(num, M) + 1, D].

    Drawn with numpy's PCG64 generator, so the sample cannot coincide with the
    ``torch.randperm`` draw of any seeded compressor.
    """
    m = tokens.shape[0]
    pick = np.random.default_rng(seed).choice(m, size=min(num, m), replace=False)
    pick_t = torch.from_numpy(np.sort(pick)).to(tokens.device)
    return torch.cat([tokens[pick_t].float(), tokens.float().mean(dim=0, keepdim=True)])


def effective_keys(logits: torch.Tensor) -> float:
    """exp(entropy) of softmax over the last axis, averaged over rows. logits: [q, M] -> float."""
    logp = torch.log_softmax(logits.double(), dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1)  # (q,)
    return float(entropy.exp().mean())


def inverse_temperature(queries: torch.Tensor, keys: torch.Tensor, target: float, steps: int = 60) -> float:
    """b such that softmax(b q k^T / D) over ``keys`` attends to ``target`` effective keys.

    queries: [q, D], keys: [M, D], both RMS-normalised, so q k^T / D is a cosine-like
    similarity in [-1, 1]. Returns math.inf for target <= 1 (hard max). Bisection on
    log b: the effective number of keys falls monotonically as b grows.
    """
    if target <= 1.0:
        return math.inf
    sim = queries.float() @ keys.float().T / keys.shape[1]  # (q, M)
    m = keys.shape[0]
    if target >= m:
        return 0.0
    lo, hi = math.log(1e-3), math.log(1e5)
    for _ in range(steps):
        mid = (lo + hi) / 2
        if effective_keys(math.exp(mid) * sim) > target:
            lo = mid  # still too flat: sharpen
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def _attend(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, b: float, bias: torch.Tensor | None
) -> torch.Tensor:
    """softmax(b q k^T / D + bias) values; b = inf takes the best key. -> [q, D]."""
    sim = queries @ keys.T / keys.shape[1]  # (q, n)
    if math.isinf(b):  # hard max: a finite size bias cannot move it
        return values[sim.argmax(dim=1)]
    logits = b * sim if bias is None else b * sim + bias[None, :]
    return torch.softmax(logits, dim=-1) @ values


def attention_fidelity(
    full: torch.Tensor,
    compressed: torch.Tensor,
    sizes: torch.Tensor | None = None,
    *,
    queries: torch.Tensor | None = None,
    target_keys: float = 100.0,
    size_bias: bool = False,
    inv_temperature: float | None = None,
) -> float:
    """Mean cosine between attention outputs over the full and the compressed tokens.

    full: [M, D]; compressed: [n, D]; sizes: [n] (needed when ``size_bias``);
    queries: [q, D] (default: :func:`sample_queries` of ``full``). Queries and keys are
    RMS-normalised; values are the tokens as they are. The inverse temperature is
    solved on the full tokens for ``target_keys`` effective keys (or given as
    ``inv_temperature``) and used unchanged for the compressed tokens. With
    ``size_bias`` the compressed logits get + log(size) (proportional attention).
    """
    full = full.float()
    comp = compressed.float()
    q = rms_normalise(sample_queries(full) if queries is None else queries)
    kx, ky = rms_normalise(full), rms_normalise(comp)
    if size_bias and sizes is None:
        raise ConfigError("size_bias needs the sizes of the compressed tokens: pass sizes=")
    b = inverse_temperature(q, kx, target_keys) if inv_temperature is None else inv_temperature
    bias = None
    if size_bias:
        bias = sizes.float().log().to(comp.device)
    out_full = _attend(q, kx, full, b, None)
    out_comp = _attend(q, ky, comp, b, bias)
    return float(F.cosine_similarity(out_full, out_comp, dim=-1).mean())


def coverage(
    full: torch.Tensor,
    compressed: torch.Tensor,
    owner: torch.Tensor | None = None,
) -> tuple[float, float]:
    """(mean, 5th percentile) over original tokens of the cosine to the kept token that represents it.

    full: [M, D]; compressed: [n, D]. owner: int64 [M], the index of the kept token each
    original was merged into (the provenance rule); without it each original is
    represented by its most similar kept token (the nearest rule).
    """
    x = F.normalize(full.float(), dim=-1)
    y = F.normalize(compressed.float(), dim=-1)
    if owner is None:
        sims = (x @ y.T).max(dim=1).values  # (M,)
    else:
        sims = (x * y[owner.to(x.device)]).sum(dim=-1)
    return float(sims.mean()), float(torch.quantile(sims, 0.05))


def segment_coverage(grid_tokens: torch.Tensor, segments: list) -> dict[str, float]:
    """Coverage of a clip by its compressed segments, both rules, every method alike.

    grid_tokens: [T, h, w, D]; segments: CompressedSegments covering the frames.
    ``nearest``: each original's cosine to the most similar kept token of its own
    segment; ``provenance``: to the kept token that owns it (segments without an
    owner fall back to the nearest rule). -> {nearest_mean, nearest_p5, provenance_mean, provenance_p5}.
    """
    d = grid_tokens.shape[-1]
    near, prov = [], []
    for s in segments:
        x = F.normalize(grid_tokens[s.frame_offset : s.frame_offset + s.frame_count].reshape(-1, d).float(), dim=-1)
        y = F.normalize(s.tokens.float(), dim=-1)  # (n, D)
        sims = x @ y.T  # (V*N, n)
        near.append(sims.max(dim=1).values)
        if s.owner is not None:
            prov.append(sims.gather(1, s.owner.to(sims.device)[:, None]).squeeze(1))
        else:
            prov.append(near[-1])
    nv, pv = torch.cat(near), torch.cat(prov)
    return {
        "nearest_mean": float(nv.mean()),
        "nearest_p5": float(torch.quantile(nv, 0.05)),
        "provenance_mean": float(pv.mean()),
        "provenance_p5": float(torch.quantile(pv, 0.05)),
    }
