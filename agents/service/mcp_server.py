"""The service's tools over MCP (the ``mcp`` Python SDK): ask, search moments, list streams,
add a stream. The same :class:`~agents.service.core.Service` calls as the REST routes, so the
same checks (stream ids, media roots, URL schemes) apply; a refused call is an MCP tool error
with the same one-line message.

Served two ways: ``streamvid mcp`` (stdio, for a local agent) and mounted at ``/mcp`` in
``streamvid serve`` (streamable HTTP, behind the same API key as ``/v1``).
"""

from __future__ import annotations

from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from agents.service.core import Service, answer_json
from streamvid.errors import StreamvidError

__all__ = ["build_mcp"]

INSTRUCTIONS = (
    "Questions about live camera feeds and long videos held in a streamvid memory. "
    "list_streams first; ask answers with the segments it used (stream, start, end seconds); "
    "search_moments finds when something happened; add_stream starts ingesting a file or camera."
)


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking service call off the event loop; refusals become tool errors."""
    try:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
    except StreamvidError as err:
        raise ToolError(str(err)) from None


def build_mcp(service: Service) -> MCPServer:
    server = MCPServer("streamvid", instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool()
    async def ask(
        question: str,
        streams: list[str] | None = None,
        start: float | None = None,
        end: float | None = None,
        max_visual_tokens: int | None = None,
    ) -> dict[str, Any]:
        """Answer a question about the video (all streams, or those named; optionally only
        between start and end seconds). Returns the text, the segments used and timings."""
        time_range = None
        if start is not None or end is not None:
            time_range = (start or 0.0, end if end is not None else float(service.memory.end_time() or 0.0))
        answer = await _call(
            service.ask, question, streams=streams, time_range=time_range, max_visual_tokens=max_visual_tokens
        )
        return answer_json(answer)

    @server.tool()
    async def search_moments(query: str, k: int = 5, streams: list[str] | None = None) -> dict[str, Any]:
        """The k moments (segments) that best match a description, best first, with their times."""
        return {"moments": await _call(service.search, query, k, streams)}

    @server.tool()
    async def list_streams() -> dict[str, Any]:
        """Every stream with its status (running, frames, dropped, segments, reconnects, error)
        and the memory's tokens held against its cap."""
        return await _call(service.snapshot)

    @server.tool()
    async def add_stream(id: str, source: str) -> dict[str, Any]:
        """Start ingesting a source under a new stream id: a file under the service's media
        roots, an rtsp/http/tcp/udp URL, or /dev/videoN."""
        return await _call(service.add_stream, id, source, {})

    return server
