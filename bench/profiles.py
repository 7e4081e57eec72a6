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
    memory_rebalance_segments: int = 1_000
    memory_hours: float = 1.0
    qa_questions: int = 3


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
        memory_rebalance_segments=10_000,
        memory_hours=4.0,
        qa_questions=5,
    ),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"profile must be one of {sorted(PROFILES)}, got {name!r}") from None
