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

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.common import DEFAULT_EMBEDDER, DEFAULT_MODEL

if TYPE_CHECKING:  # the memory (and torch) load inside the commands, not at import
    from memory import MemorySettings, TokenMemory

__all__ = ["DEFAULTS", "load_settings", "resolve_settings"]

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


def load_settings(memory: Path, **given: Any) -> dict[str, Any]:
    """Transitional, for callers that load settings before opening the memory: the ingest
    settings of the memory at ``memory`` as a dict, validated first. An existing memory's
    settings are saved, only when they changed, as its writer: the writer lock is taken
    briefly (MemoryLockedError while another process writes; when this process already
    holds it, the settings are used unsaved). A new memory's are kept in this process and
    saved by the TokenMemory writer that creates it (nothing is created here). Prefer
    :func:`resolve_settings` on an open TokenMemory."""
    from memory import MemoryLockedError, TokenMemory, write_settings
    from memory.manifest import Manifest
    from memory.settings import merge_settings, stage_settings, stored_settings

    _check_compressor(given.get("compressor"))
    if not TokenMemory.exists(memory):
        wanted = {**DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
        return stage_settings(memory, **wanted).ingest()
    manifest = Manifest(memory, read_only=True)
    try:
        stored, needs = stored_settings(manifest, memory)
    finally:
        manifest.close()
    current = stored.ingest()
    fill = {k: v for k, v in DEFAULTS.items() if current.get(k) is None}
    wanted = {**fill, **{k: v for k, v in given.items() if v is not None}}
    if needs or any(current.get(k) != v for k, v in wanted.items()):
        try:
            return write_settings(memory, **wanted).ingest()
        except MemoryLockedError as err:
            if err.pid != os.getpid():
                raise
            # this process already has the memory open (as a reader would, for ask): use, don't save
            return merge_settings(stored, memory, **wanted).ingest()
    return current
