"""The settings a memory remembers, as the CLI sees them: defaults, then what is stored, then what
was given now, validated before anything is saved, saved only by the memory's writer.

The store is the memory's own (:class:`memory.MemorySettings`, one row of its manifest; a
``streamvid.json`` left by older versions is read once and migrated by the writer).

    mem = TokenMemory(dir, cap_tokens=...)                # the writer (ingest, watch)
    settings = resolve_settings(mem, model=..., fps=...)  # validated, then saved
    mem = TokenMemory(dir, read_only=True)                # a reader (ask, inspect)
    settings = resolve_settings(mem, model=...)           # validated, never saved
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cli.common import DEFAULT_EMBEDDER, DEFAULT_MODEL

if TYPE_CHECKING:  # the memory (and torch) load inside the commands, not at import
    from memory import MemorySettings, TokenMemory

__all__ = ["DEFAULTS", "resolve_settings"]

# what a memory uses for a setting it has never been given
DEFAULTS: dict[str, Any] = {
    "model": DEFAULT_MODEL,
    "embedder": DEFAULT_EMBEDDER,
    "compressor": "infomerge",
    "ratio": 0.15,
    "fps": 1.0,
}


def _check_compressor(name: str | None) -> None:
    if name is not None:
        from streamvid.compress import list_compressors
        from streamvid.errors import UnknownNameError

        if name not in list_compressors():
            raise UnknownNameError("compressor", name, list_compressors())


def resolve_settings(mem: TokenMemory, **given: Any) -> MemorySettings:
    """The settings ``mem`` (an open TokenMemory) should run with: DEFAULTS, overridden by
    the stored settings, overridden by ``given`` (None = not given). Validated (ConfigError,
    UnknownNameError for a compressor); saved when ``mem`` is the writer, never when it is
    read-only. Returns a :class:`memory.MemorySettings` whose ingest fields are all set."""
    _check_compressor(given.get("compressor"))
    stored = mem.settings.ingest()
    fill = {k: v for k, v in DEFAULTS.items() if stored.get(k) is None}
    wanted = {**fill, **{k: v for k, v in given.items() if v is not None}}
    if mem.read_only:
        return mem.check_settings(**wanted)
    return mem.update_settings(**wanted)
