"""The bot's HTTP listeners: Slack's Events API endpoint (HTTP mode) and, on a listener of their
own, the ops endpoints.

Events listener (HTTP mode only; ``HTTP_HOST:HTTP_PORT``, public):
POST /slack/events   Events API and interactivity; nothing else is served there

Ops listener (both modes; ``OPS_HOST:OPS_PORT``, loopback by default, no authentication):
GET  /healthz        200 while the process runs
GET  /readyz         200 when Slack is connected (Redis down only degrades: named, still 200),
                     else 503 with reasons
GET  /metrics        Prometheus text format

A request to /slack/events is checked before Bolt sees it, because Bolt parses a body (and
builds its context from it) before it verifies the signature, and raises on anything that is not
the JSON object Slack sends: its signature headers must be present and well formed (else 400),
its signature valid and fresh (else 401), and only then is its body parsed and its shape checked
(else 400). A refusal is one short log line, never a traceback.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from bot.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

Check = Callable[[], Awaitable[bool]]

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")

# What Bolt's request parsing and routing (and the bot's matchers) read from a payload without
# checking its type: Slack always sends these types (or leaves the field out, or sends null).
_ID_HOLDER = (str, dict)  # "U123" or {"id": "U123", ...}
_ENVELOPE: Mapping[str, type | tuple[type, ...]] = {
    "type": str,
    "event": dict,
    "event_id": str,
    "team_id": str,
    "enterprise_id": str,
    "api_app_id": str,
    "authorizations": list,
    "team": _ID_HOLDER,
    "user": _ID_HOLDER,
    "channel": _ID_HOLDER,
    "enterprise": _ID_HOLDER,
    "user_id": str,
    "channel_id": str,
    "actions": list,
    "message": dict,
    "container": dict,
    "view": dict,
    "assistant_thread": dict,
    "function_data": dict,
    "response_urls": list,
    "callback_id": str,
    "action_id": str,
}
_EVENT: Mapping[str, type | tuple[type, ...]] = {
    "type": str,
    "subtype": str,
    "user": _ID_HOLDER,
    "channel": _ID_HOLDER,
    "channel_type": str,
    "team": _ID_HOLDER,
    "user_team": str,
    "user_id": str,
    "channel_id": str,
    "bot_id": str,
    "ts": str,
    "thread_ts": str,
    "event_ts": str,
    "text": str,
    "message": dict,
    "previous_message": dict,
    "assistant_thread": dict,
    "item": dict,
    "files": list,
    "blocks": list,
}
# Bolt builds its assistant utilities from these fields and raises when one is missing.
_ASSISTANT_THREAD_EVENTS = frozenset(
    {"assistant_thread_started", "assistant_thread_context_changed"}
)
_ACTION: Mapping[str, type | tuple[type, ...]] = {
    "action_id": str,
    "block_id": str,
    "type": str,
}


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def build_ops_app(
    *, metrics: Metrics, checks: dict[str, Check], degrading: dict[str, Check] | None = None
) -> web.Application:
    """/healthz, /readyz (gated by ``checks``; ``degrading`` ones are reported, never fail it:
    the bot answers without Redis, so an outage must not take every replica out of service)
    and /metrics."""
    app = web.Application()

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        failing = [name for name, check in checks.items() if not await check()]
        degraded = [name for name, check in (degrading or {}).items() if not await check()]
        status = 503 if failing else 200
        return web.Response(
            status=status,
            text=json.dumps({"ok": not failing, "failing": failing, "degraded": degraded}),
            content_type="application/json",
        )

    async def prometheus(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", prometheus)
    return app


def build_events_app(*, bolt: AsyncApp, signing_secret: str) -> web.Application:
    """/slack/events for ``bolt``, taking only requests signed with ``signing_secret``."""
    if not signing_secret:
        raise ValueError("the Events API endpoint needs the signing secret")
    verifier = SignatureVerifier(signing_secret)
    app = web.Application()

    async def slack_events(request: web.Request) -> web.Response:
        try:
            bolt_request = await _verified_request(request, verifier)
        except _Refused as refused:
            log.warning(
                "refused a request to /slack/events from %s (%d): %s",
                request.remote,
                refused.status,
                refused.reason,
            )
            return web.json_response({"error": refused.reason}, status=refused.status)
        return await to_aiohttp_response(await bolt.async_dispatch(bolt_request))

    app.router.add_post("/slack/events", slack_events)
    return app


async def _verified_request(request: web.Request, verifier: SignatureVerifier) -> AsyncBoltRequest:
    """The request for Bolt, once its signature is checked on the raw body and the body is the
    JSON object (or form with a JSON ``payload``) Slack sends; else ``_Refused``."""
    timestamp = request.headers.get("X-Slack-Request-Timestamp")
    signature = request.headers.get("X-Slack-Signature")
    if timestamp is None or signature is None:
        raise _Refused(400, "missing signature headers")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise _Refused(400, "malformed X-Slack-Request-Timestamp")
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(400, "body is not UTF-8") from None
    # The verifier also refuses a timestamp more than 5 minutes away from now.
    if not _SIGNATURE.fullmatch(signature) or not verifier.is_valid(text, timestamp, signature):
        raise _Refused(401, "invalid or stale signature")
    try:
        # Parses the body (JSON, or a form whose ``payload`` is JSON) and builds Bolt's context.
        bolt_request = AsyncBoltRequest(
            body=text, query=request.query_string, headers=dict(request.headers)
        )
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, RecursionError):
        raise _Refused(400, "malformed body") from None
    problem = _shape_problem(bolt_request.body)
    if problem is not None:
        raise _Refused(400, f"malformed body: {problem}")
    return bolt_request


def _shape_problem(body: object) -> str | None:
    """What makes ``body`` unlike any payload Slack sends, in the fields Bolt and the bot read
    without checking; None when it has the expected shape."""
    if not isinstance(body, dict):
        return "not a JSON object"
    problem = _field_problem(body, _ENVELOPE, "")
    if problem:
        return problem
    if not all(isinstance(a, dict) for a in body.get("authorizations") or ()):
        return "authorizations"
    event = body.get("event")
    if body.get("type") == "event_callback" and not isinstance(event, dict):
        return "event_callback without an event"
    if isinstance(event, dict):
        problem = _field_problem(event, _EVENT, "event.")
        if problem:
            return problem
        kind = event.get("type")
        if kind in ("message", "app_mention") and not isinstance(event.get("channel"), str):
            return "event.channel"
        if kind in _ASSISTANT_THREAD_EVENTS:
            thread = event.get("assistant_thread")
            if not isinstance(thread, dict) or not all(
                isinstance(thread.get(name), str) for name in ("channel_id", "thread_ts")
            ):
                return "event.assistant_thread"
    actions = body.get("actions")
    if body.get("type") == "block_actions" and not actions:
        return "block_actions without actions"
    for action in actions or ():
        if not isinstance(action, dict):
            return "actions"
        problem = _field_problem(action, _ACTION, "actions[].")
        if problem:
            return problem
        if body.get("type") == "block_actions" and "action_id" not in action:
            return "actions[].action_id"
    return None


def _field_problem(
    payload: dict[str, Any], types: Mapping[str, type | tuple[type, ...]], prefix: str
) -> str | None:
    for name, expected in types.items():
        value = payload.get(name)
        if value is not None and not isinstance(value, expected):
            return prefix + name
        if isinstance(value, dict) and expected is _ID_HOLDER:
            if not isinstance(value.get("id"), str | None):
                return f"{prefix}{name}.id"
    return None


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start ``app``; returns the runner (cleanup on exit) and the bound port (``port=0`` picks one).

    Raises ``OSError`` when it cannot listen there (address in use, not this host's)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, int(bound)


@dataclass(frozen=True)
class InheritedSockets:
    """Listening sockets a worker process serves on instead of binding its own: its supervisor
    (bot/workers.py) binds them once, so every worker accepts on the one Events API port and a
    restarted worker gets the same sockets back."""

    ops: socket.socket  # this worker's own ops listener (loopback; the supervisor asks it)
    events: socket.socket | None = None  # /slack/events, shared by every worker (HTTP mode)


async def serve_socket(app: web.Application, sock: socket.socket) -> tuple[web.AppRunner, int]:
    """Start ``app`` on ``sock``, a socket that already listens; returns the runner and its port.
    Cleaning up the runner closes this process's copy of the socket."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(sock.getsockname()[1])


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
