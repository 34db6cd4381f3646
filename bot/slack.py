"""The outbound Slack Web API boundary: post, update, read threads and channels, native streams,
and the assistant thread's status, title and suggested prompts.

    slack = SlackGateway(web_client)
    ts = await slack.post("C1", "_Thinking…_", thread_ts="1700000000.000100")
    await slack.update("C1", ts, "The answer.")

    ts = await slack.start_stream("C1", "1700000000.000100", recipient=("U1", "T1"))
    await slack.append_stream("C1", ts, "More **Markdown**")
    await slack.stop_stream("C1", ts, blocks=[...])

    file = await slack.file_info("F1")               # SlackFile (Slack Connect files)
    data = await slack.download(file.download_url, max_bytes=20_000_000, time_limit=30)

Every failure leaves as ``SlackRateLimited`` (429, with ``retry_after``), ``SlackTransient``
(5xx, connection trouble, timeouts: worth retrying) or ``SlackRejected`` (``ok: false``); a file
that cannot be fetched as one of the ``FileUnavailable`` kinds (bot/errors.py).
No method here retries: callers decide, because only they know whether a call is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import (
    FileMissing,
    FileNotAuthorized,
    FileTimedOut,
    FileTooLarge,
    FileUnavailable,
    SlackRateLimited,
    SlackRejected,
    SlackTransient,
)
from bot.events import SlackFile
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


DOWNLOAD = "file download"  # how downloads are named in errors and metrics
# Hosts the bot token may be sent to (besides the configured API's own): Slack's file hosts.
_SLACK_DOMAINS = ("slack.com", "slack-gov.com")
_CHUNK = 64 * 1024
_FILE_GONE = frozenset({"file_not_found", "file_deleted"})
_FILE_FORBIDDEN = frozenset({"missing_scope", "no_permission", "access_denied"})
_SCOPE_FIX = (
    "Slack answered a file request with a sign-in page or missing_scope: the app lacks the "
    "files:read scope. Add files:read under oauth_config.scopes.bot (manifest.yml) and reinstall "
    "the app to the workspace; until then people are told their files could not be opened"
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
        self._told_scope = False  # the missing files:read scope is logged once

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
        tasks: Sequence[Mapping[str, str]] = (),
        tasks_before: Sequence[Mapping[str, str]] = (),
    ) -> str:
        """Open a native stream in the thread; its message's ``ts``. ``recipient`` is
        (user id, team id), required by Slack outside DMs; ``tasks``: task cards to show
        (``task_update`` chunks: id, title, status, details)."""
        args: dict[str, Any] = {"channel": channel, "thread_ts": thread_ts}
        _stream_content(args, markdown, tasks, tasks_before)
        if tasks or tasks_before:
            args["task_display_mode"] = "timeline"
        if recipient is not None:
            args["recipient_user_id"], args["recipient_team_id"] = recipient
        data = await self._call("chat.startStream", args)
        return str(data["ts"])

    async def append_stream(
        self,
        channel: str,
        ts: str,
        markdown: str,
        *,
        tasks: Sequence[Mapping[str, str]] = (),
        tasks_before: Sequence[Mapping[str, str]] = (),
    ) -> None:
        args: dict[str, Any] = {"channel": channel, "ts": ts}
        _stream_content(args, markdown, tasks, tasks_before)
        await self._call("chat.appendStream", args)

    async def stop_stream(
        self,
        channel: str,
        ts: str,
        *,
        markdown: str = "",
        blocks: list[dict[str, Any]] | None = None,
        tasks: Sequence[Mapping[str, str]] = (),
        tasks_before: Sequence[Mapping[str, str]] = (),
    ) -> None:
        args: dict[str, Any] = {"channel": channel, "ts": ts}
        _stream_content(args, markdown, tasks, tasks_before)
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

    # -- files ---------------------------------------------------------------------------------

    async def file_info(self, file_id: str) -> SlackFile:
        """A file's details (``files.info``): what a Slack Connect file's event leaves out
        (``file_access: check_file_info``), its download URL among them."""
        try:
            data = await self._call("files.info", {"file": file_id}, read=True)
        except SlackRejected as exc:
            if exc.error in _FILE_GONE:
                raise FileMissing("files.info", exc.error) from None
            if exc.error in _FILE_FORBIDDEN:
                self._tell_scope()
                raise FileNotAuthorized("files.info", exc.error) from None
            raise
        found = SlackFile.from_api(data.get("file"))
        if found is None:
            raise FileMissing("files.info", "no file in the answer")
        return found

    async def download(
        self, url: str, *, max_bytes: int, time_limit: float, html_expected: bool = False
    ) -> bytes:
        """The file at ``url`` (``url_private_download``), fetched with the bot token and read
        as a stream: more than ``max_bytes`` raises ``FileTooLarge`` without reading the rest;
        the whole download is bounded by ``time_limit`` seconds (``FileTimedOut``).

        Without ``files:read`` Slack answers 200 with an HTML sign-in page: that raises
        ``FileNotAuthorized`` (and is logged once, with the fix). ``html_expected``: the file
        itself is an HTML page, so only a page that looks like Slack's sign-in is refused.
        The token goes only to Slack's own hosts (and the configured API's); an answer that
        redirects elsewhere is fetched without it (aiohttp drops it across origins).
        """
        if not self._may_authorize(url):
            self._count(DOWNLOAD, "rejected")
            raise FileUnavailable(DOWNLOAD, f"not a Slack file URL: {_shown(url)}")
        headers = {"Authorization": f"Bearer {self._client.token}"}
        try:
            async with asyncio.timeout(time_limit):
                session = self._client.session
                if session is None:
                    async with aiohttp.ClientSession() as own:
                        data = await self._fetch(own, url, headers, max_bytes, html_expected)
                else:
                    data = await self._fetch(session, url, headers, max_bytes, html_expected)
        except FileUnavailable as exc:
            self._count(DOWNLOAD, "rejected")
            if isinstance(exc, FileNotAuthorized):
                self._tell_scope()
            raise
        except (SlackRateLimited, SlackTransient, SlackRejected) as exc:
            self._count(DOWNLOAD, _OUTCOMES[type(exc)])
            raise
        except TimeoutError:
            self._count(DOWNLOAD, "transient")
            raise FileTimedOut(DOWNLOAD, f"no complete answer within {time_limit:g} s") from None
        except (aiohttp.ClientError, OSError) as exc:
            self._count(DOWNLOAD, "transient")
            raise SlackTransient(DOWNLOAD, type(exc).__name__) from None
        except ValueError as exc:
            # A URL aiohttp or yarl cannot use after all (a host IDNA rejects: UnicodeError).
            self._count(DOWNLOAD, "rejected")
            error = f"unusable URL {_shown(url)}: {type(exc).__name__}"
            raise FileUnavailable(DOWNLOAD, error) from None
        self._count(DOWNLOAD, "ok")
        return data

    async def _fetch(
        self,
        session: aiohttp.ClientSession,
        url: str,
        headers: dict[str, str],
        max_bytes: int,
        html_expected: bool,
    ) -> bytes:
        async with session.get(url, headers=headers, allow_redirects=True, max_redirects=5) as r:
            if r.status in (404, 410):
                raise FileMissing(DOWNLOAD, f"HTTP {r.status}")
            if r.status in (401, 403):
                raise FileNotAuthorized(DOWNLOAD, f"HTTP {r.status}")
            if r.status == 429:
                raise SlackRateLimited(DOWNLOAD, _retry_after(r.headers.get("Retry-After")))
            if r.status >= 500:
                raise SlackTransient(DOWNLOAD, f"HTTP {r.status}")
            if r.status != 200:
                raise SlackRejected(DOWNLOAD, f"HTTP {r.status}")
            if r.content_length is not None and r.content_length > max_bytes:
                raise FileTooLarge(DOWNLOAD, max_bytes)
            body = bytearray()
            async for chunk in r.content.iter_chunked(_CHUNK):
                body += chunk
                if len(body) > max_bytes:
                    raise FileTooLarge(DOWNLOAD, max_bytes)
            data = bytes(body)
            if _is_sign_in_page(r.content_type, data, html_expected=html_expected):
                raise FileNotAuthorized(DOWNLOAD, "sign-in page instead of the file")
            return data

    def _may_authorize(self, url: str) -> bool:
        """Whether the bot token may go to ``url``: Slack's HTTPS hosts, or the API's origin."""
        try:
            target, api = urlsplit(url), urlsplit(self._client.base_url)
            target_port, api_port = target.port, api.port
        except ValueError:
            return False
        host = (target.hostname or "").lower()
        if "" in host.split("."):
            return False  # an empty label ("https://.slack.com/x"): no host a request can reach
        if target.scheme == "https" and any(
            host == domain or host.endswith("." + domain) for domain in _SLACK_DOMAINS
        ):
            return True
        return bool(host) and (target.scheme, host, target_port) == (
            api.scheme,
            (api.hostname or "").lower(),
            api_port,
        )

    def _tell_scope(self) -> None:
        if not self._told_scope:
            self._told_scope = True
            log.warning(_SCOPE_FIX)

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


def _stream_content(
    args: dict[str, Any],
    markdown: str,
    tasks: Sequence[Mapping[str, str]],
    tasks_before: Sequence[Mapping[str, str]] = (),
) -> None:
    """A stream call's text, as ``markdown_text``, or with task cards as ``chunks`` (Slack shows
    chunks in the order given: ``tasks_before`` the text, ``tasks`` after it)."""
    if tasks or tasks_before:
        text = [{"type": "markdown_text", "text": markdown}] if markdown else []
        before = [{"type": "task_update", **task} for task in tasks_before]
        after = [{"type": "task_update", **task} for task in tasks]
        args["chunks"] = before + text + after
    elif markdown:
        args["markdown_text"] = markdown


def _page(data: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    messages = [m for m in data.get("messages") or () if isinstance(m, dict)]
    metadata = data.get("response_metadata")
    cursor = metadata.get("next_cursor") if isinstance(metadata, dict) else None
    more = data.get("has_more", True) and isinstance(cursor, str) and cursor
    return messages, cursor if more else None


def _retry_after(value: str | None) -> float:
    try:
        return max(float(value or 1), 0.5)
    except ValueError:
        return 1.0


def _shown(url: str) -> str:
    """A URL as it may be logged: no query (Slack may sign URLs there), no credentials."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
    except ValueError:
        return "(unparsable URL)"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# Slack's sign-in page loads its assets from Slack's CDN and says it is a sign-in page in its
# own markup; an HTML file a person shared may well link to some sign-in page ("/signin",
# "?redir=", "Sign in to comment") but does not carry both.
_SLACK_ASSETS = b"slack-edge.com"
_SIGN_IN_MARKS = (b'action="/signin"', b"signin_form", b"<title>sign in to ", b"| slack</title>")


def _is_sign_in_page(content_type: str, data: bytes, *, html_expected: bool) -> bool:
    # By its content type; the bytes only when there is none (a proxy may drop it): a text file
    # that happens to begin with "<!doctype html" is served as text/plain.
    head = data[:4096].lstrip().lower()
    untyped = content_type in ("", "application/octet-stream")
    html = content_type == "text/html" or (
        untyped and head.startswith((b"<!doctype html", b"<html"))
    )
    if not html:
        return False
    if not html_expected:
        return True
    page = data[:65536].lower()
    return _SLACK_ASSETS in page and any(mark in page for mark in _SIGN_IN_MARKS)


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
