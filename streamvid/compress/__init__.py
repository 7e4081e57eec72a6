"""Token compressors behind one interface, by name.

>>> from streamvid.compress import create_compressor, list_compressors
>>> list_compressors()
['aot', 'fastvid', 'infomerge', 'keep_all', 'random', 'uniform', 'vidcom2']
>>> compressor = create_compressor("infomerge", ratio=0.15)
"""

from __future__ import annotations

from typing import Any

from streamvid.compress.aot import AOT
from streamvid.compress.base import Compressor, CompressorConfig
from streamvid.compress.baselines import KeepAll, RandomKeep, UniformPool, VidCom2
from streamvid.compress.caba import (
    SegmentStats,
    allocate_budgets,
    caba_weights,
    segment_stats,
    spectral_richness,
    uniqueness,
)
from streamvid.compress.dyseg import dyseg_boundaries
from streamvid.compress.infomerge import FastVID, InfoMerge, constants_for_ratio
from streamvid.compress.remerge import remerge
from streamvid.compress.tfd import IncrementalTFD, static_positions, temporal_fingerprint_difference
from streamvid.errors import ConfigError, UnknownNameError

__all__ = [
    "Compressor",
    "CompressorConfig",
    "IncrementalTFD",
    "SegmentStats",
    "allocate_budgets",
    "caba_weights",
    "constants_for_ratio",
    "create_compressor",
    "dyseg_boundaries",
    "list_compressors",
    "register_compressor",
    "remerge",
    "segment_stats",
    "spectral_richness",
    "static_positions",
    "temporal_fingerprint_difference",
    "uniqueness",
]

_REGISTRY: dict[str, type[Compressor]] = {}


def register_compressor(cls: type[Compressor]) -> type[Compressor]:
    """Class decorator: make ``cls`` available as ``create_compressor(cls.name)``."""
    if not getattr(cls, "name", None):
        raise ConfigError(f"{cls.__name__} needs a class attribute `name` to be registered")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ConfigError(f"a compressor named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


for _cls in (InfoMerge, FastVID, VidCom2, UniformPool, RandomKeep, KeepAll, AOT):
    register_compressor(_cls)


def list_compressors() -> list[str]:
    """Names accepted by :func:`create_compressor`, sorted."""
    return sorted(_REGISTRY)


def create_compressor(name: str, **cfg: Any) -> Compressor:
    """A compressor by registered name; ``cfg`` goes to its config (e.g. ``ratio=0.15``)."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("compressor", name, _REGISTRY) from None
    return cls(**cfg)
