"""The settings store of a memory: one validated :class:`MemorySettings`, in one place.

The settings are one JSON row (``meta.settings``) of the manifest. Older memories kept
them in three places: ``meta.config`` (the MemoryConfig), ``meta.dim`` / ``meta.key_dim``
(the widths) and a ``streamvid.json`` file beside the manifest (model, embedder,
compressor, ratio, fps). :func:`stored_settings` reads those once; the writer then saves
the one row, removes the old keys and the file (:func:`save_settings`). A reader only
reads: an unmigrated memory stays as it is until a writer opens it.

Every change is validated (pydantic, then the width and model rules below) before
anything is written, and only the memory's writer writes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from memory.config import INGEST_FIELDS, MemoryConfig, MemorySettings
from memory.errors import SettingsConflictError
from memory.manifest import SCHEMA_VERSION, Manifest
from streamvid.errors import ConfigError

__all__ = [
    "LEGACY_SETTINGS_FILE",
    "check_widths",
    "merge_settings",
    "stored_settings",
]

log = logging.getLogger(__name__)

LEGACY_SETTINGS_FILE = "streamvid.json"
_LEGACY_META = ("config", "dim", "key_dim")

def stored_settings(manifest: Manifest, root: Path) -> tuple[MemorySettings, bool]:
    """(the memory's settings, whether they still sit in the old places and need migrating)."""
    raw = manifest.meta("settings")
    legacy_file = root / LEGACY_SETTINGS_FILE
    if raw is not None:
        return MemorySettings.model_validate_json(raw), legacy_file.exists()
    fields: dict[str, Any] = {}
    if legacy_file.exists():
        try:
            old = json.loads(legacy_file.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{legacy_file} is unreadable ({err}); delete it and give the settings again") from None
        fields.update({k: v for k, v in old.items() if k in INGEST_FIELDS and v is not None})
    config = manifest.meta("config")
    if config is not None:
        fields["store"] = json.loads(config)
    for name, key in (("token_dim", "dim"), ("key_dim", "key_dim")):
        value = manifest.meta_int(key)
        if value is not None:
            fields[name] = value
    needs = bool(fields) or legacy_file.exists()
    try:
        return MemorySettings(**fields), needs
    except ValidationError as err:
        raise ConfigError(f"the settings stored in {root} are invalid ({_first(err)}); fix or remove them") from None


def merge_settings(current: MemorySettings, root: Path, **given: Any) -> MemorySettings:
    """``current`` updated with the values ``given`` (None = keep), validated; nothing is saved.

    ``store`` may be a MemoryConfig or a dict of its fields (merged over the stored ones).
    Widths (token_dim, key_dim) are fixed once set: a different one raises
    :class:`SettingsConflictError`.
    """
    given = {k: v for k, v in given.items() if v is not None}
    check_widths(current, root, token_dim=given.get("token_dim"), key_dim=given.get("key_dim"))
    store = given.pop("store", None)
    fields = current.model_dump()
    fields.update(given)
    try:
        if isinstance(store, MemoryConfig):
            fields["store"] = store
        elif store is not None:
            fields["store"] = MemoryConfig(**{**(fields.get("store") or {}), **store})
        return MemorySettings(**fields)
    except ValidationError as err:
        raise ConfigError(f"bad memory settings for {root}: {_first(err)}") from None


def check_widths(
    settings: MemorySettings,
    root: Path,
    *,
    token_dim: int | None = None,
    key_dim: int | None = None,
    model: str | None = None,
    embedder: str | None = None,
) -> None:
    """Raise :class:`SettingsConflictError` when a model's token width or an embedder's key
    width does not fit the memory (widths not recorded yet fit anything)."""
    if token_dim is not None and settings.token_dim is not None and token_dim != settings.token_dim:
        made = f"model {model!r}" if model else "the given model"
        by = f" (setting token_dim, from model {settings.model!r})" if settings.model else " (setting token_dim)"
        raise SettingsConflictError(
            f"memory {root} holds tokens of width {settings.token_dim}{by}; {made} makes width {token_dim}. "
            "Use one memory per model: pass the memory's --model or use another --memory"
        )
    if key_dim is not None and settings.key_dim is not None and key_dim != settings.key_dim:
        made = f"embedder {embedder!r}" if embedder else "the given embedder"
        by = f" (setting key_dim, from embedder {settings.embedder!r})" if settings.embedder else " (setting key_dim)"
        raise SettingsConflictError(
            f"memory {root} has keys of {settings.key_dim} dims{by}; {made} makes {key_dim} dims. "
            "Use the same embedder: pass the memory's --embedder or use another --memory"
        )


def save_settings(manifest: Manifest, conn: sqlite3.Connection, settings: MemorySettings) -> None:
    """Write ``settings`` as the one settings row (inside the writer's transaction) and drop
    the old places. The caller removes the legacy file after the commit (:func:`drop_legacy_file`)."""
    manifest.set_meta("settings", settings.model_dump_json(), conn)
    manifest.delete_meta(_LEGACY_META, conn)
    manifest.set_meta("schema_version", SCHEMA_VERSION, conn)


def drop_legacy_file(root: Path) -> None:
    path = root / LEGACY_SETTINGS_FILE
    if path.exists():
        path.unlink()
        log.info("%s: settings moved from %s into the manifest", root, LEGACY_SETTINGS_FILE)


def _first(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e.get("loc", ())) or "settings"
    return f"{where}: {e.get('msg', 'invalid')}"
