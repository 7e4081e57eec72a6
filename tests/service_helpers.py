"""Shared pieces of the service tests: a tiny model, a service over a fresh memory, a real
uvicorn server on a loopback port, SSE reading, and polling with a deadline."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from agents.service.app import create_app
from agents.service.core import Service, ServiceConfig
from memory import TokenMemory
from streamvid import create_compressor
from streamvid.embedders import NoEmbedder

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


_LLM: list[Any] = []


def load_llm(root: Path) -> Any:
    """The tiny random-weight LLaVA-OneVision, built and loaded once per test process (each service
    test module would otherwise spend seconds on it)."""
    from bench.random_models import tiny_llava
    from streamvid.models import load_adapter

    if not _LLM:
        _LLM.append(load_adapter(str(tiny_llava(root)), device="cpu", dtype=torch.float32))
    return _LLM[0]


def make_service(llm: Any, memory_dir: Path, media: Path, cap: int = 4000, judge=None, **config: Any) -> Service:
    """A service over a memory opened for writing (the caller closes ``service.memory``)."""
    mem = TokenMemory(memory_dir, cap_tokens=cap)
    settings = {"keys": [KEY], "media_roots": [media], "fps": 2.0, "max_len": 4, "max_new_tokens": 4}
    settings.update(config)
    return Service(
        mem, llm, NoEmbedder(), create_compressor("infomerge", ratio=0.25), ServiceConfig(**settings), judge=judge
    )


def wait_for(check: Callable[[], Any], timeout: float = 60.0, every: float = 0.05, what: str = "condition") -> Any:
    """Poll ``check()`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        threading.Event().wait(every)


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event type, data) from the lines of a text/event-stream body."""
    kind, data = "message", ""
    for line in lines:
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif line == "":
            if data:
                yield kind, json.loads(data)
            kind, data = "message", ""


class LiveServer:
    """``create_app(service)`` under uvicorn on 127.0.0.1:PORT in a thread (lifespan included)."""

    def __init__(self, service: Service, port: int) -> None:
        import uvicorn

        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            create_app(service), host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_for(lambda: self.server.started, 60, what="uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
