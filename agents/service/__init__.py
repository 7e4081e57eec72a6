"""``streamvid serve``: the service over one memory (REST + SSE, a web page, MCP, keys, metrics, alerts).

Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client, mcp, pillow). Nothing is
imported here: ``from agents.service.core import Service, ServiceConfig`` and
``from agents.service.app import create_app``.
"""
