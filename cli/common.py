"""What every command shares: consoles, option types and their checks, one-line errors,
checkpoint resolution (hub or local), quiet libraries, and the ingest progress display.

Nothing here imports torch, transformers or the memory at import time: ``--help`` and
argument errors stay fast. ``--device`` imports torch in its check, only when given.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer
from rich.console import Console

from streamvid.clock import format_clock
from streamvid.errors import StreamvidError

__all__ = [
    "DEFAULT_CAP",
    "DEFAULT_EMBEDDER",
    "DEFAULT_MODEL",
    "OPTIONS",
    "CapOpt",
    "CliError",
    "CompressorOpt",
    "DeviceOpt",
    "EmbedderOpt",
    "FpsOpt",
    "IngestProgress",
    "MaxReconnectsOpt",
    "MemoryOpt",
    "ModelOpt",
    "NewDirs",
    "RatioOpt",
    "ReconnectTimeoutOpt",
    "StreamOpt",
    "check_device",
    "require",
    "configure_logging",
    "restore_logging",
    "console",
    "err_console",
    "quiet_libraries",
    "report_error",
    "resolve_checkpoint",
]

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
DEFAULT_EMBEDDER = "google/siglip-base-patch16-224"  # streamvid.embedders.DEFAULT_EMBEDDER, without importing torch
DEFAULT_CAP = 200_000

console = Console()  # results: stdout
err_console = Console(stderr=True)  # errors, warnings, progress: stderr


@dataclass
class GlobalOptions:
    """The options given before the command (``streamvid --debug ask ...``); reset every run."""

    debug: bool = False
    verbose: bool = False


OPTIONS = GlobalOptions()


# -- errors --------------------------------------------------------------------------


class CliError(StreamvidError):
    """An error the CLI found itself: one line, an optional hint line, an exit code (1 runtime, 2 usage)."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.args[0]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _print_error(message: str, hint: str | None = None) -> None:
    typer.secho("error: ", fg="red", bold=True, err=True, nl=False)
    typer.echo(_one_line(message), err=True)
    if hint:
        typer.echo(f"hint: {_one_line(hint)}", err=True)


def _click_exceptions() -> Any:
    """The click exceptions typer's parser raises: its vendored click (typer >= 0.2x), else click."""
    try:
        from typer import _click

        return _click.exceptions
    except ImportError:
        import click

        return click.exceptions


def report_error(err: BaseException) -> int:
    """Print ``err`` as one line (plus a hint line) on stderr; the traceback first with ``--debug``.
    Returns the exit code: 2 for usage errors, 1 for runtime failures, 130 for Ctrl-C."""
    click = _click_exceptions()
    if OPTIONS.debug and not isinstance(err, click.UsageError):
        traceback.print_exception(err, file=sys.stderr)
    no_args = getattr(click, "NoArgsIsHelpError", None)
    if no_args is not None and isinstance(err, no_args):  # the help, already printed or in the message
        text = err.format_message()
        if text.strip():
            typer.echo(text)
        return err.exit_code
    if isinstance(err, click.UsageError):
        ctx = err.ctx
        hint = f"see '{ctx.command_path} --help'" if ctx is not None else None
        _print_error(err.format_message(), hint)
        return 2
    if isinstance(err, click.ClickException):
        _print_error(err.format_message())
        return err.exit_code
    if isinstance(err, (KeyboardInterrupt, typer.Abort)):
        _print_error("interrupted")
        return 130
    if isinstance(err, StreamvidError):
        _print_error(str(err), getattr(err, "hint", None))
        return getattr(err, "exit_code", 1)
    errors = getattr(err, "errors", None)  # a pydantic ValidationError: its fields, on one line
    if callable(errors):
        try:
            text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors())
        except Exception:  # noqa: BLE001 - fall back to the plain message
            text = str(err)
    else:
        text = str(err) or "(no message)"
    _print_error(f"{type(err).__name__}: {text}", None if OPTIONS.debug else "run with --debug to see the traceback")
    return 1


# -- option checks ---------------------------------------------------------------------


