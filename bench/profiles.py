"""Quick and full sizes of every benchmark part, in one place.

``quick`` fits a CI-sized machine (2 CPU cores, minutes); ``full`` is the run that
produces docs/benchmarks.md.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from streamvid.errors import ConfigError

__all__ = ["PROFILES", "Profile", "get_profile"]


class Profile(BaseModel):
    """Sizes per part; every field is read by exactly one part (its prefix names it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    fidelity_frames: int = 32
    fidelity_ratios: tuple[float, ...] = (0.25, 0.15, 0.10, 0.05)
    fidelity_seeds: int = 3  # seeded compressors (random) run with this many seeds: mean and range
    readout_frames: int = 32
    readout_ratios: tuple[float, ...] = (0.25, 0.15, 0.10, 0.05)
    readout_seeds: int = 3
    readout_control_seeds: int = 1  # saliency draws of the random-saliency controls
    planted_ratios: tuple[float, ...] = (0.25, 0.15, 0.10, 0.05)
    planted_seeds: int = 3
    needles_hours: float = 1.0
    compression_encoder_frames: int = 4
    compression_repeats: int = 3
    prefill_dtypes: tuple[str, ...] = ("float32",)
    prefill_repeats: int = 1
    ingest_repeats: int = 3
    memory_search_sizes: tuple[int, ...] = (1_000, 10_000)
    memory_index_sizes: tuple[int, ...] = ()  # the key index alone, filled in bulk
    memory_rebalance_segments: int = 1_000
    memory_hours: float = 1.0
    qa_questions: int = 3
    live_seconds: float = 10.0  # the tiny model's loopback stream (8 fps)
    live_batch_repeats: int = 3  # interleaved alone / shared runs of the tiny model's batching
    live_tower: bool = True  # the SigLIP-so400m-shaped tower's batching and latency (seconds per frame on a CPU)
    live_tower_seconds: float = 75.0  # its loopback stream (2 fps, ingested at 1/15 fps)
    live_tower_repeats: int = 1  # interleaved alone / shared runs of its batching (one frame per stream each)
    live_questions: int = 3  # rounds of questions over the 1 min / 1 h / 10 h memories
    live_lm: bool = True  # the same questions with a Qwen2-0.5B-shaped LM (a prefill of realistic cost)
    # stored-token quality per token_dtype (bench/readout.py run_quantized, bench/needles.py run_dtypes)
    quant_frames: int = 32
    quant_ratios: tuple[float, ...] = (0.25, 0.15, 0.10)
    quant_dtypes: tuple[str, ...] = ("float16", "int8", "int4")
    quant_needle_dtypes: tuple[str, ...] = ("float16", "int8")
    quant_needles_hours: float = 1.0


PROFILES: dict[str, Profile] = {
    "quick": Profile(name="quick"),
    "full": Profile(
        name="full",
        readout_frames=64,
        readout_control_seeds=3,
        needles_hours=2.0,
        compression_encoder_frames=32,
        prefill_dtypes=("float32", "bfloat16"),
        memory_search_sizes=(10_000, 100_000),
        memory_index_sizes=(1_000_000,),
        memory_rebalance_segments=10_000,
        memory_hours=4.0,
        qa_questions=5,
        live_seconds=20.0,
        live_batch_repeats=5,
        live_tower_seconds=130.0,
        live_tower_repeats=2,
        live_questions=9,
        quant_frames=64,
        quant_needles_hours=2.0,
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"profile must be one of {sorted(PROFILES)}, got {name!r}") from None
