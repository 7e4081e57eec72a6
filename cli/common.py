"""What every command shares: the console, one-line errors, defaults, option types."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer
from rich.console import Console

__all__ = [
    "DEFAULT_CAP",
    "DEFAULT_EMBEDDER",
    "DEFAULT_MODEL",
    "DeviceOpt",
    "EmbedderOpt",
    "ModelOpt",
    "console",
    "fail",
]

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
DEFAULT_EMBEDDER = "google/siglip-base-patch16-224"  # streamvid.embedders.DEFAULT_EMBEDDER, without importing torch
DEFAULT_CAP = 200_000

console = Console()

ModelOpt = Annotated[str | None, typer.Option(help=f"Video-LLM (hub name or dir); default {DEFAULT_MODEL}")]
EmbedderOpt = Annotated[str | None, typer.Option(help=f"retrieval embedder, or 'none'; default {DEFAULT_EMBEDDER}")]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when available)")]


def fail(err: Exception) -> NoReturn:
    """Print one line and exit 1."""
    console.print(f"[bold red]error:[/] {err}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)
