"""``streamvid serve`` (the HTTP service) and ``streamvid mcp`` (the same tools over MCP stdio).

Both open the memory as its one writer first (a second writer fails at once, before any model
loads), settle its settings as ``ingest`` does, load the models, then hand everything to
``agents.service``. FastAPI, uvicorn and the MCP SDK are imported inside the commands (the
``serve`` extra), so ``--help`` stays fast and the base install lean.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import (
    CHECKS,
    CapOpt,
    CliError,
    CompressorOpt,
    DeviceOpt,
    EmbedderOpt,
    FpsOpt,
    MemoryOpt,
    ModelOpt,
    RatioOpt,
    err_console,
)

__all__ = ["mcp", "serve"]

SERVE_HINT = "pip install 'streamvid[serve]'"

MediaRootOpt = Annotated[
    list[Path] | None,
    typer.Option("--media-root", help="a directory file streams may come from (repeat for more; none: no files)"),
]


def _keys(api_key: str | None) -> list[str]:
    """--api-key, else STREAMVID_API_KEY; several keys separated by commas."""
    raw = api_key if api_key is not None else os.environ.get("STREAMVID_API_KEY", "")
    keys = [k.strip() for k in raw.split(",") if k.strip()]
    for k in keys:
        if len(k) < 8:
            raise CliError("an API key must be at least 8 characters", hint="use a long random key", exit_code=2)
    return keys


def _media_roots(roots: list[Path] | None) -> list[Path]:
    out = []
    for root in roots or []:
        if not root.is_dir():
            raise CliError(f"--media-root {root}: not a directory", exit_code=2)
        out.append(root.resolve())
    return out


def _require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import mcp  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise CliError(f"the service needs the serve extra ({err.name} is missing)", hint=SERVE_HINT) from None


def _build_service(
    memory: Path,
    given: dict[str, Any],
    cap_tokens: int | None,
    device: str | None,
    config_args: dict[str, Any],
) -> tuple[Any, Any]:
    """(the Service, the memory it writes), models loaded and checked against the memory."""
    from agents.service.core import Service, ServiceConfig
    from cli.commands import _check_widths, _load_models, _open_memory
    from cli.settings import resolve_settings
    from streamvid.compress import create_compressor

    mem = _open_memory(memory, cap_tokens)  # the writer lock first: fails before any model loads
    try:
        settings = resolve_settings(mem, **given).ingest()
        llm, emb = _load_models(settings, device)
        _check_widths(mem, settings, llm, emb)
        compressor = create_compressor(settings["compressor"], ratio=settings["ratio"])
        config = ServiceConfig(fps=settings["fps"], **config_args)
        return Service(mem, llm, emb, compressor, config), mem
    except BaseException:
        mem.close()
        raise


def serve(
    memory: MemoryOpt,
    model: ModelOpt = None,
    embedder: EmbedderOpt = None,
    compressor: CompressorOpt = None,
    ratio: RatioOpt = None,
    cap_tokens: CapOpt = None,
    fps: FpsOpt = None,
    host: Annotated[
        str, typer.Option(help="address to listen on (beyond loopback only with an API key)")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port", min=1, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(help="API key(s), comma-separated; default: $STREAMVID_API_KEY", show_default=False),
    ] = None,
    media_root: MediaRootOpt = None,
    ask_per_minute: Annotated[
        float, typer.Option(help="questions per minute per key (> 0)", callback=CHECKS["positive_float"])
    ] = 60.0,
    max_body_bytes: Annotated[
        int, typer.Option(help="largest request body accepted (>= 1)", callback=CHECKS["positive_int"])
    ] = 65536,
    max_new_tokens: Annotated[
        int, typer.Option(help="answer length limit (>= 1)", callback=CHECKS["positive_int"])
    ] = 128,
    device: DeviceOpt = None,
) -> None:
    """Serve a memory over HTTP: streams, questions (REST + SSE), events, alerts, a web page at /,
    MCP at /mcp, Prometheus metrics at /metrics. Streams and alert rules survive restarts."""
    keys = _keys(api_key)
    from agents.service.security import ServiceError, check_bind

    try:
        check_bind(host, keys)
    except ServiceError as err:
        raise CliError(str(err), exit_code=2) from None
    roots = _media_roots(media_root)
    _require_serve_extra()
    import uvicorn

    from agents.service.app import create_app

    service, mem = _build_service(
        memory,
        {"model": model, "embedder": embedder, "compressor": compressor, "ratio": ratio, "fps": fps},
        cap_tokens,
        device,
        {
            "keys": keys,
            "media_roots": roots,
            "ask_per_minute": ask_per_minute,
            "max_body_bytes": max_body_bytes,
            "max_new_tokens": max_new_tokens,
        },
    )
    try:
        app = create_app(service, host=host)
        auth = "API key required on /v1 and /mcp" if keys else "no API key: loopback only, /v1 open to local users"
        err_console.print(f"streamvid serving {memory} on http://{host}:{port} ({auth})", soft_wrap=True)
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        service.close()
        mem.close()


def mcp(
    memory: MemoryOpt,
    model: ModelOpt = None,
    embedder: EmbedderOpt = None,
    compressor: CompressorOpt = None,
    ratio: RatioOpt = None,
    cap_tokens: CapOpt = None,
    fps: FpsOpt = None,
    media_root: MediaRootOpt = None,
    device: DeviceOpt = None,
) -> None:
    """The service's tools (ask, search moments, list streams, add stream) over MCP on stdin/stdout,
    for a local agent. Holds the memory's writer lock; while 'streamvid serve' runs, use its /mcp."""
    roots = _media_roots(media_root)
    _require_serve_extra()
    import anyio

    from agents.service.mcp_server import build_mcp

    service, mem = _build_service(
        memory,
        {"model": model, "embedder": embedder, "compressor": compressor, "ratio": ratio, "fps": fps},
        cap_tokens,
        device,
        {"media_roots": roots},
    )
    try:
        service.start()
        anyio.run(build_mcp(service).run_stdio_async)
    finally:
        service.close()
        mem.close()
