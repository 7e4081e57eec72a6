"""The settings a memory remembers (model, embedder, compressor, ratio, fps) in ``streamvid.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cli.common import DEFAULT_EMBEDDER, DEFAULT_MODEL

__all__ = ["SETTINGS", "load_settings"]

SETTINGS = "streamvid.json"


def load_settings(memory: Path, **given: Any) -> dict[str, Any]:
    """The memory's remembered settings, updated with what was given now."""
    path = memory / SETTINGS
    stored = json.loads(path.read_text()) if path.exists() else {}
    merged = {
        "model": DEFAULT_MODEL,
        "embedder": DEFAULT_EMBEDDER,
        "compressor": "infomerge",
        "ratio": 0.15,
        "fps": 1.0,
        **stored,
        **{k: v for k, v in given.items() if v is not None},
    }
    memory.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2))
    return merged