def _positive_float(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number > 0, got {value}")
    return value


def _time_float(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"must be a time in seconds >= 0, got {value}")
    return value


def _ratio(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and 0 < value <= 1):
        raise typer.BadParameter(f"must be a fraction in (0, 1], got {value}")
    return value


def _not_blank(value: str | None) -> str | None:
    if value is not None and not value.strip():
        raise typer.BadParameter("must not be empty")
    return value


def available_devices() -> list[str]:
    """cpu; cuda and cuda:N for every device torch sees; mps when available (imports torch)."""
    import torch

    devices = ["cpu"]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count:
        devices += ["cuda", *(f"cuda:{i}" for i in range(count))]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def check_device(value: str | None) -> str | None:
    """A --device value this machine has; imports torch only when one is given."""
    if value is None:
        return None
    devices = available_devices()
    if value.strip().lower() not in devices:
        raise typer.BadParameter(f"{value!r} is not available here; choose one of: {', '.join(devices)}")
    return value.strip().lower()


def _memory_dir(value: Path | None) -> Path | None:
    if value is not None and value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file; pass a memory directory (new or existing)")
    return value


def _nonnegative_int(value: int | None) -> int | None:
    if value is not None and value < 0:
        raise typer.BadParameter(f"must be >= 0, got {value}")
    return value


def _positive_int(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise typer.BadParameter(f"must be >= 1, got {value}")
    return value


ModelOpt = Annotated[
    str | None, typer.Option(help=f"Video-LLM (hub name or dir); default: the memory's, else {DEFAULT_MODEL}")
]
EmbedderOpt = Annotated[
    str | None,
    typer.Option(
        help=f"retrieval embedder (hub name or dir), or 'none'; default: the memory's, else {DEFAULT_EMBEDDER}"
    ),
]
DeviceOpt = Annotated[
    str | None, typer.Option(help="cpu, cuda, cuda:N or mps (default: cuda when available)", callback=check_device)
]
MemoryOpt = Annotated[Path, typer.Option(help="memory directory (created if new)", callback=_memory_dir)]
CompressorOpt = Annotated[str | None, typer.Option(help="compressor name; default: the memory's, else infomerge")]
RatioOpt = Annotated[
    float | None,
    typer.Option(
        help="fraction of visual tokens kept per segment, in (0, 1]; default: the memory's, else 0.15", callback=_ratio
    ),
]
CapOpt = Annotated[
    int | None,
    typer.Option(
        help=f"global cap on tokens held (>= 1); default: the memory's, else {DEFAULT_CAP}", callback=_positive_int
    ),
]
FpsOpt = Annotated[
    float | None,
    typer.Option(help="frames sampled per second (> 0); default: the memory's, else 1", callback=_positive_float),
]
MaxReconnectsOpt = Annotated[
    int, typer.Option(help="reconnect attempts in a row before a live source is given up", callback=_nonnegative_int)
]
ReconnectTimeoutOpt = Annotated[
    float | None,
    typer.Option(help="give up on a live source that sends no frame for this many seconds", callback=_positive_float),
]
StreamOpt = Annotated[str, typer.Option(help="stream id for these segments", callback=_not_blank)]
FromStartOpt = Annotated[
    bool,
    typer.Option(
        "--from-start", help="ingest the file again from 0 s, replacing its stream (default: resume where it stopped)"
    ),
]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="fail at the first hole in the video (corrupt data, a gap, an early end)")
]

CHECKS = {  # for commands that build their own options
    "positive_float": _positive_float,
    "positive_int": _positive_int,
    "nonnegative_int": _nonnegative_int,
    "ratio": _ratio,
    "time": _time_float,
    "device": check_device,
    "not_blank": _not_blank,
}


# -- logging and library noise -----------------------------------------------------------


class _StderrHandler(logging.Handler):
    """'warning: message' lines on the current sys.stderr (which test runners swap)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            typer.echo(f"{record.levelname.lower()}: {_one_line(record.getMessage())}", err=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


_LOGGERS = ("streamvid", "memory", "agents", "bench")
_saved_levels: dict[str, int] = {}


def configure_logging(verbose: bool) -> None:
    """streamvid's own warnings on stderr, one line each; info too with --verbose. Undone by
    :func:`restore_logging` when the command returns (the CLI also runs inside test processes)."""
    restore_logging()
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        _saved_levels[name] = logger.level
        logger.addHandler(_StderrHandler())
        logger.setLevel(logging.INFO if verbose else logging.WARNING)


def restore_logging() -> None:
    for name, level in _saved_levels.items():
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(h)
        logger.setLevel(level)
    _saved_levels.clear()


def quiet_libraries(verbose: bool) -> None:
    """transformers / huggingface_hub: no warnings and no 'Loading weights' bars unless --verbose.
    Imports transformers: call it where a model is about to be loaded anyway."""
    import huggingface_hub.utils as hub_utils
    import transformers

    if verbose:
        transformers.logging.set_verbosity_warning()
        transformers.logging.enable_progress_bar()
        hub_utils.enable_progress_bars()
    else:
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        hub_utils.disable_progress_bars()


# -- checkpoints: a local directory, a downloaded hub name, or the reachable hub -----------------

_TRUE = {"1", "true", "yes", "on"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@lru_cache(maxsize=8)
def _reachable(host: str, port: int, timeout: float) -> bool:
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # bounds a hanging name lookup too
    thread.start()
    thread.join(timeout + 0.5)
    return bool(ok)


def hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub (or the configured proxy), remembered for the process."""
    proxy = next(
        (os.environ[v] for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(v)), None
    )
    url = urlsplit(proxy if proxy and "://" in proxy else (f"http://{proxy}" if proxy else hub_endpoint()))
    if not url.hostname:
        return False
    return _reachable(url.hostname, url.port or (443 if url.scheme == "https" else 80), timeout)


