"""Token memory configuration and settings: pydantic models, defaults in one place.

:class:`MemoryConfig` is how the memory stores (cap, index, CABA constants);
:class:`MemorySettings` is everything a memory remembers about how it is built: that
config, the widths of its tokens and keys, and the ingest settings (model, embedder,
compressor, ratio, fps). The settings live in one place, the ``settings`` row of the
manifest's meta table, written only by the memory's writer after validation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from memory.quant import vector_bytes

__all__ = ["INGEST_FIELDS", "MemoryConfig", "MemorySettings", "PROVENANCE_BYTES"]

# per kept token besides its vector: size int64 + position 3 x int64 + time float64
PROVENANCE_BYTES = 8 + 24 + 8


class MemoryConfig(BaseModel):
    """cap_tokens / cap_bytes: the global cap (either or both; bytes count the stored token
    vectors, scales included, plus 40 bytes of provenance per token, so a quantized memory
    holds 2-3x more tokens under the same byte cap). dtype (also accepted as ``token_dtype``):
    how token vectors are stored: float16 (default), bfloat16, int8 (per-token scale) or int4
    (groups of 32 values, see memory/quant.py); reads dequantize to float16. index_factory: "auto" (the default)
    or any FAISS factory string whose outer layer maps ids (``IDMap2,...``). "auto" follows the
    memory's size: an exact ``IDMap2,Flat`` scan while it holds fewer than ``index_switch_at``
    (20,000) keys; past that, the writer builds ``IDMap2,HNSW32,Flat`` (efSearch 256) in a
    background thread and swaps it in (memory/index.py); the choice is recorded in the manifest
    (meta ``index_factory``) and is :attr:`TokenMemory.index_factory`.
    tau/alpha/beta: CABA constants. recency_half_life_s: optional recency weighting
    (seconds of media time). hysteresis: a segment is re-merged early only when it
    holds more than (1 + hysteresis) x its budget, so each segment is rewritten
    O(log) times over a stream; the cap itself is always enforced exactly.
    index_save_every: persist the FAISS index every N adds (it is repaired from the
    manifest at open anyway). cache_segments: how many recently read segments stay in RAM
    (an LRU of their stored tensors); everything else is read from its shard when asked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cap_tokens: int | None = Field(None, ge=1)
    cap_bytes: int | None = Field(None, ge=1)
    dtype: Literal["float16", "bfloat16", "int8", "int4"] = Field(
        "float16", validation_alias=AliasChoices("dtype", "token_dtype")
    )
    index_factory: str = "auto"
    index_switch_at: int = Field(20_000, ge=1)
    metric: Literal["ip", "l2"] = "ip"
    tau: float = Field(1.2, gt=0)
    alpha: float = 0.9
    beta: float = 0.1
    recency_half_life_s: float | None = Field(None, gt=0)
    hysteresis: float = Field(0.25, ge=0)
    index_save_every: int = Field(64, ge=1)
    use_gpu_index: bool = True
    cache_segments: int = Field(16, ge=0)

    @model_validator(mode="after")
    def _needs_a_cap(self) -> MemoryConfig:
        if self.cap_tokens is None and self.cap_bytes is None:
            raise ValueError("set cap_tokens and/or cap_bytes: the memory needs a global cap")
        if self.index_factory != "auto" and not self.index_factory.startswith("IDMap"):
            raise ValueError(
                f"index_factory must start with 'IDMap2,' or 'IDMap,' (ids are segment ids), got {self.index_factory!r}"
            )
        return self

    @property
    def token_dtype(self) -> str:
        return self.dtype

    def token_bytes(self, dim: int, levels: int = 0) -> int:
        """Stored bytes of one token of width ``dim``: its vector in ``dtype`` plus provenance,
        and one more vector per DeepStack level (``levels``, 0 for towers without them)."""
        return (1 + levels) * vector_bytes(dim, self.dtype) + PROVENANCE_BYTES

    def token_cap(self, dim: int, levels: int = 0) -> int:
        """The cap in tokens for vectors of width ``dim`` with ``levels`` DeepStack levels."""
        caps = []
        if self.cap_tokens is not None:
            caps.append(self.cap_tokens)
        if self.cap_bytes is not None:
            caps.append(self.cap_bytes // self.token_bytes(dim, levels))
        return min(caps)


# the MemorySettings fields an ingest chooses (the rest come from the memory itself)
INGEST_FIELDS = ("model", "embedder", "compressor", "ratio", "fps")


class MemorySettings(BaseModel):
    """What a memory remembers, validated before it is saved.

    model / embedder: the Video-LLM whose tokens and the retrieval embedder whose keys the
    memory holds (names as given: hub ids or directories). compressor, ratio, fps: how new
    segments are made. token_dim / key_dim: the widths of the stored tokens and keys, set
    by the first add and fixed from then on; deepstack_levels likewise (None: 0). store: the
    :class:`MemoryConfig` (None until the memory is first opened with a cap). None means "not recorded yet".
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str | None = None
    embedder: str | None = None
    compressor: str | None = None
    ratio: float | None = Field(None, gt=0, le=1)
    fps: float | None = Field(None, gt=0)
    token_dim: int | None = Field(None, ge=1)
    key_dim: int | None = Field(None, ge=1)
    deepstack_levels: int | None = Field(None, ge=0)
    store: MemoryConfig | None = None

    def ingest(self) -> dict[str, object]:
        """The ingest settings (model, embedder, compressor, ratio, fps) as a dict."""
        return {name: getattr(self, name) for name in INGEST_FIELDS}
