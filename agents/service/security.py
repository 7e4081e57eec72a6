"""What the service lets in: API keys, the bind rule, stream ids, sources under media roots,
an allow-list of URL schemes, a body-size limit and a per-key rate limit on questions.

Every refusal is a :class:`ServiceError` with an HTTP status and a one-line ``detail``; the app
turns it into ``{"error", "detail"}`` JSON (agents/service/app.py), never a stack trace.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from streamvid.errors import StreamvidError

__all__ = [
    "DEFAULT_SCHEMES",
    "STREAM_ID",
    "BodyLimit",
    "RateLimiter",
    "ResolvedSource",
    "ServiceError",
    "check_bind",
    "check_stream_id",
    "KeyCheck",
    "is_loopback",
    "key_matches",
    "resolve_source",
]

# URL schemes a stream may use unless the operator narrows them (HLS arrives over http/https)
DEFAULT_SCHEMES = ("rtsp", "rtsps", "http", "https", "tcp", "udp")
# a stream id: a letter or digit, then up to 63 letters, digits, '_', '-', '.'
STREAM_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_WEBCAM = re.compile(r"/dev/video[0-9]{1,3}")


class ServiceError(StreamvidError):
    """A request the service refuses: ``status`` (HTTP), ``code`` (the JSON ``error``), one-line message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}

    def __str__(self) -> str:
        return self.args[0]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or 'localhost') only accepts connections from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys: Sequence[str]) -> None:
    """Refuse to listen beyond loopback without an API key (ConfigError-like ServiceError, status 0)."""
    if not keys and not is_loopback(host):
        raise ServiceError(
            0,
            "no_key",
            f"refusing to listen on {host} without an API key; set STREAMVID_API_KEY or pass --api-key "
            "(or listen on 127.0.0.1)",
        )


def key_matches(given: str | None, keys: Sequence[str]) -> str | None:
    """The configured key ``given`` equals (compared in constant time), or None."""
    if not given:
        return None
    found = None
    for key in keys:
        if hmac.compare_digest(given.encode(), key.encode()):
            found = key
    return found


def check_stream_id(value: Any) -> str:
    """A valid stream id or a 400 naming the rule."""
    if not isinstance(value, str) or not STREAM_ID.fullmatch(value):
        shown = repr(value)[:80]
        raise ServiceError(
            400,
            "bad_stream_id",
            f"stream id {shown} is not valid; use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
        )
    return value


@dataclass(frozen=True)
class ResolvedSource:
    """kind: 'file' (target: the resolved path under a media root), 'network' (the URL) or 'webcam'."""

    kind: str
    target: str


def resolve_source(
    source: Any, media_roots: Sequence[Path], schemes: Sequence[str] = DEFAULT_SCHEMES, *, webcams: bool = True
) -> ResolvedSource:
    """Check a requested source. URLs: the scheme must be allowed. Files: relative paths are
    taken under the first media root; the path, with every symlink followed, must lie inside
    one of ``media_roots`` and be a regular file (so ``..`` and symlinks cannot escape)."""
    if not isinstance(source, str) or not source.strip():
        raise ServiceError(400, "bad_source", "source must be a non-empty string: a file under a media root or a URL")
    if len(source) > 2048 or "\x00" in source or any(ord(c) < 32 for c in source):
        raise ServiceError(400, "bad_source", "source holds control characters or is longer than 2048 characters")
    if "://" in source:
        parts = urlsplit(source)
        scheme = parts.scheme.lower()
        if scheme not in schemes:
            raise ServiceError(
                400, "scheme_not_allowed", f"URL scheme {scheme!r} is not allowed; use one of: {', '.join(schemes)}"
            )
        if not parts.hostname:
            raise ServiceError(400, "bad_source", f"{scheme}:// URL without a host; pass {scheme}://HOST:PORT/...")
        return ResolvedSource("network", source)
    if _WEBCAM.fullmatch(source):
        if not webcams:
            raise ServiceError(403, "webcam_not_allowed", "webcam sources are disabled on this service")
        return ResolvedSource("webcam", source)
    if not media_roots:
        raise ServiceError(
            403, "files_disabled", "file sources are disabled; start the service with --media-root DIR to allow them"
        )
    raw = Path(source)
    if ".." in raw.parts:
        raise ServiceError(
            403, "path_traversal", "'..' is not allowed in a file source; give a path inside a media root"
        )
    roots = [Path(r).resolve() for r in media_roots]
    candidate = raw if raw.is_absolute() else roots[0] / raw
    resolved = candidate.resolve()  # follows every symlink
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise ServiceError(403, "outside_media_root", f"{source} is outside the media roots; put the file under one")
    if not resolved.is_file():
        raise ServiceError(404, "no_such_file", f"{source} is not a file under the media roots")
    return ResolvedSource("file", str(resolved))


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute on average, bursts up to ``burst``."""

    def __init__(self, per_minute: float, burst: int | None = None, clock: Any = time.monotonic) -> None:
        if not (math.isfinite(per_minute) and per_minute > 0):
            raise ValueError("per_minute must be > 0")
        self.rate = per_minute / 60.0
        self.burst = float(burst if burst is not None else max(1, int(per_minute)))
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        """One request for ``key``, or a 429 with Retry-After."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                wait = (1.0 - tokens) / self.rate
                self._buckets[key] = (tokens, now)
                raise ServiceError(
                    429,
                    "rate_limited",
                    f"too many questions for this key; try again in {wait:.1f} s",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )
            self._buckets[key] = (tokens - 1.0, now)


class BodyLimit:
    """ASGI middleware: request bodies larger than ``max_bytes`` get a 413 JSON answer before the
    app reads them (by Content-Length, or by counting a chunked body)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _json(send, 400, "bad_request", "Content-Length is not a number")
                return
            if declared > self.max_bytes:
                await self._too_large(send)
                return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                await self._too_large(send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Any) -> None:
        await _json(send, 413, "body_too_large", f"request body over {self.max_bytes} bytes; send a smaller body")


async def _json(send: Any, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
    """Send a ``{"error", "detail"}`` JSON response from ASGI middleware."""
    import json

    body = json.dumps({"error": code, "detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class KeyCheck:
    """ASGI middleware: paths under ``prefixes`` need ``Authorization: Bearer KEY`` (401 JSON
    otherwise); the matched key is put in ``scope['state']['api_key']`` for the rate limit.
    With no keys configured (loopback only, see :func:`check_bind`) every request passes."""

    def __init__(self, app: Any, keys: Sequence[str], prefixes: Sequence[str] = ("/v1", "/mcp")) -> None:
        self.app = app
        self.keys = list(keys)
        self.prefixes = tuple(prefixes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self._guarded(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        key = "local"
        if self.keys:
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = header.partition(" ")
            matched = key_matches(token.strip(), self.keys) if scheme.lower() == "bearer" else None
            if matched is None:
                why = "missing" if not header else "wrong"
                await _json(
                    send,
                    401,
                    "unauthorized",
                    f"{why} API key; send 'Authorization: Bearer KEY' (the key given to streamvid serve)",
                    {"WWW-Authenticate": "Bearer"},
                )
                return
            key = matched
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)

    def _guarded(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.prefixes)
