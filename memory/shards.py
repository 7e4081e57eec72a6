"""Tensor shards: one safetensors file per segment version, written atomically.

Token vectors are stored in the memory's ``token_dtype`` (memory/quant.py: float16,
bfloat16, int8 with ``scales``, int4 with ``scales`` and ``mins``). A segment's DeepStack
features (``CompressedSegment.deepstack`` [L, n, D]) are stored in the same format as
``deepstack`` (+ ``deepstack_scales``, ``deepstack_mins``), the L levels one after the other,
so a shard's bytes count them. Reads memory-map the file and copy out only its tensors, so
nothing but the asked segment is in RAM.

A shard is written to a temporary name, flushed and fsynced, then renamed into
place; the manifest points at it only after that, so a crash never leaves the
manifest pointing at a half-written file. Files the manifest does not name are
orphans from an interrupted write and are removed when the memory opens.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from memory.errors import CorruptShardError
from memory.quant import dequantize, quantize
from streamvid.types import CompressedSegment

__all__ = ["ShardStore"]

_TENSORS = ("tokens", "sizes", "positions", "times")
_QUANT_EXTRA = {torch.int8: ("scales",), torch.uint8: ("scales", "mins")}
_DEEP = "deepstack"


def _deepstack_tensors(seg: CompressedSegment, token_dtype: str) -> dict[str, torch.Tensor]:
    """The DeepStack levels [L, n, D] quantized like the tokens, under ``deepstack*`` names."""
    if seg.deepstack is None:
        return {}
    levels, n, dim = seg.deepstack.shape
    q = quantize(seg.deepstack.reshape(levels * n, dim), token_dtype)
    return {(_DEEP if k == "tokens" else f"{_DEEP}_{k}"): v for k, v in q.items()}


class ShardStore:
    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = root / "shards"
        if create:
            self.root.mkdir(parents=True, exist_ok=True)

    def name(self, segment_id: int, version: int) -> str:
        return f"{segment_id // 1000:05d}/{segment_id:09d}.v{version}.safetensors"

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, segment_id: int, version: int, seg: CompressedSegment, token_dtype: str) -> tuple[str, int]:
        """Write the tokens (quantized to ``token_dtype``) and provenance of ``seg``; returns (shard name, bytes)."""
        name = self.name(segment_id, version)
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = save(
            {
                **quantize(seg.tokens, token_dtype),
                **_deepstack_tensors(seg, token_dtype),
                "sizes": seg.sizes.to("cpu", torch.int64).contiguous(),
                "positions": seg.positions.to("cpu", torch.int64).contiguous(),
                "times": seg.times.to("cpu", torch.float64).contiguous(),
            }
        )
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return name, len(data)

    def read(self, segment_id: int, name: str) -> dict[str, torch.Tensor]:
        path = self.path(name)
        try:
            # every tensor of a shard is used: one read and a parse beat a memory map (3x for small shards)
            tensors = load(path.read_bytes())
        except FileNotFoundError:
            raise CorruptShardError(
                f"segment {segment_id}: shard {name} is missing; the segment's tokens are lost "
                "(its key and time range remain). Restore the file from a backup or drop the segment",
                [segment_id],
            ) from None
        except (SafetensorError, ValueError, OSError) as err:
            raise CorruptShardError(
                f"segment {segment_id}: shard {name} is unreadable ({err}); restore it from a backup "
                "or drop the segment. Other segments are unaffected",
                [segment_id],
            ) from None
        extra = _QUANT_EXTRA.get(tensors["tokens"].dtype, ()) if "tokens" in tensors else ()
        if _DEEP in tensors:
            extra += tuple(f"{_DEEP}_{k}" for k in _QUANT_EXTRA.get(tensors[_DEEP].dtype, ()))
        if any(k not in tensors for k in (*_TENSORS, *extra)):
            raise CorruptShardError(f"segment {segment_id}: shard {name} lacks tensors", [segment_id])
        return tensors

    @staticmethod
    def deepstack(
        tensors: dict[str, torch.Tensor], dim: int, device: torch.device | str | None = None
    ) -> torch.Tensor | None:
        """The DeepStack levels of a read shard, dequantized to float16 [L, n, dim] on ``device``
        (None for a shard without them)."""
        if _DEEP not in tensors:
            return None
        q = {
            "tokens": tensors[_DEEP],
            **{k: tensors[f"{_DEEP}_{k}"] for k in ("scales", "mins") if f"{_DEEP}_{k}" in tensors},
        }
        flat = dequantize(q, dim, device)  # (L * n, dim)
        n = tensors["sizes"].shape[0]
        if flat.shape[0] % n:
            raise ValueError(f"deepstack holds {flat.shape[0]} rows, not a multiple of the {n} tokens")
        return flat.reshape(-1, n, dim)

    def delete(self, name: str) -> None:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            pass

    def sweep(self, referenced: set[str]) -> int:
        """Remove temporary files and shards the manifest does not name. Returns the count."""
        removed = 0
        for path in self.root.rglob("*"):
            if not path.is_file():
                continue
            name = path.relative_to(self.root).as_posix()
            if path.suffix == ".tmp" or name not in referenced:
                path.unlink()
                removed += 1
        return removed

    def disk_bytes(self) -> int:
        """Bytes of shard files; files renamed or removed while counting are skipped."""
        return _sizes(self.root.rglob("*.safetensors")) if self.root.exists() else 0


def _sizes(paths) -> int:
    total = 0
    for p in paths:
        try:
            total += p.stat().st_size
        except FileNotFoundError:  # a concurrent write or delete; not part of any snapshot
            pass
    return total