def _cached_snapshot(name: str) -> str | None:
    """The downloaded snapshot directory of hub repo ``name`` (with its config.json), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # noqa: BLE001 - a malformed name or cache means: not downloaded
        return None
    return str(Path(found).parent) if isinstance(found, str) else None


def resolve_checkpoint(name: str, option: str) -> str:
    """What to hand ``from_pretrained`` for ``--model``/``--embedder`` NAME: a local directory as is;
    a hub name as is while the hub is reachable; its downloaded snapshot directory when the hub is
    offline (HF_HUB_OFFLINE) or unreachable. Anything else fails here, at once, writing nothing."""
    path = Path(name).expanduser()
    alternative = " or --embedder none" if option == "--embedder" else ""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CliError(
                f"{option} {name}: no config.json in this directory",
                hint=f"pass {option} DIR (a checkpoint directory with a config.json){alternative}",
            )
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(name):
        raise CliError(
            f"{option} {name}: no such checkpoint directory",
            hint=f"pass {option} DIR (a directory with a config.json){alternative}, or a hub name",
        )
    offline = hub_offline()
    if not offline and hub_reachable():
        return name
    cached = _cached_snapshot(name)
    if cached is not None:
        return cached
    why = "HF_HUB_OFFLINE is set" if offline else f"the hub ({hub_endpoint()}) cannot be reached"
    raise CliError(
        f"{option} {name!r} is not downloaded and {why}",
        hint=f"pass {option} DIR (a local checkpoint directory){alternative}, or run once online with "
        "HF_HUB_OFFLINE unset to download it (afterwards HF_HUB_OFFLINE=1 uses the downloaded copy)",
    )


# -- directories a failed run must not leave behind ---------------------------------------------


class NewDirs:
    """The directories of ``path`` (and its parents) that do not exist yet; :meth:`discard` removes
    what a failed run created of them (``path`` with its contents, parents only when empty)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.created = [p for p in (path, *path.parents) if not p.exists()]

    def discard(self) -> None:
        if self.path in self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        for parent in self.created[1:]:
            try:
                parent.rmdir()
            except OSError:
                break


# -- progress --------------------------------------------------------------------------------


class IngestProgress:
    """An ingest's progress on stderr, from its stats (polled, so any thread may run the ingest).

    On a terminal: a rich bar with percent and time left for a file of known duration (frames,
    segments and drops for live sources). Otherwise: one plain line every ``every`` seconds.
    """

    def __init__(self, name: str, total: float | None, *, every: float = 10.0, terminal: bool | None = None) -> None:
        self.name = name
        self.total = total if total and total > 0 else None
        self.every = every
        self.start = time.monotonic()
        self._last_line = self.start
        self.terminal = err_console.is_terminal if terminal is None else terminal
        self._bar: Any = None
        if self.terminal:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeRemainingColumn(),
                console=err_console,
                transient=False,
            )
            self._task = self._bar.add_task(name, total=self.total, detail="")
            self._bar.start()

    def detail(self, stats: Any) -> str:
        wall = time.monotonic() - self.start
        rtf = stats.media_seconds / wall if wall > 0 else 0.0
        text = f"{stats.frames_sampled} frames, {stats.segments} segments, {rtf:.1f}x real time"
        if stats.frames_dropped:
            text += f", {stats.frames_dropped} dropped"
        if stats.reconnects:
            text += f", {stats.reconnects} reconnects"
        return text

    def line(self, stats: Any) -> str:
        """The plain progress line: 'NAME: 40% (12.0 of 30.0 s), ..., about 0:14 left'."""
        wall = time.monotonic() - self.start
        if self.total is None:
            return f"{self.name}: {self.detail(stats)}, {format_clock(wall)} elapsed"
        done = min(stats.media_seconds / self.total, 1.0)
        left = wall * (1 - done) / done if done > 0 else None
        eta = f", about {format_clock(left)} left" if left is not None else ""
        return f"{self.name}: {done:.0%} ({stats.media_seconds:.1f} of {self.total:.1f} s), {self.detail(stats)}{eta}"

    def set_total(self, total: float | None) -> None:
        """The media duration, once the source knows it (a file's container is opened by the ingest)."""
        if total and total > 0 and self.total is None:
            self.total = total
            if self._bar is not None:
                self._bar.update(self._task, total=total)

    def update(self, stats: Any) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=stats.media_seconds, detail=self.detail(stats))
            return
        now = time.monotonic()
        if now - self._last_line >= self.every:
            self._last_line = now
            typer.echo(self.line(stats), err=True)

    def close(self, stats: Any, finished: bool = False) -> None:
        """Stop the bar; ``finished``: the source ended normally (a file shows 100%)."""
        if self._bar is not None:
            if finished and self.total is not None:
                self._bar.update(self._task, completed=self.total, detail=self.detail(stats))
            self._bar.stop()
            self._bar = None


def require(condition: bool, message: str, hint: str | None = None) -> None:
    """A usage check inside a command: exit 2 with ``message`` unless ``condition``."""
    if not condition:
        raise CliError(message, hint=hint, exit_code=2)
