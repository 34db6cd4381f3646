"""The bot's HTTP server: Slack's Events API endpoint (HTTP mode) and the ops endpoints.

GET  /healthz        200 while the process runs
GET  /readyz         200 when Slack is connected and Redis answers, else 503 with reasons
GET  /metrics        Prometheus text format
POST /slack/events   Events API and interactivity (HTTP mode only; Bolt verifies signatures)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.async_app import AsyncApp

from bot.metrics import CONTENT_TYPE, Metrics

Check = Callable[[], Awaitable[bool]]


def build_web_app(
    *, bolt: AsyncApp | None, metrics: Metrics, checks: dict[str, Check]
) -> web.Application:
    """``bolt`` is served at /slack/events when given (HTTP mode); ``checks`` gate /readyz."""
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        failing = [name for name, check in checks.items() if not await check()]
        status = 503 if failing else 200
        return web.Response(
            status=status,
            text=json.dumps({"ok": not failing, "failing": failing}),
            content_type="application/json",
        )

    async def prometheus(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)

    if bolt is not None:

        async def slack_events(request: web.Request) -> web.Response:
            return await to_aiohttp_response(
                await bolt.async_dispatch(await to_bolt_request(request))
            )

        app.router.add_post("/slack/events", slack_events)
    return app


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start ``app``; returns the runner (cleanup on exit) and the bound port (``port=0`` picks one)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)
