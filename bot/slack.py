"""The outbound Slack Web API boundary: post, update, read threads and channels, native streams,
and the assistant thread's status, title and suggested prompts.

    slack = SlackGateway(web_client)
    ts = await slack.post("C1", "_Thinking…_", thread_ts="1700000000.000100")
    await slack.update("C1", ts, "The answer.")

    ts = await slack.start_stream("C1", "1700000000.000100", recipient=("U1", "T1"))
    await slack.append_stream("C1", ts, "More **Markdown**")
    await slack.stop_stream("C1", ts, blocks=[...])

Every failure leaves as ``SlackRateLimited`` (429, with ``retry_after``), ``SlackTransient``
(5xx, connection trouble, timeouts: worth retrying) or ``SlackRejected`` (``ok: false``).
No method here retries: callers decide, because only they know whether a call is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import SlackRateLimited, SlackRejected, SlackTransient
from bot.metrics import Metrics

log = logging.getLogger(__name__)

# ok:false errors that mean "Slack had a problem", not "your call was wrong".
_TRANSIENT_ERRORS = frozenset(
    {
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "ratelimited",
        # chat.update of a message whose native stream is still open: it closes by itself.
        "streaming_state_conflict",
    }
)


def connect_slack(token: str, base_url: str, session: aiohttp.ClientSession) -> AsyncWebClient:
    """One Web API client on one long-lived session (connection reuse), without SDK retries."""
    return AsyncWebClient(
        token=token, base_url=base_url, session=session, timeout=15, retry_handlers=[]
    )


class SlackGateway:
    """The Web API calls the bot makes, with Slack's failures translated."""

    def __init__(
        self, client: AsyncWebClient, metrics: Metrics | None = None, *, timeout: float = 15.0
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._calls = metrics.slack_calls if metrics is not None else None

    async def post(
        self,
        channel: str,
        text: str,
        *,
        thread_ts: str | None = None,
        blocks: list[dict[str, Any]] | None = None,
    ) -> str:
        args: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False}
        if thread_ts:
            args["thread_ts"] = thread_ts
        if blocks is not None:
            args["blocks"] = blocks
        data = await self._call("chat.postMessage", args)
        return str(data["ts"])

    async def update(
        self, channel: str, ts: str, text: str, *, blocks: list[dict[str, Any]] | None = None
    ) -> None:
        args: dict[str, Any] = {"channel": channel, "ts": ts, "text": text}
        # An explicit empty list clears earlier blocks (e.g. the Stop button).
        args["blocks"] = blocks if blocks is not None else []
        await self._call("chat.update", args)

    async def post_ephemeral(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> None:
        args: dict[str, Any] = {"channel": channel, "user": user, "text": text}
        if thread_ts:
            args["thread_ts"] = thread_ts
        await self._call("chat.postEphemeral", args)

    async def user(self, user: str) -> dict[str, Any]:
        """The person's user object (``users.info``): ``is_admin``, ``is_owner`` …"""
        data = await self._call("users.info", {"user": user}, read=True)
        found = data.get("user")
        return found if isinstance(found, dict) else {}

    # -- native streams (chat.startStream / appendStream / stopStream) -----------------------

    async def start_stream(
        self,
        channel: str,
        thread_ts: str,
        *,
        markdown: str = "",
        recipient: tuple[str, str] | None = None,
    ) -> str:
        """Open a native stream in the thread; its message's ``ts``. ``recipient`` is
        (user id, team id), required by Slack outside DMs."""
        args: dict[str, Any] = {"channel": channel, "thread_ts": thread_ts}
        if markdown:
            args["markdown_text"] = markdown
        if recipient is not None:
            args["recipient_user_id"], args["recipient_team_id"] = recipient
        data = await self._call("chat.startStream", args)
        return str(data["ts"])

    async def append_stream(self, channel: str, ts: str, markdown: str) -> None:
        await self._call(
            "chat.appendStream", {"channel": channel, "ts": ts, "markdown_text": markdown}
        )

    async def stop_stream(
        self,
        channel: str,
        ts: str,
        *,
        markdown: str = "",
        blocks: list[dict[str, Any]] | None = None,
    ) -> None:
        args: dict[str, Any] = {"channel": channel, "ts": ts}
        if markdown:
            args["markdown_text"] = markdown
        if blocks:
            args["blocks"] = blocks
        await self._call("chat.stopStream", args)

    # -- assistant threads -------------------------------------------------------------------

    async def set_status(
        self,
        channel: str,
        thread_ts: str,
        status: str,
        *,
        loading_messages: list[str] | None = None,
    ) -> None:
        """Show (``status`` non-empty) or clear ("") the "is thinking…" line of a thread."""
        args: dict[str, Any] = {"channel_id": channel, "thread_ts": thread_ts, "status": status}
        if loading_messages:
            args["loading_messages"] = loading_messages
        await self._call("assistant.threads.setStatus", args)

    async def set_title(self, channel: str, thread_ts: str, title: str) -> None:
        args = {"channel_id": channel, "thread_ts": thread_ts, "title": title}
        await self._call("assistant.threads.setTitle", args)

    async def set_suggested_prompts(
        self,
        channel: str,
        thread_ts: str,
        prompts: list[dict[str, str]],
        *,
        title: str | None = None,
    ) -> None:
        """``prompts``: ``[{"title": shown, "message": sent when clicked}, …]`` (at most 4)."""
        args: dict[str, Any] = {"channel_id": channel, "thread_ts": thread_ts, "prompts": prompts}
        if title:
            args["title"] = title
        await self._call("assistant.threads.setSuggestedPrompts", args)

    async def thread_page(
        self,
        channel: str,
        thread_ts: str,
        *,
        limit: int = 200,
        cursor: str | None = None,
        oldest: str | None = None,
        latest: str | None = None,
        inclusive: bool = False,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a thread, oldest first (the parent first when it is in range), and the
        cursor of the next page (None: this was the last)."""
        args: dict[str, Any] = {"channel": channel, "ts": thread_ts, "limit": limit}
        if cursor:
            args["cursor"] = cursor
        if oldest is not None:
            args["oldest"] = oldest
        if latest is not None:
            args["latest"] = latest
        if inclusive:
            args["inclusive"] = "true"
        data = await self._call("conversations.replies", args, read=True)
        return _page(data)

    async def channel_page(
        self,
        channel: str,
        *,
        limit: int = 100,
        oldest: str | None = None,
        latest: str | None = None,
    ) -> list[dict[str, Any]]:
        """The newest top-level messages of a channel (between ``oldest`` and ``latest``,
        both excluded), newest first."""
        args: dict[str, Any] = {"channel": channel, "limit": limit}
        if oldest is not None:
            args["oldest"] = oldest
        if latest is not None:
            args["latest"] = latest
        data = await self._call("conversations.history", args, read=True)
        return _page(data)[0]

    async def message(
        self, channel: str, ts: str, *, thread_ts: str | None = None
    ) -> dict[str, Any] | None:
        """The message ``ts`` (in the thread ``thread_ts``) as Slack shows it now; None: gone."""
        # Two: Slack may put a thread's parent first whatever the bounds say.
        messages, _ = await self.thread_page(
            channel, thread_ts or ts, limit=2, oldest=ts, latest=ts, inclusive=True
        )
        return next((m for m in messages if m.get("ts") == ts), None)

    async def _call(
        self, method: str, args: dict[str, Any], *, read: bool = False
    ) -> dict[str, Any]:
        try:
            # slack_sdk applies its own timeout only to sessions it creates; ours is shared.
            async with asyncio.timeout(self._timeout):
                if read:
                    response = await self._client.api_call(method, http_verb="GET", params=args)
                else:
                    response = await self._client.api_call(method, json=args)
        except SlackApiError as exc:
            error = _translate(method, exc)
            self._count(method, _OUTCOMES[type(error)])
            raise error from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._count(method, "transient")
            raise SlackTransient(method, type(exc).__name__) from None
        self._count(method, "ok")
        data = response.data
        return data if isinstance(data, dict) else {}

    def _count(self, method: str, outcome: str) -> None:
        if self._calls is not None:
            self._calls.labels(method=method, outcome=outcome).inc()


def _page(data: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    messages = [m for m in data.get("messages") or () if isinstance(m, dict)]
    metadata = data.get("response_metadata")
    cursor = metadata.get("next_cursor") if isinstance(metadata, dict) else None
    more = data.get("has_more", True) and isinstance(cursor, str) and cursor
    return messages, cursor if more else None


_OUTCOMES = {
    SlackRateLimited: "ratelimited",
    SlackTransient: "transient",
    SlackRejected: "rejected",
}


def _translate(
    method: str, exc: SlackApiError
) -> SlackRateLimited | SlackTransient | SlackRejected:
    response = exc.response
    status = int(getattr(response, "status_code", None) or getattr(response, "status", 0) or 0)
    headers = getattr(response, "headers", {}) or {}
    data = getattr(response, "data", None)
    error = data.get("error", "") if isinstance(data, dict) else ""
    if status == 429 or error == "ratelimited":
        try:
            retry_after = float(headers.get("Retry-After", 1))
        except (TypeError, ValueError):
            retry_after = 1.0
        return SlackRateLimited(method, max(retry_after, 0.5))
    if status >= 500 or error in _TRANSIENT_ERRORS:
        return SlackTransient(method, error or f"HTTP {status}")
    return SlackRejected(method, error or f"HTTP {status}")
