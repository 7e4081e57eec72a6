"""The service's event feed: segment stored, stream status changed, alert fired.

Ingest and alert threads :meth:`EventBus.publish`; each SSE client reads its own bounded queue
on the event loop. A client too slow to keep up loses its oldest events (counted in
``dropped``), never slows ingest. Recent events are kept so a reconnecting client can send
``Last-Event-ID`` and get what it missed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

__all__ = ["Event", "EventBus", "sse_format"]


@dataclass(frozen=True)
class Event:
    id: int
    type: str  # "segment", "status", "alert"
    data: dict[str, Any]
    at: float


def sse_format(event: str, data: Any, event_id: int | None = None) -> str:
    """One Server-Sent Event (data as one JSON line)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class EventBus:
    def __init__(self, history: int = 512, queue_size: int = 256) -> None:
        self._ids = itertools.count(1)
        self._history: deque[Event] = deque(maxlen=history)
        self._queue_size = queue_size
        self._subscribers: set[asyncio.Queue[Event | None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self.published = 0
        self.dropped = 0
        self.closed = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop SSE clients run on (set at app start-up)."""
        self._loop = loop
        self.closed = False

    def publish(self, type: str, data: dict[str, Any]) -> Event:
        """From any thread."""
        with self._lock:
            event = Event(next(self._ids), type, data, time.time())
            self._history.append(event)
            self.published += 1
            loop, subscribers = self._loop, list(self._subscribers)
        if loop is not None and subscribers and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._deliver, event, subscribers)
            except RuntimeError:  # the loop closed meanwhile
                pass
        return event

    def _deliver(self, event: Event | None, subscribers: list[asyncio.Queue[Event | None]]) -> None:
        for queue in subscribers:
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
            queue.put_nowait(event)

    def recent(self, after: int = 0, types: set[str] | None = None) -> list[Event]:
        with self._lock:
            return [e for e in self._history if e.id > after and (types is None or e.type in types)]

    async def subscribe(self, after: int | None = None, ping: float = 15.0) -> AsyncIterator[Event | None]:
        """Events as they come (first those after ``after`` still held); None every ``ping`` seconds
        of silence (an SSE comment keeps proxies from closing the stream). Ends when the bus closes."""
        queue: asyncio.Queue[Event | None] = asyncio.Queue(self._queue_size)
        with self._lock:
            self._subscribers.add(queue)
            backlog = [e for e in self._history if after is not None and e.id > after]
        try:
            for event in backlog:
                yield event
            while not self.closed:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=ping)
                except asyncio.TimeoutError:
                    yield None
                    continue
                if event is None:
                    return
                yield event
        finally:
            with self._lock:
                self._subscribers.discard(queue)

    def close(self) -> None:
        """End every subscription (at shutdown, so open SSE responses finish)."""
        self.closed = True
        loop = self._loop
        with self._lock:
            subscribers = list(self._subscribers)
        if loop is not None and not loop.is_closed() and subscribers:
            try:
                loop.call_soon_threadsafe(self._deliver, None, subscribers)
            except RuntimeError:
                pass

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)
