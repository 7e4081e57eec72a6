"""The HTTP face of a :class:`~agents.service.core.Service`: REST + Server-Sent Events, the web
page at ``/``, Prometheus text at ``/metrics``, the MCP tools at ``/mcp``, OpenAPI at ``/docs``.

Middleware, outermost first: status counting (metrics), the body-size limit, the API key check
(``/v1/*`` and ``/mcp``). Every error leaves as ``{"error", "detail"}`` JSON with a 4xx (or a
500 that says nothing about the code); tracebacks go to the service's log only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.service.core import Service, answer_json
from agents.service.events import sse_format
from agents.service.metrics import CONTENT_TYPE
from agents.service.security import BodyLimit, KeyCheck, RateLimiter, ServiceError, is_loopback
from memory.errors import MemoryStoreError
from streamvid.errors import SourceError, SourceNotFoundError, StreamvidError, UnknownNameError

__all__ = ["create_app"]

log = logging.getLogger(__name__)

WEB = Path(__file__).parent / "web"
INTERNAL = "an unexpected error (logged by the service); retry, or report it with the service log"


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_reconnects: int = Field(5, ge=0, le=1000, description="reconnect attempts of a live source in a row")
    max_len: int | None = Field(None, ge=2, le=64, description="longest segment, in sampled frames")
    pace: float | None = Field(
        None, gt=0, le=1000, description="files: replay at this many times real time, as a camera (default: at once)"
    )


class StreamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(max_length=64, description="stream id: letters, digits, '_', '-', '.'")
    source: str = Field(max_length=2048, description="a file under a media root, an rtsp/http/tcp/udp URL, /dev/videoN")
    options: StreamOptions = Field(default_factory=StreamOptions)


class AskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=2000)
    streams: list[str] | None = Field(None, max_length=32)
    time_range: tuple[float, float] | None = Field(None, description="[start, end] seconds")
    max_visual_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_new_tokens: int | None = Field(None, ge=1, le=512)
    stream: bool = Field(False, description="stream the text as Server-Sent Events")


class AlertIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stream: str = Field(max_length=64)
    rule: str = Field(min_length=1, max_length=500, description="what to watch for, e.g. 'a person enters the door'")
    threshold: float | None = Field(None, ge=0.0, le=2.0, description="novelty a segment needs to be checked")


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": " ".join(str(detail).split())[:1000]}, status, headers=headers)


def _status_of(err: StreamvidError) -> tuple[int, str]:
    if isinstance(err, ServiceError):
        return err.status, err.code
    if isinstance(err, (UnknownNameError, SourceNotFoundError)):
        return 404, "not_found"
    if isinstance(err, SourceError):
        return 422, "bad_source"
    if isinstance(err, MemoryStoreError):
        return 500, "memory_error"
    return 400, "bad_request"


class _CountStatus:
    """ASGI middleware: count responses by status code (streamvid_http_requests_total)."""

    def __init__(self, app: Any, counter: Any) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counted(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.counter.labels(str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counted)


def create_app(service: Service, *, host: str = "127.0.0.1", mcp: bool = True, close_service: bool = True) -> FastAPI:
    """The FastAPI app over ``service``; its lifespan restarts persisted streams and, with
    ``close_service``, stops them at shutdown."""
    cfg = service.config
    limiter = RateLimiter(cfg.ask_per_minute, cfg.ask_burst)
    mcp_server = None
    if mcp:
        from agents.service.mcp_server import build_mcp

        mcp_server = build_mcp(service)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.bus.attach(asyncio.get_running_loop())
        await anyio.to_thread.run_sync(service.start)
        try:
            async with AsyncExitStack() as stack:
                if mcp_server is not None:
                    await stack.enter_async_context(mcp_server.session_manager.run())
                yield
        finally:
            service.bus.close()
            if close_service:
                await anyio.to_thread.run_sync(service.close)

    app = FastAPI(
        title="streamvid",
        description="Questions about live camera feeds and long videos. Every /v1 route needs "
        "'Authorization: Bearer KEY'.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = service

    # -- errors: always {"error", "detail"} -------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = err.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "bad_json", "the body is not valid JSON; send a JSON object")
        parts = [
            f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body') or 'body'}: {e.get('msg')}" for e in errors
        ]
        return _error(422, "invalid_request", "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        detail = err.detail if isinstance(err.detail, str) else "request refused"
        if err.status_code == 404:
            detail = f"no route {request.url.path}; see /docs"
        return _error(err.status_code, code, detail, getattr(err, "headers", None))

    @app.exception_handler(StreamvidError)
    async def refused(request: Request, err: StreamvidError) -> JSONResponse:
        status, code = _status_of(err)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, err)
        return _error(status, code, str(err), getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return _error(500, "internal", INTERNAL)

    # -- open routes ------------------------------------------------------------------------------

    @app.get("/healthz", tags=["service"])
    def healthz() -> JSONResponse:
        if not service.ready:
            return _error(503, "starting", "the service is starting or stopping")
        return JSONResponse({"status": "ok", "streams": len(service.streams.ids())})

    @app.get("/metrics", tags=["service"])
    def metrics() -> Response:
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=WEB), name="static")

    # -- /v1 --------------------------------------------------------------------------------------

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(HTTPBearer(auto_error=False))])

    @v1.get("/streams", tags=["streams"])
    def list_streams() -> dict[str, Any]:
        return service.snapshot()

    @v1.post("/streams", status_code=201, tags=["streams"])
    def add_stream(body: StreamIn) -> dict[str, Any]:
        options = body.options.model_dump(exclude_none=True)
        return service.add_stream(body.id, body.source, options)

    @v1.get("/streams/{stream_id}", tags=["streams"])
    def get_stream(stream_id: str) -> dict[str, Any]:
        return service.streams.status(stream_id)[0]

    @v1.delete("/streams/{stream_id}", tags=["streams"])
    def delete_stream(stream_id: str, purge: bool = False) -> dict[str, Any]:
        return service.remove_stream(stream_id, purge=purge)

    @v1.post("/ask", tags=["questions"], response_model=None)
    async def ask(body: AskIn, request: Request) -> Any:
        limiter.take(request.scope.get("state", {}).get("api_key", "local"))
        kwargs: dict[str, Any] = {
            "streams": body.streams,
            "time_range": tuple(body.time_range) if body.time_range is not None else None,
            "max_visual_tokens": body.max_visual_tokens,
            "max_new_tokens": body.max_new_tokens,
        }
        service.check_streams(body.streams)  # unknown streams: a 404 before any streaming starts
        if not body.stream:
            answer = await anyio.to_thread.run_sync(lambda: service.ask(body.question, **kwargs))
            return answer_json(answer)
        return StreamingResponse(
            _streamed_answer(service, body.question, kwargs),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @v1.get("/search", tags=["questions"])
    def search(
        q: Annotated[str, Query(min_length=1, max_length=2000)],
        k: Annotated[int, Query(ge=1, le=100)] = 5,
        stream: Annotated[list[str] | None, Query()] = None,
    ) -> dict[str, Any]:
        return {"moments": service.search(q, k, stream)}

    @v1.get("/segments", tags=["segments"])
    def segments(
        stream: str | None = None,
        start: Annotated[float | None, Query(ge=0)] = None,
        end: Annotated[float | None, Query(ge=0)] = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    ) -> dict[str, Any]:
        return {
            "segments": service.segments(stream, start, end, limit),
            "token_cap": service.memory.token_cap,
            "tokens_held": service.memory.tokens_held,
        }

    @v1.get("/segments/{segment_id}/thumbnail.jpg", tags=["segments"], response_class=FileResponse)
    def thumbnail(segment_id: int) -> FileResponse:
        return FileResponse(service.thumbnail(segment_id), media_type="image/jpeg")

    @v1.get("/events", tags=["events"])
    async def events(
        request: Request, last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None
    ) -> StreamingResponse:
        after = int(last_event_id) if last_event_id is not None and last_event_id.isdigit() else None

        async def feed() -> AsyncIterator[str]:
            yield "retry: 2000\n: connected\n\n"
            async for event in service.bus.subscribe(after, ping=cfg.sse_ping):
                if event is None:
                    yield ": ping\n\n"
                else:
                    yield sse_format(event.type, event.data, event.id)

        return StreamingResponse(
            feed(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    @v1.get("/events/recent", tags=["events"])
    def recent_events(after: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
        return {"events": [{"id": e.id, "type": e.type, "data": e.data, "at": e.at} for e in service.bus.recent(after)]}

    @v1.post("/alerts", status_code=201, tags=["alerts"])
    def add_alert(body: AlertIn) -> dict[str, Any]:
        return service.add_alert(body.stream, body.rule, body.threshold)

    @v1.get("/alerts", tags=["alerts"])
    def list_alerts() -> dict[str, Any]:
        return {"alerts": service.list_alerts()}

    @v1.delete("/alerts/{alert_id}", tags=["alerts"])
    def delete_alert(alert_id: int) -> dict[str, Any]:
        return service.remove_alert(alert_id)

    app.include_router(v1)

    if mcp_server is not None:
        from mcp.server.transport_security import TransportSecuritySettings

        security = None if is_loopback(host) else TransportSecuritySettings(enable_dns_rebinding_protection=False)
        sub = mcp_server.streamable_http_app(
            streamable_http_path="/mcp",
            stateless_http=True,
            json_response=True,
            transport_security=security,
            host=host,
            max_request_body_size=cfg.max_body_bytes,
        )
        app.router.routes.extend(sub.routes)

    app.add_middleware(KeyCheck, keys=cfg.keys)
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    app.add_middleware(_CountStatus, counter=service.metrics.http)
    return app


async def _streamed_answer(service: Service, question: str, kwargs: dict[str, Any]) -> AsyncIterator[str]:
    """``token`` events as the answer decodes, then one ``answer`` event (or ``error``)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()

    def put(item: tuple[str, dict[str, Any]] | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            answer = service.ask(question, on_text=lambda piece: put(("token", {"text": piece})), **kwargs)
            put(("answer", answer_json(answer)))
        except StreamvidError as err:
            status, code = _status_of(err)
            put(("error", {"error": code, "detail": str(err), "status": status}))
        except Exception:  # noqa: BLE001 - logged here; the client gets a JSON error event
            log.exception("streamed answer failed")
            put(("error", {"error": "internal", "detail": INTERNAL, "status": 500}))
        finally:
            put(None)

    threading.Thread(target=work, name="streamvid-ask", daemon=True).start()
    while (item := await queue.get()) is not None:
        yield sse_format(*item)
