"""A fake Slack: Web API + Socket Mode on 127.0.0.1, for end-to-end tests through real clients.

It owns the wire protocol only: production code keeps using the real ``slack_sdk`` /
``slack_bolt`` clients, pointed here by base URL, and tests assert on what the fake recorded
(calls, messages as a user would see them, statuses, reactions, Socket Mode acks).

Usage::

    async with FakeSlack(latency=0.01) as slack:
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_url)
        slack.fail_next("chat.update", "ratelimited", retry_after=2)
        ...                                       # run the bot against client / Socket Mode
        await slack.wait_connected()
        envelope_id = await slack.send_event(mention_event("hello"))
        await slack.wait_ack(envelope_id)
        call = await slack.wait_call("chat.update", lambda c: "done" in c.args["text"])
        assert [m.text for m in slack.thread("C0CHAN", call.args["ts"])] == [...]

Behaviour modelled (see each ``_api_*`` method): token buckets per (workspace, method) with
HTTP 429 + ``Retry-After``; size limits (``msg_too_long``); message ownership; native streams
with an optional lifetime; scripted faults (``fail_next``). Reading back: ``conversations.replies``
(a thread, oldest first) and ``conversations.history`` (a channel's top-level messages and
broadcast replies, newest first), both with ``oldest`` / ``latest`` / ``inclusive`` bounds
(exclusive by default), ``limit`` and cursor pagination, and deleted messages left out.
Files: ``upload`` stores a file and returns its file object as events carry it (for
:func:`file_share_event`); the fake serves it at ``url_private`` / ``url_private_download`` to a
bot token (``Authorization: Bearer``), answers ``files.info``, and, like Slack, redirects to an
HTML sign-in page instead of the file when the app lacks ``files:read`` (``files_read = False``)
or the token is missing; a deleted file is a 404 there and a ``tombstone`` in messages.
``FakeSlack(limited_reads=True)`` is an app Slack limits (commercially distributed outside the
Marketplace, created after 2025-05-29): 1 read per minute per method per workspace, and pages
of at most 15 messages. Only bot and app tokens are known; everything else is ``invalid_auth``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import math
import mimetypes
import re
import time
import uuid
import weakref
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import WSMsgType, web

__all__ = [
    "DEFAULT_BUDGETS",
    "LIMITED_READ_BUDGET",
    "LIMITED_READ_PAGE",
    "READ_PAGE_SIZES",
    "Call",
    "Download",
    "Ephemeral",
    "FakeSlack",
    "Message",
    "SuggestedPrompts",
    "assistant_thread_context_changed_event",
    "assistant_thread_started_event",
    "block_actions_payload",
    "file_share_event",
    "mention_event",
    "message_event",
    "new_ts",
]

#: method -> (calls per minute, burst capacity); a token bucket per workspace per method.
DEFAULT_BUDGETS: dict[str, tuple[float, int]] = {
    "chat.update": (50, 5),
    "chat.delete": (50, 5),
    "chat.postMessage": (600, 20),
    "chat.startStream": (20, 3),
    "chat.appendStream": (100, 10),
    "chat.stopStream": (20, 3),
    "conversations.replies": (50, 5),
    "conversations.history": (50, 5),
    "files.info": (100, 20),
}

#: read method -> (default limit, maximum limit) for an app Slack does not limit.
READ_PAGE_SIZES: dict[str, tuple[int, int]] = {
    "conversations.replies": (1000, 1000),
    "conversations.history": (100, 999),
}
#: For ``limited_reads``: each read method's budget, and its default = maximum page size.
LIMITED_READ_BUDGET: tuple[float, int] = (1, 1)
LIMITED_READ_PAGE = 15

POST_TEXT_LIMIT = 40_000
UPDATE_TEXT_LIMIT = 4_000
MARKDOWN_TEXT_LIMIT = 12_000
MAX_BLOCKS = 50
MAX_SUGGESTED_PROMPTS = 4

# --------------------------------------------------------------------------- timestamps

_last_micros = 0


def new_ts() -> str:
    """A fresh message ts: the wall clock as Slack stamps messages (``"1764900000.123400"``),
    strictly increasing across the whole process.

    Shared by the event helpers and every ``FakeSlack``, so their timestamps never collide; the
    bot compares them with its own clock (how far back its store remembers).
    """
    global _last_micros
    _last_micros = max(_last_micros + 100, int(time.time() * 1_000_000) // 100 * 100)
    return f"{_last_micros // 1_000_000}.{_last_micros % 1_000_000:06d}"


def _ts_key(ts: str) -> tuple[int, int]:
    seconds, _, fraction = ts.partition(".")
    return int(seconds), int(fraction.ljust(6, "0")[:6] or 0)


def _ts_from_key(key: tuple[int, int]) -> str:
    return f"{key[0]}.{key[1]:06d}"


_TS_ARG = re.compile(r"\d+(?:\.\d*)?")


def _flag(value: Any) -> bool:
    """A boolean argument as Slack reads it: ``true`` / ``1`` (slack_sdk sends ``"1"``)."""
    return str(value).strip().lower() in ("1", "true")


@dataclass(frozen=True)
class _Window:
    """The ``oldest`` / ``latest`` / ``inclusive`` bounds of a read; None is unbounded."""

    oldest: tuple[int, int] | None
    latest: tuple[int, int] | None
    inclusive: bool

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> _Window:
        return cls(
            _bound(args, "oldest", "invalid_ts_oldest"),
            _bound(args, "latest", "invalid_ts_latest"),
            _flag(args.get("inclusive")),
        )

    def __contains__(self, ts: str) -> bool:
        key = _ts_key(ts)
        if self.oldest is not None and (
            key < self.oldest or (key == self.oldest and not self.inclusive)
        ):
            return False
        return self.latest is None or key < self.latest or (key == self.latest and self.inclusive)


def _bound(args: dict[str, Any], name: str, error: str) -> tuple[int, int] | None:
    # Absent ``latest`` means "now": every message the fake holds is already in the past.
    value = args.get(name)
    if value is None or value == "":
        return None
    text = str(value).strip()
    if not _TS_ARG.fullmatch(text):
        raise _ApiError(error)
    return _ts_key(text)


# --------------------------------------------------------------------------- event helpers


def _rich_text(text: str) -> list[dict[str, Any]]:
    section = {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}
    return [{"type": "rich_text", "block_id": uuid.uuid4().hex[:5], "elements": [section]}]


def message_event(
    text: str,
    *,
    user: str | None = "U0USER",
    channel: str = "C0CHAN",
    channel_type: str = "channel",
    ts: str | None = None,
    thread_ts: str | None = None,
    parent_user_id: str | None = None,
    subtype: str | None = None,
    bot_id: str | None = None,
    team: str = "T0001",
    **extra: Any,
) -> dict[str, Any]:
    """A ``message`` event as Slack sends it (``channel_type``: channel, im, mpim, group).

    >>> message_event("hi", channel="D0DM", channel_type="im")["channel_type"]
    'im'

    ``bot_id`` makes it another bot's message; ``extra`` keys are merged last (use them to
    shape subtypes such as ``message_changed``).
    """
    ts = ts or new_ts()
    event: dict[str, Any] = {"type": "message", "text": text, "ts": ts, "team": team}
    if subtype is not None:
        event["subtype"] = subtype
    if user is not None:
        event["user"] = user
    if bot_id is not None:
        event["bot_id"] = bot_id
        event["app_id"] = "A" + bot_id[1:]
    else:
        event["client_msg_id"] = str(uuid.uuid4())
        event["blocks"] = _rich_text(text)
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
        if parent_user_id is not None:
            event["parent_user_id"] = parent_user_id
    event.update(channel=channel, event_ts=ts, channel_type=channel_type)
    event.update(extra)
    return event


def mention_event(
    text: str,
    *,
    user: str = "U0USER",
    channel: str = "C0CHAN",
    ts: str | None = None,
    thread_ts: str | None = None,
    parent_user_id: str | None = None,
    team: str = "T0001",
    bot_user_id: str = "U0BOT",
    **extra: Any,
) -> dict[str, Any]:
    """An ``app_mention`` event; the text gets the real ``<@U0BOT> `` prefix unless it has one.

    >>> mention_event("question")["text"]
    '<@U0BOT> question'
    """
    mention = f"<@{bot_user_id}>"
    full_text = text if mention in text else f"{mention} {text}"
    ts = ts or new_ts()
    event: dict[str, Any] = {
        "client_msg_id": str(uuid.uuid4()),
        "type": "app_mention",
        "text": full_text,
        "user": user,
        "ts": ts,
        "blocks": _rich_text(full_text),
        "team": team,
    }
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
        if parent_user_id is not None:
            event["parent_user_id"] = parent_user_id
    event.update(channel=channel, event_ts=ts)
    event.update(extra)
    return event


def file_share_event(
    text: str,
    files: list[dict[str, Any]],
    *,
    mention: str | None = None,
    **message: Any,
) -> dict[str, Any]:
    """A message with files attached (``subtype: file_share``), as Slack sends it when a person
    uploads files with (or without) a message; ``files`` from :meth:`FakeSlack.upload`.
    ``mention`` (a bot user id) makes it an ``app_mention`` carrying the same files instead.

    >>> file_share_event("", [{"id": "F1"}], channel="D0DM", channel_type="im")["subtype"]
    'file_share'
    """
    if mention is not None:
        for key in ("channel_type", "subtype", "bot_id"):
            message.pop(key, None)
        return mention_event(
            text, bot_user_id=mention, files=files, upload=True, display_as_bot=False, **message
        )
    return message_event(
        text, subtype="file_share", files=files, upload=True, display_as_bot=False, **message
    )


def block_actions_payload(
    action_id: str,
    *,
    value: str = "",
    user: str = "U0USER",
    channel: str = "C0CHAN",
    message_ts: str | None = None,
    thread_ts: str | None = None,
    block_id: str = "actions",
    team: str = "T0001",
    api_app_id: str = "A0001",
    action_type: str = "button",
) -> dict[str, Any]:
    """A ``block_actions`` payload (a button click) for :meth:`FakeSlack.send_interactive`.

    ``action_type="feedback_buttons"`` makes it a click on a 👍 / 👎 feedback button.
    """
    message_ts = message_ts or new_ts()
    container: dict[str, Any] = {
        "type": "message",
        "message_ts": message_ts,
        "channel_id": channel,
        "is_ephemeral": False,
    }
    if thread_ts is not None:
        container["thread_ts"] = thread_ts
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": team},
        "api_app_id": api_app_id,
        "token": "verification-token",
        "container": container,
        "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:12]}",
        "team": {"id": team, "domain": "test"},
        "channel": {"id": channel, "name": "general"},
        "message": {"type": "message", "ts": message_ts, "text": "", "thread_ts": thread_ts},
        "actions": [
            {
                "action_id": action_id,
                "block_id": block_id,
                "value": value,
                "type": action_type,
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


def assistant_thread_started_event(
    *,
    user: str = "U0USER",
    channel: str = "D0ASSIST",
    thread_ts: str | None = None,
    context_channel: str | None = "C0CHAN",
    team: str = "T0001",
    enterprise: str | None = None,
) -> dict[str, Any]:
    """An ``assistant_thread_started`` event (a person opened the app's agent view) for
    :meth:`FakeSlack.send_event`; ``context_channel`` is the channel they were looking at.

    >>> assistant_thread_started_event(channel="D9")["assistant_thread"]["channel_id"]
    'D9'
    """
    return {
        "type": "assistant_thread_started",
        "assistant_thread": _assistant_thread(
            user, channel, thread_ts or new_ts(), context_channel, team, enterprise
        ),
        "event_ts": new_ts(),
    }


def assistant_thread_context_changed_event(
    *,
    thread_ts: str,
    user: str = "U0USER",
    channel: str = "D0ASSIST",
    context_channel: str | None = "C0OTHER",
    team: str = "T0001",
    enterprise: str | None = None,
) -> dict[str, Any]:
    """An ``assistant_thread_context_changed`` event: the person switched channels while the
    thread ``thread_ts`` stayed open."""
    return {
        "type": "assistant_thread_context_changed",
        "assistant_thread": _assistant_thread(
            user, channel, thread_ts, context_channel, team, enterprise
        ),
        "event_ts": new_ts(),
    }


def _assistant_thread(
    user: str,
    channel: str,
    thread_ts: str,
    context_channel: str | None,
    team: str,
    enterprise: str | None,
) -> dict[str, Any]:
    context: dict[str, Any] = {}
    if context_channel is not None:
        context = {"channel_id": context_channel, "team_id": team, "enterprise_id": enterprise}
    return {"user_id": user, "context": context, "channel_id": channel, "thread_ts": thread_ts}


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Call:
    """One Web API request as the fake saw it.

    ``status`` is the HTTP status sent, or 0 when no response was sent (``reset``/``hang``).
    ``args`` merges query, form and JSON arguments (``blocks`` decoded to a list; no token).
    """

    method: str
    args: dict[str, Any]
    at: float
    status: int
    response: dict[str, Any]
    team_id: str

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.response.get("ok") is True

    @property
    def error(self) -> str | None:
        error = self.response.get("error")
        return error if isinstance(error, str) else None


@dataclass(frozen=True)
class Download:
    """One request for a file's content: ``status`` as sent (0: no answer, a fault), whether a
    known bot token came with it, and whether the sign-in page was served instead."""

    file_id: str
    path: str
    authorized: bool
    status: int
    sign_in: bool = False


@dataclass
class _StoredFile:
    id: str
    team: str
    content: bytes
    name: str
    title: str
    mimetype: str
    filetype: str
    mode: str
    user: str
    created: int
    connect: bool
    deleted: bool = False


TASK_STATES = ("pending", "in_progress", "complete", "error")


@dataclass
class Message:
    """A message in the fake's workspace; ``history`` lists every text it has shown."""

    channel: str
    ts: str
    text: str = ""
    thread_ts: str | None = None
    blocks: list[dict[str, Any]] | None = None
    user: str | None = None
    bot_id: str | None = None
    team_id: str = ""
    deleted: bool = False
    reactions: dict[str, list[str]] = field(default_factory=dict)
    streaming: bool = False
    edits: int = 0
    history: list[str] = field(default_factory=list)
    stream_started_at: float | None = None
    stream_touched_at: float | None = None
    stopped_by_user: bool = False
    broadcast: bool = False
    files: list[dict[str, Any]] | None = None  # file objects as the event carried them
    # A native stream's task cards (``task_update`` chunks) by id, latest state, and every
    # update in the order received.
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_updates: list[dict[str, Any]] = field(default_factory=list)
    # What a native stream showed, in order: ("text", markdown) and ("task", id) entries.
    timeline: list[tuple[str, str]] = field(default_factory=list)

    @property
    def is_reply(self) -> bool:
        return self.thread_ts is not None and self.thread_ts != self.ts

    def apply_tasks(self, updates: list[dict[str, Any]]) -> None:
        for update in updates:
            self.tasks[update["id"]] = {**self.tasks.get(update["id"], {}), **update}
            self.task_updates.append(update)

    @property
    def in_channel(self) -> bool:
        """Shown in the channel itself (history): a top-level message or a broadcast reply."""
        return not self.deleted and (not self.is_reply or self.broadcast)

    def set_text(self, text: str) -> None:
        self.text = text
        self.history.append(text)

    def to_api(self) -> dict[str, Any]:
        """The message as Slack's API returns it."""
        body: dict[str, Any] = {"type": "message", "ts": self.ts, "text": self.text}
        if self.broadcast and self.is_reply:
            body["subtype"] = "thread_broadcast"
        if self.user is not None:
            body["user"] = self.user
        if self.bot_id is not None:
            body["bot_id"] = self.bot_id
        if self.team_id:
            body["team"] = self.team_id
        if self.blocks is not None:
            body["blocks"] = self.blocks
        if self.thread_ts is not None:
            body["thread_ts"] = self.thread_ts
        if self.files is not None:
            body["files"] = self.files
        if self.edits:
            body["edited"] = {"user": self.user, "ts": self.ts}
        if self.reactions:
            body["reactions"] = [
                {"name": name, "users": list(users), "count": len(users)}
                for name, users in self.reactions.items()
            ]
        return body


@dataclass(frozen=True)
class SuggestedPrompts:
    """The suggested prompts an assistant thread shows (``prompts``: ``{title, message}``)."""

    prompts: list[dict[str, str]]
    title: str | None = None


@dataclass(frozen=True)
class Ephemeral:
    """A message only ``user`` sees (chat.postEphemeral); never stored in the channel."""

    channel: str
    user: str
    text: str
    thread_ts: str | None = None
    blocks: list[dict[str, Any]] | None = None


@dataclass
class _Fault:
    kind: str
    remaining: int
    retry_after: int


@dataclass
class _Bucket:
    per_second: float
    capacity: int
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take one token; return 0 on success, else the seconds until one is available."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.per_second if self.per_second > 0 else math.inf


@dataclass(eq=False)
class _Socket:
    ws: web.WebSocketResponse
    request: web.Request
    ticket: str


class _ApiError(Exception):
    def __init__(self, error: str, *, status: int = 200) -> None:
        super().__init__(error)
        self.error = error
        self.status = status


def _cursor_ts(args: dict[str, Any]) -> tuple[int, int] | None:
    """The ts a ``cursor`` resumes at (inclusive), or None for the first page."""
    cursor = str(args.get("cursor") or "")
    if not cursor:
        return None
    try:
        ts = base64.b64decode(cursor, validate=True).decode().removeprefix("next_ts:")
    except ValueError as exc:
        raise _ApiError("invalid_cursor") from exc
    if not _TS_ARG.fullmatch(ts):
        raise _ApiError("invalid_cursor")
    return _ts_key(ts)


def _need(args: dict[str, Any], name: str, error: str = "invalid_arguments") -> str:
    value = args.get(name)
    if value is None or value == "":
        raise _ApiError(error)
    return str(value)


# --------------------------------------------------------------------------- the fake


class FakeSlack:
    """The fake server. ``async with FakeSlack() as slack`` starts it on a free loopback port.

    Tests seed and inspect it directly: ``missing_channels``, ``users`` (id -> name),
    ``budgets`` (``{}`` disables rate limits), ``latency``, ``stream_lifetime``, and read
    ``calls``, ``acks``, ``statuses``, ``socket_messages``, ``responses``, ``connections``,
    and what assistant threads show: ``titles``, ``suggested_prompts``, ``ephemerals``.

    ``latency`` is added to every Web API call; ``connection_latency`` only to the first call
    on each new TCP connection, the handshake cost a client without a shared session pays on
    every call against real Slack.

    ``limited_reads=True`` models an app Slack limits: ``conversations.replies`` and
    ``conversations.history`` each get a budget of 1 call per minute (burst 1, per workspace;
    this overrides ``budgets`` for those two) and pages of at most, and by default,
    ``LIMITED_READ_PAGE`` (15) messages.
    """

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-test",
        app_token: str = "xapp-test",
        team_id: str = "T0001",
        bot_user_id: str = "U0BOT",
        bot_id: str = "B0BOT",
        app_id: str = "A0001",
        latency: float = 0.0,
        connection_latency: float = 0.0,
        budgets: dict[str, tuple[float, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        extra_tokens: dict[str, str] | None = None,
        stream_lifetime: float | None = None,
        stream_idle_timeout: float | None = None,
        status_ttl: float | None = 120.0,
        limited_reads: bool = False,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.latency = latency
        self.connection_latency = connection_latency
        self.connections = 0
        self.budgets = dict(DEFAULT_BUDGETS if budgets is None else budgets)
        self.limited_reads = limited_reads
        if limited_reads:
            self.budgets.update(dict.fromkeys(READ_PAGE_SIZES, LIMITED_READ_BUDGET))
        self.clock = clock
        self.stream_lifetime = stream_lifetime
        self.stream_idle_timeout = stream_idle_timeout
        self.status_ttl = status_ttl
        self.bot_tokens: dict[str, str] = {bot_token: team_id, **(extra_tokens or {})}
        self.missing_channels: set[str] = set()
        self.users: dict[str, str] = {"U0USER": "Test User", bot_user_id: "testbot"}
        self.admins: set[str] = set()  # users.info says is_admin for these

        self.calls: list[Call] = []
        self.acks: dict[str, dict[str, Any]] = {}
        self.envelopes: dict[str, dict[str, Any]] = {}
        self.socket_messages: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []
        self.statuses: dict[tuple[str, str], str] = {}
        self.titles: dict[tuple[str, str], str] = {}
        self.suggested_prompts: dict[tuple[str, str], SuggestedPrompts] = {}
        self.ephemerals: list[Ephemeral] = []
        self.files_read = True  # the app holds files:read (else downloads get a sign-in page)
        self.chunked_downloads = False  # serve files without Content-Length
        self.downloads: list[Download] = []
        self._files: dict[str, _StoredFile] = {}

        self._messages: dict[tuple[str, str], Message] = {}
        self._max_ts = (0, 0)
        self._status_at: dict[tuple[str, str], float] = {}
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._faults: defaultdict[str, deque[_Fault]] = defaultdict(deque)
        self._sockets: list[_Socket] = []
        self._round_robin = itertools.count()
        self._tickets = itertools.count(1)
        self._seen_transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._methods: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
            "auth.test": self._api_auth_test,
            "chat.postMessage": self._api_post_message,
            "chat.update": self._api_update,
            "chat.delete": self._api_delete,
            "conversations.replies": self._api_replies,
            "conversations.history": self._api_history,
            "reactions.add": self._api_reactions_add,
            "reactions.remove": self._api_reactions_remove,
            "assistant.threads.setStatus": self._api_set_status,
            "assistant.threads.setTitle": self._api_set_title,
            "assistant.threads.setSuggestedPrompts": self._api_set_suggested_prompts,
            "chat.postEphemeral": self._api_post_ephemeral,
            "chat.startStream": self._api_start_stream,
            "chat.appendStream": self._api_append_stream,
            "chat.stopStream": self._api_stop_stream,
            "users.info": self._api_users_info,
            "files.info": self._api_files_info,
            "apps.connections.open": self._api_connections_open,
        }

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeSlack:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/api/{method}", self._handle_api)
        app.router.add_get("/api/{method}", self._handle_api, allow_head=False)
        app.router.add_get("/socket", self._handle_socket)
        app.router.add_post("/respond/{n}", self._handle_response_url)
        app.router.add_get("/files-pri/{key}/download/{name}", self._handle_file)
        app.router.add_get("/files-pri/{key}/{name}", self._handle_file)
        app.router.add_get("/", self._handle_sign_in)
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._stopping.clear()

    async def stop(self) -> None:
        """Release hung requests, close every socket, stop the server. Safe to call twice."""
        if self._runner is None:
            return
        self._stopping.set()
        await self.drop_sockets()
        await self._runner.cleanup()
        self._runner = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeSlack is not started")
        return self._port

    @property
    def api_url(self) -> str:
        """Base URL for ``AsyncWebClient(base_url=...)``; the trailing slash matters."""
        return f"http://127.0.0.1:{self.port}/api/"

    # ------------------------------------------------------------------ test-facing state

    def fail_next(self, method: str, kind: str, times: int = 1, retry_after: int = 1) -> None:
        """Make the next ``times`` calls to ``method`` fail; queued faults apply in order.

        ``kind``: ``"ratelimited"`` (429 + Retry-After), ``"500"`` or any 5xx (an HTML error
        page), ``"reset"`` (connection dropped, no response), ``"hang"`` (no response until the
        client gives up or the fake stops), else ``{"ok": false, "error": kind}`` with HTTP 200.
        File downloads are ``"files.download"`` (any file) or ``"files.download:F123"`` (one
        file), with ``hang``, ``reset`` or an HTTP status.
        """
        self._faults[method].append(_Fault(kind, times, retry_after))

    def add_message(
        self,
        channel: str,
        text: str,
        *,
        user: str | None = "U0USER",
        thread_ts: str | None = None,
        ts: str | None = None,
        bot_id: str | None = None,
        team_id: str | None = None,
        broadcast: bool = False,
        blocks: list[dict[str, Any]] | None = None,
    ) -> str:
        """Seed a message (a user's by default) and return its ts.

        ``broadcast`` makes a thread reply also show in the channel ("Also send to #channel");
        ``blocks`` are returned by the read methods as they are.
        """
        ts = self._claim_ts(ts)
        message = Message(
            channel=channel,
            ts=ts,
            thread_ts=thread_ts,
            user=user,
            bot_id=bot_id,
            team_id=team_id or self.team_id,
            broadcast=broadcast and thread_ts is not None,
            blocks=blocks,
        )
        message.set_text(text)
        self._messages[(channel, ts)] = message
        return ts

    def message(self, channel: str, ts: str) -> Message | None:
        return self._messages.get((channel, ts))

    def upload(
        self,
        content: bytes,
        *,
        name: str,
        mimetype: str | None = None,
        filetype: str | None = None,
        title: str | None = None,
        mode: str = "hosted",
        user: str = "U0USER",
        team_id: str | None = None,
        connect: bool = False,
    ) -> dict[str, Any]:
        """Store a file a person uploaded; return its file object as message events carry it.

        ``mimetype`` / ``filetype`` default to what the name suggests, as Slack guesses them
        (a wrong name gives a wrong type: the bytes are what they are). ``mode="snippet"`` is
        text pasted as a snippet. ``connect`` makes it a Slack Connect file: events carry only
        its id and ``file_access: check_file_info`` (the rest from ``files.info``).
        """
        file_id = "F" + uuid.uuid4().hex[:10].upper()
        suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        guessed = mimetypes.guess_type(name)[0] or "application/octet-stream"
        stored = _StoredFile(
            id=file_id,
            team=team_id or self.team_id,
            content=content,
            name=name,
            title=title if title is not None else name,
            mimetype=mimetype or ("text/plain" if mode == "snippet" else guessed),
            filetype=filetype or suffix or "binary",
            mode=mode,
            user=user,
            created=int(time.time()),
            connect=connect,
        )
        self._files[file_id] = stored
        return self._event_file(stored)

    def delete_file(self, file_id: str) -> None:
        """The person deleted the file: a 404 to downloads, ``file_deleted`` to files.info, a
        ``tombstone`` in the messages that shared it."""
        stored = self._files[file_id]
        stored.deleted = True
        for message in self._messages.values():
            for index, item in enumerate(message.files or ()):
                if item.get("id") == file_id:
                    assert message.files is not None
                    message.files[index] = {"id": file_id, "mode": "tombstone"}

    async def delete_file_and_tell(self, file_id: str, *, unshared: bool = False) -> str:
        """``delete_file``, and the ``file_deleted`` event Slack then sends the app (with
        ``unshared``: the file stays, the event is ``file_unshared``); returns the envelope id."""
        stored = self._files[file_id]
        if not unshared:
            self.delete_file(file_id)
        event: dict[str, Any] = {
            "type": "file_unshared" if unshared else "file_deleted",
            "file_id": file_id,
            "event_ts": f"{time.time():.6f}",
        }
        if unshared:
            event.update(user_id=stored.user, file={"id": file_id}, channel_id="")
        return await self.send_event(event, team_id=stored.team, record=False)

    def file_downloads(self, file_id: str) -> list[Download]:
        """Requests for the file's content that got it (not the sign-in page, not an error)."""
        return [
            d for d in self.downloads if d.file_id == file_id and d.status == 200 and not d.sign_in
        ]

    def file_object(self, file_id: str) -> dict[str, Any]:
        """The file's full object, as files.info returns it."""
        stored = self._files[file_id]
        base = f"http://127.0.0.1:{self.port}/files-pri/{stored.team}-{stored.id}"
        quoted = quote(stored.name)
        body: dict[str, Any] = {
            "id": stored.id,
            "created": stored.created,
            "timestamp": stored.created,
            "name": stored.name,
            "title": stored.title,
            "mimetype": stored.mimetype,
            "filetype": stored.filetype,
            "pretty_type": stored.filetype.upper(),
            "user": stored.user,
            "user_team": stored.team,
            "editable": stored.mode == "snippet",
            "size": len(stored.content),
            "mode": stored.mode,
            "is_external": False,
            "external_type": "",
            "is_public": True,
            "public_url_shared": False,
            "display_as_bot": False,
            "username": "",
            "url_private": f"{base}/{quoted}",
            "url_private_download": f"{base}/download/{quoted}",
            "permalink": f"https://test.slack.com/files/{stored.user}/{stored.id}/{quoted}",
            "permalink_public": f"https://slack-files.com/{stored.team}-{stored.id}-0a1b2c3d4e",
            "has_rich_preview": False,
            "file_access": "visible",
        }
        if stored.mode == "snippet":
            lines = stored.content.decode(errors="replace").splitlines()
            body.update(
                preview="\n".join(lines[:5]),
                lines=len(lines),
                lines_more=max(0, len(lines) - 5),
                preview_is_truncated=len(lines) > 5,
            )
        return body

    def _event_file(self, stored: _StoredFile) -> dict[str, Any]:
        if stored.deleted:
            return {"id": stored.id, "mode": "tombstone"}
        if stored.connect:
            return {
                "id": stored.id,
                "mode": "file_access",
                "file_access": "check_file_info",
                "created": 0,
                "timestamp": 0,
                "user": "",
            }
        return self.file_object(stored.id)

    def thread(self, channel: str, thread_ts: str) -> list[Message]:
        """What a user sees in the thread now: parent then replies, in ts order, not deleted."""
        return sorted(
            (
                m
                for m in self._messages.values()
                if m.channel == channel
                and not m.deleted
                and (m.ts == thread_ts or m.thread_ts == thread_ts)
            ),
            key=lambda m: _ts_key(m.ts),
        )

    def bot_messages(self, channel: str | None = None) -> list[Message]:
        """This bot's visible messages (optionally in one channel), in ts order."""
        return sorted(
            (
                m
                for m in self._messages.values()
                if m.bot_id == self.bot_id
                and not m.deleted
                and (channel is None or m.channel == channel)
            ),
            key=lambda m: _ts_key(m.ts),
        )

    def status(self, channel: str, thread_ts: str) -> str:
        """The assistant status shown in a thread now ('' when none or expired)."""
        key = (channel, thread_ts)
        at = self._status_at.get(key)
        if at is not None and self.status_ttl is not None and self.clock() - at > self.status_ttl:
            return ""
        return self.statuses.get(key, "")

    def prompts(self, channel: str, thread_ts: str) -> SuggestedPrompts | None:
        """The suggested prompts shown in an assistant thread now (None: never set)."""
        return self.suggested_prompts.get((channel, thread_ts))

    def ephemerals_for(self, user: str, channel: str | None = None) -> list[Ephemeral]:
        """Ephemeral messages shown to ``user`` (optionally in one channel), oldest first."""
        return [
            e
            for e in self.ephemerals
            if e.user == user and (channel is None or e.channel == channel)
        ]

    def press_stop(self, channel: str, ts: str) -> None:
        """Simulate the user pressing stop on a native stream: later calls get stopped_by_user."""
        message = self._messages[(channel, ts)]
        message.streaming = False
        message.stopped_by_user = True

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    def ok_calls(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.ok]

    # ------------------------------------------------------------------ waiting

    # A ``timeout`` argument (not ``asyncio.timeout``) lets a miss fail with a useful message.
    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,
        what: str = "",
    ) -> None:
        """Poll ``predicate`` every 10 ms (real time); raise ``AssertionError`` on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() >= deadline:
                recent = ", ".join(
                    f"{c.method}->{c.status}{'' if c.ok else ':' + str(c.error)}"
                    for c in self.calls[-12:]
                )
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what or predicate!r}; "
                    f"{len(self.calls)} calls, last: [{recent}]"
                )
            await asyncio.sleep(0.01)

    async def wait_call(
        self,
        method: str,
        predicate: Callable[[Call], bool] | None = None,
        *,
        ok: bool | None = None,
        since: int = 0,
        timeout: float = 5.0,
    ) -> Call:
        """Wait for, and return, the first call to ``method`` in ``calls[since:]`` that matches.

        ``ok=True`` only accepts successful calls; ``since=len(slack.calls)`` waits for new ones.
        """
        found: list[Call] = []

        def matched() -> bool:
            for call in self.calls[since:]:
                if call.method != method or (ok is not None and call.ok != ok):
                    continue
                if predicate is None or predicate(call):
                    found.append(call)
                    return True
            return False

        await self.wait_for(matched, timeout, what=f"a matching call to {method}")
        return found[0]

    async def wait_connected(
        self,
        timeout: float = 5.0,
        count: int = 1,
    ) -> None:
        """Wait until at least ``count`` Socket Mode connections got their ``hello``."""
        await self.wait_for(
            lambda: len(self._sockets) >= count, timeout, what=f"{count} socket connection(s)"
        )

    async def wait_ack(
        self,
        envelope_id: str,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """Wait for the client's ack of an envelope and return it (may carry a ``payload``)."""
        await self.wait_for(
            lambda: envelope_id in self.acks, timeout, what=f"ack of envelope {envelope_id}"
        )
        return self.acks[envelope_id]

    # ------------------------------------------------------------------ Socket Mode

    @property
    def connected(self) -> int:
        """Number of live Socket Mode connections."""
        return len(self._sockets)

    async def send_event(
        self,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
        event_time: int | None = None,
        team_id: str | None = None,
        socket: int | None = None,
        record: bool = True,
    ) -> str:
        """Deliver an Events API event to one connection; return the envelope id.

        Connections are used round-robin unless ``socket`` picks one by index (connection
        order). Reuse ``event_id`` with ``retry_attempt=1..3`` to model Slack's redelivery.
        ``record`` stores a user message event in the workspace (so threads include it).
        Waits up to 5 s for a connection.
        """
        await self.wait_connected()
        payload = self._event_payload(event, event_id, event_time, team_id)
        if record:
            self._record_event_message(event, payload["team_id"])
        envelope = self._envelope("events_api", payload)
        envelope.update(retry_attempt=retry_attempt, retry_reason=retry_reason)
        await self._send_envelope(envelope, socket)
        return str(envelope["envelope_id"])

    async def send_event_to_all(
        self,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
        event_time: int | None = None,
        team_id: str | None = None,
        record: bool = True,
    ) -> list[str]:
        """Deliver the same event (same event_id) to every connection; one envelope each."""
        await self.wait_connected()
        payload = self._event_payload(event, event_id, event_time, team_id)
        if record:
            self._record_event_message(event, payload["team_id"])
        envelope_ids = []
        for index in range(len(self._sockets)):
            envelope = self._envelope("events_api", payload)
            envelope.update(retry_attempt=retry_attempt, retry_reason=retry_reason)
            await self._send_envelope(envelope, index)
            envelope_ids.append(str(envelope["envelope_id"]))
        return envelope_ids

    async def send_interactive(self, payload: dict[str, Any], *, socket: int | None = None) -> str:
        """Deliver an ``interactive`` envelope (e.g. :func:`block_actions_payload`).

        A missing ``response_url`` is pointed at this fake; posts to it land in ``responses``.
        """
        await self.wait_connected()
        payload = dict(payload)
        payload.setdefault(
            "response_url", f"http://127.0.0.1:{self.port}/respond/{len(self.envelopes)}"
        )
        envelope = self._envelope("interactive", payload)
        await self._send_envelope(envelope, socket)
        return str(envelope["envelope_id"])

    async def request_refresh(self, reason: str = "refresh_requested") -> None:
        """Send Slack's ``disconnect`` message to every connection (clients reconnect)."""
        message = {"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-slack"}}
        for sock in list(self._sockets):
            with contextlib.suppress(ConnectionError):
                await sock.ws.send_str(json.dumps(message))

    async def drop_sockets(self, *, silent: bool = False) -> None:
        """Close every connection: a close frame, or with ``silent`` a dead TCP connection."""
        sockets, self._sockets = list(self._sockets), []
        for sock in sockets:
            if silent and sock.request.transport is not None:
                sock.request.transport.abort()
        if not silent and sockets:
            await asyncio.gather(*(s.ws.close(code=1001) for s in sockets), return_exceptions=True)

    def _event_payload(
        self,
        event: dict[str, Any],
        event_id: str | None,
        event_time: int | None,
        team_id: str | None,
    ) -> dict[str, Any]:
        team = team_id or str(event.get("team") or self.team_id)
        return {
            "token": "verification-token",
            "team_id": team,
            "context_team_id": team,
            "api_app_id": self.app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or "Ev" + uuid.uuid4().hex[:10].upper(),
            "event_time": event_time if event_time is not None else int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": team,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }

    def _envelope(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "envelope_id": str(uuid.uuid4()),
            "payload": payload,
            "type": kind,
            "accepts_response_payload": False,
        }

    async def _send_envelope(self, envelope: dict[str, Any], socket: int | None) -> None:
        if not self._sockets:
            raise AssertionError("no Socket Mode connection to deliver to")
        index = next(self._round_robin) if socket is None else socket
        sock = self._sockets[index % len(self._sockets)]
        self.envelopes[envelope["envelope_id"]] = envelope
        await sock.ws.send_str(json.dumps(envelope))

    def _record_event_message(self, event: dict[str, Any], team_id: str) -> None:
        if event.get("type") not in ("message", "app_mention"):
            return
        if event.get("subtype") not in (None, "file_share", "thread_broadcast", "bot_message"):
            return
        channel, ts = event.get("channel"), event.get("ts")
        if not isinstance(channel, str) or not isinstance(ts, str):
            return
        if (channel, ts) not in self._messages:
            self.add_message(
                channel,
                str(event.get("text", "")),
                user=event.get("user"),
                thread_ts=event.get("thread_ts"),
                ts=ts,
                bot_id=event.get("bot_id"),
                team_id=team_id,
                broadcast=event.get("subtype") == "thread_broadcast",
            )
            files = event.get("files")
            if isinstance(files, list):
                self._messages[(channel, ts)].files = [dict(f) for f in files]

    async def _handle_socket(self, request: web.Request) -> web.StreamResponse:
        if self._stopping.is_set():
            # A client reconnecting while the fake shuts down must not outlive it.
            return web.Response(status=503, text="shutting down")
        ws = web.WebSocketResponse(timeout=1.0)
        await ws.prepare(request)
        sock = _Socket(ws, request, request.query.get("ticket", ""))
        try:
            await ws.send_json(
                {
                    "type": "hello",
                    "num_connections": len(self._sockets) + 1,
                    "debug_info": {
                        "host": "fake-slack",
                        "build_number": 1,
                        "approximate_connection_time": 3600,
                    },
                    "connection_info": {"app_id": self.app_id},
                }
            )
            self._sockets.append(sock)
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self._on_socket_text(msg.data)
        except ConnectionError:
            pass  # the client went away mid-send; nothing to answer
        finally:
            if sock in self._sockets:
                self._sockets.remove(sock)
        return ws

    def _on_socket_text(self, data: str) -> None:
        try:
            message = json.loads(data)
        except json.JSONDecodeError:
            message = {"unparsed": data}
        if not isinstance(message, dict):
            message = {"unparsed": data}
        self.socket_messages.append(message)
        envelope_id = message.get("envelope_id")
        if isinstance(envelope_id, str):
            self.acks[envelope_id] = message

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        """A file's content (``url_private`` / ``url_private_download``), as files.slack.com
        serves it: to a bot token of an app holding files:read; else a redirect to the sign-in
        page (HTTP 200, HTML), never a 401."""
        file_id = request.match_info["key"].rpartition("-")[2]
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        authorized = token in self.bot_tokens
        path = request.path

        def record(status: int, *, sign_in: bool = False) -> None:
            self.downloads.append(Download(file_id, path, authorized, status, sign_in))

        # ``fail_next("files.download:F123", …)`` aims at one file, ``"files.download"`` at any.
        fault = self._take_fault(f"files.download:{file_id}") or self._take_fault("files.download")
        if fault is not None:
            if fault.kind in ("reset", "hang"):
                record(0)
                if fault.kind == "hang":
                    await self._until_stopped_or_gone(request)
                if request.transport is not None:
                    request.transport.close()
                return web.Response()
            status = int(fault.kind) if fault.kind.isdigit() else 500
            record(status)
            return web.Response(
                status=status, text=f"<html>{status}</html>", content_type="text/html"
            )
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if not authorized or not self.files_read:
            record(302, sign_in=True)
            raise web.HTTPFound(f"/?redir={quote(path, safe='')}")
        stored = self._files.get(file_id)
        if stored is None or stored.deleted:
            record(404)
            return web.Response(status=404, text=_NOT_FOUND_PAGE, content_type="text/html")
        record(200)
        headers = {"Content-Type": stored.mimetype}
        if "/download/" in path:
            headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(stored.name)}"
        if not self.chunked_downloads:
            return web.Response(body=stored.content, headers=headers)
        response = web.StreamResponse(headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(stored.content), 16384):
            await response.write(stored.content[start : start + 16384])
        await response.write_eof()
        return response

    async def _handle_sign_in(self, request: web.Request) -> web.Response:
        """Slack's sign-in page: where a file request without access ends up."""
        return web.Response(text=_SIGN_IN_PAGE, content_type="text/html")

    async def _handle_response_url(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.responses.append({"n": request.match_info["n"], **body})
        return web.Response(text="ok", content_type="text/plain")

    # ------------------------------------------------------------------ Web API plumbing

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        try:
            args, token = await self._read_args(request)
        except _ApiError as exc:
            return self._respond(method, {}, "", {"ok": False, "error": exc.error}, exc.status)
        handler = self._methods.get(method)
        if handler is None:
            return self._respond(method, args, "", {"ok": False, "error": "unknown_method"}, 404)
        transport = request.transport
        if transport is not None and transport not in self._seen_transports:
            self._seen_transports.add(transport)
            self.connections += 1
            if self.connection_latency > 0:
                await asyncio.sleep(self.connection_latency)
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        try:
            team = self._authenticate(method, token)
        except _ApiError as exc:
            return self._respond(method, args, "", {"ok": False, "error": exc.error}, exc.status)

        fault = self._take_fault(method)
        if fault is not None:
            return await self._apply_fault(request, method, args, team, fault)

        budget = self.budgets.get(method)
        if budget is not None:
            wait = self._bucket(team, method, budget).take(self.clock())
            if wait > 0:
                # Round off float noise: 59 s into a 1/min budget is 1 s to wait, not 2.
                return self._ratelimited(method, args, team, max(1, math.ceil(wait - 1e-9)))

        try:
            channel = args.get("channel", args.get("channel_id"))
            if channel is not None and channel in self.missing_channels:
                raise _ApiError("channel_not_found")
            body = handler(args, team)
        except _ApiError as exc:
            return self._respond(method, args, team, {"ok": False, "error": exc.error}, exc.status)
        return self._respond(method, args, team, {"ok": True, **body}, 200)

    async def _read_args(self, request: web.Request) -> tuple[dict[str, Any], str | None]:
        args: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.body_exists:
            if request.content_type == "application/json":
                try:
                    body = await request.json()
                except json.JSONDecodeError as exc:
                    raise _ApiError("invalid_json") from exc
                if not isinstance(body, dict):
                    raise _ApiError("invalid_json")
                args.update(body)
            else:
                form = await request.post()
                args.update({k: v for k, v in form.items() if isinstance(v, str)})
        for key in ("blocks", "attachments", "chunks"):
            if isinstance(args.get(key), str):
                try:
                    args[key] = json.loads(args[key])
                except json.JSONDecodeError as exc:
                    raise _ApiError("invalid_blocks_format") from exc
        token = args.pop("token", None)
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            token = header.removeprefix("Bearer ").strip()
        return args, token if isinstance(token, str) else None

    def _authenticate(self, method: str, token: str | None) -> str:
        """Return the token's workspace; bot tokens everywhere, the app token for one method."""
        if not token:
            raise _ApiError("not_authed")
        is_app_method = method == "apps.connections.open"
        if token == self.app_token:
            if not is_app_method:
                raise _ApiError("not_allowed_token_type")
            return self.team_id
        if token in self.bot_tokens:
            if is_app_method:
                raise _ApiError("not_allowed_token_type")
            return self.bot_tokens[token]
        raise _ApiError("invalid_auth")

    def _take_fault(self, method: str) -> _Fault | None:
        queue = self._faults.get(method)
        if not queue:
            return None
        fault = queue[0]
        fault.remaining -= 1
        if fault.remaining <= 0:
            queue.popleft()
        return fault

    async def _apply_fault(
        self, request: web.Request, method: str, args: dict[str, Any], team: str, fault: _Fault
    ) -> web.StreamResponse:
        if fault.kind == "ratelimited":
            return self._ratelimited(method, args, team, max(1, fault.retry_after))
        if fault.kind.isdigit():
            status = int(fault.kind)
            self._record(method, args, team, status, {})
            html = f"<html><body><h1>{status} Server Error</h1></body></html>"
            return web.Response(status=status, text=html, content_type="text/html")
        if fault.kind in ("reset", "hang"):
            self._record(method, args, team, 0, {})
            if fault.kind == "hang":
                await self._until_stopped_or_gone(request)
            if request.transport is not None:
                request.transport.close()
            # Writing to the closed transport fails quietly inside aiohttp: no response is sent.
            return web.Response()
        return self._respond(method, args, team, {"ok": False, "error": fault.kind}, 200)

    async def _until_stopped_or_gone(self, request: web.Request) -> None:
        while not self._stopping.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.05)

    def _bucket(self, team: str, method: str, budget: tuple[float, int]) -> _Bucket:
        bucket = self._buckets.get((team, method))
        if bucket is None:
            per_minute, burst = budget
            bucket = _Bucket(per_minute / 60.0, burst, float(burst), self.clock())
            self._buckets[(team, method)] = bucket
        return bucket

    def _ratelimited(
        self, method: str, args: dict[str, Any], team: str, retry_after: int
    ) -> web.Response:
        body = {"ok": False, "error": "ratelimited"}
        self._record(method, args, team, 429, body)
        return web.json_response(body, status=429, headers={"Retry-After": str(retry_after)})

    def _respond(
        self, method: str, args: dict[str, Any], team: str, body: dict[str, Any], status: int
    ) -> web.Response:
        self._record(method, args, team, status, body)
        return web.json_response(body, status=status)

    def _record(
        self, method: str, args: dict[str, Any], team: str, status: int, body: dict[str, Any]
    ) -> None:
        self.calls.append(Call(method, args, self.clock(), status, body, team))

    def _claim_ts(self, ts: str | None) -> str:
        """A ts that is unique and later than any ts this fake has seen (unless given)."""
        if ts is None:
            ts = new_ts()
            if _ts_key(ts) <= self._max_ts:
                seconds, micros = self._max_ts
                micros += 100
                ts = _ts_from_key((seconds + micros // 1_000_000, micros % 1_000_000))
        self._max_ts = max(self._max_ts, _ts_key(ts))
        return ts

    def _own_message(self, args: dict[str, Any], ts_arg: str = "ts") -> Message:
        channel = _need(args, "channel", "channel_not_found")
        message = self._messages.get((channel, str(args.get(ts_arg, ""))))
        if message is None or message.deleted:
            raise _ApiError("message_not_found")
        return message

    def _stream_is_live(self, message: Message) -> bool:
        """Whether a native stream still accepts appends; expiry is lazy, on the fake's clock."""
        if not message.streaming:
            return False
        now = self.clock()
        started = message.stream_started_at or now
        touched = message.stream_touched_at or now
        expired = (self.stream_lifetime is not None and now - started >= self.stream_lifetime) or (
            self.stream_idle_timeout is not None and now - touched >= self.stream_idle_timeout
        )
        if expired:
            message.streaming = False
        return not expired

    @staticmethod
    def _text_args(args: dict[str, Any], limit: int) -> tuple[str | None, list[Any] | None]:
        """(text, blocks) from text/blocks/markdown_text; each may be None when absent."""
        text = args.get("text")
        blocks = args.get("blocks")
        markdown = args.get("markdown_text")
        if markdown is not None:
            if text is not None or blocks is not None:
                raise _ApiError("invalid_arguments")
            if len(str(markdown)) > MARKDOWN_TEXT_LIMIT:
                raise _ApiError("msg_too_long")
            text = markdown
        if text is not None and len(str(text)) > limit:
            raise _ApiError("msg_too_long")
        if blocks is not None and (not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS):
            raise _ApiError("invalid_blocks")
        return (None if text is None else str(text)), blocks

    # ------------------------------------------------------------------ Web API methods

    def _api_auth_test(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        return {
            "url": "https://test.slack.com/",
            "team": "Test Team",
            "user": self.users.get(self.bot_user_id, "testbot"),
            "team_id": team,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _api_post_message(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        channel = _need(args, "channel", "channel_not_found")
        text, blocks = self._text_args(args, POST_TEXT_LIMIT)
        if not text and not blocks:
            raise _ApiError("no_text")
        thread_ts = args.get("thread_ts") or None
        message = Message(
            channel=channel,
            ts=self._claim_ts(None),
            thread_ts=None if thread_ts is None else str(thread_ts),
            blocks=blocks,
            user=self.bot_user_id,
            bot_id=self.bot_id,
            team_id=team,
            broadcast=thread_ts is not None and _flag(args.get("reply_broadcast")),
        )
        message.set_text(text or "")
        self._messages[(channel, message.ts)] = message
        if message.thread_ts is not None:
            # Slack clears the assistant status when the app replies in the thread.
            self.statuses.pop((channel, message.thread_ts), None)
        return {"channel": channel, "ts": message.ts, "message": message.to_api()}

    def _api_update(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        message = self._own_message(args)
        if message.bot_id != self.bot_id:
            raise _ApiError("cant_update_message")
        if self._stream_is_live(message):
            raise _ApiError("streaming_state_conflict")
        text, blocks = self._text_args(args, UPDATE_TEXT_LIMIT)
        if text is None and blocks is None:
            raise _ApiError("no_text")
        if blocks is not None:
            message.blocks = blocks
        message.edits += 1
        message.set_text(text if text is not None else message.text)
        return {
            "channel": message.channel,
            "ts": message.ts,
            "text": message.text,
            "message": message.to_api(),
        }

    def _api_delete(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        message = self._own_message(args)
        if message.bot_id != self.bot_id:
            raise _ApiError("cant_delete_message")
        message.deleted = True
        message.streaming = False
        return {"channel": message.channel, "ts": message.ts}

    def _api_replies(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        """A thread, oldest first (the parent first when it is in the window)."""
        channel = _need(args, "channel", "channel_not_found")
        ts = _need(args, "ts", "thread_not_found")
        anchor = self._messages.get((channel, ts))
        root = anchor.thread_ts if anchor is not None and anchor.thread_ts else ts
        thread = self.thread(channel, root)
        if not thread:
            raise _ApiError("thread_not_found")
        limit = self._page_limit("conversations.replies", args)
        window = _Window.from_args(args)
        messages = [m for m in thread if m.ts in window]
        start = _cursor_ts(args)
        if start is not None:
            messages = [m for m in messages if _ts_key(m.ts) >= start]
        return self._page(messages, limit)

    def _api_history(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        """A channel as its members scroll it: top-level messages, newest first.

        Thread replies are left out unless broadcast; parents carry their thread fields
        (``reply_count``, ``latest_reply``, …). A channel is known once it has held a message.
        """
        channel = _need(args, "channel", "channel_not_found")
        held = [m for m in self._messages.values() if m.channel == channel]
        if not held:
            raise _ApiError("channel_not_found")
        limit = self._page_limit("conversations.history", args)
        window = _Window.from_args(args)
        messages = sorted(
            (m for m in held if m.in_channel and m.ts in window),
            key=lambda m: _ts_key(m.ts),
            reverse=True,
        )
        start = _cursor_ts(args)
        if start is not None:
            messages = [m for m in messages if _ts_key(m.ts) <= start]
        return self._page(messages, limit)

    def _page_limit(self, method: str, args: dict[str, Any]) -> int:
        default, maximum = (
            (LIMITED_READ_PAGE, LIMITED_READ_PAGE)
            if self.limited_reads
            else READ_PAGE_SIZES[method]
        )
        value = args.get("limit")
        if value is None or value == "":
            return default
        try:
            return max(1, min(maximum, int(value)))
        except (TypeError, ValueError) as exc:
            raise _ApiError("invalid_limit") from exc

    def _page(self, messages: list[Message], limit: int) -> dict[str, Any]:
        """One page of ``messages`` (already in the order returned); the cursor names the next."""
        page, rest = messages[:limit], messages[limit:]
        next_cursor = base64.b64encode(f"next_ts:{rest[0].ts}".encode()).decode() if rest else ""
        return {
            "messages": [self._thread_view(m) for m in page],
            "has_more": bool(rest),
            "response_metadata": {"next_cursor": next_cursor},
        }

    def _thread_view(self, message: Message) -> dict[str, Any]:
        body = message.to_api()
        if message.is_reply:
            parent = self._messages.get((message.channel, str(message.thread_ts)))
            if parent is not None and parent.user is not None:
                body["parent_user_id"] = parent.user
            return body
        replies = [m for m in self.thread(message.channel, message.ts) if m.is_reply]
        if replies:
            users = sorted({m.user for m in replies if m.user})
            body.update(
                thread_ts=message.ts,
                reply_count=len(replies),
                reply_users=users,
                reply_users_count=len(users),
                latest_reply=replies[-1].ts,
            )
        return body

    def _api_reactions_add(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        message = self._own_message(args, "timestamp")
        users = message.reactions.setdefault(_need(args, "name", "invalid_name"), [])
        if self.bot_user_id in users:
            raise _ApiError("already_reacted")
        users.append(self.bot_user_id)
        return {}

    def _api_reactions_remove(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        message = self._own_message(args, "timestamp")
        name = _need(args, "name", "invalid_name")
        users = message.reactions.get(name, [])
        if self.bot_user_id not in users:
            raise _ApiError("no_reaction")
        users.remove(self.bot_user_id)
        if not users:
            del message.reactions[name]
        return {}

    def _api_set_status(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        key = (_need(args, "channel_id", "channel_not_found"), _need(args, "thread_ts"))
        if "status" not in args:
            raise _ApiError("invalid_arguments")
        self.statuses[key] = str(args["status"])
        self._status_at[key] = self.clock()
        return {}

    def _api_set_title(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        key = (_need(args, "channel_id", "channel_not_found"), _need(args, "thread_ts"))
        self.titles[key] = _need(args, "title")
        return {}

    def _api_set_suggested_prompts(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        key = (_need(args, "channel_id", "channel_not_found"), _need(args, "thread_ts"))
        prompts = args.get("prompts")
        if isinstance(prompts, str):  # form-encoded: a JSON string
            try:
                prompts = json.loads(prompts)
            except json.JSONDecodeError as exc:
                raise _ApiError("invalid_arguments") from exc
        if not isinstance(prompts, list) or not 1 <= len(prompts) <= MAX_SUGGESTED_PROMPTS:
            raise _ApiError("invalid_arguments")
        for prompt in prompts:
            if not isinstance(prompt, dict) or not all(
                isinstance(prompt.get(k), str) and prompt[k] for k in ("title", "message")
            ):
                raise _ApiError("invalid_arguments")
        title = args.get("title")
        self.suggested_prompts[key] = SuggestedPrompts(
            [{"title": p["title"], "message": p["message"]} for p in prompts],
            str(title) if title else None,
        )
        return {}

    def _api_post_ephemeral(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        channel = _need(args, "channel", "channel_not_found")
        user = _need(args, "user", "user_not_found")
        text, blocks = self._text_args(args, POST_TEXT_LIMIT)
        if not text and not blocks:
            raise _ApiError("no_text")
        thread_ts = args.get("thread_ts") or None
        self.ephemerals.append(
            Ephemeral(
                channel, user, text or "", None if thread_ts is None else str(thread_ts), blocks
            )
        )
        return {"message_ts": self._claim_ts(None)}

    def _api_start_stream(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        channel = _need(args, "channel", "channel_not_found")
        thread_ts = _need(args, "thread_ts")
        if not channel.startswith("D") and not (
            args.get("recipient_user_id") and args.get("recipient_team_id")
        ):
            raise _ApiError("invalid_arguments")
        now = self.clock()
        message = Message(
            channel=channel,
            ts=self._claim_ts(None),
            thread_ts=thread_ts,
            user=self.bot_user_id,
            bot_id=self.bot_id,
            team_id=team,
            streaming=True,
            stream_started_at=now,
            stream_touched_at=now,
        )
        text, tasks, order = self._stream_parts(args)
        message.set_text(text)
        message.apply_tasks(tasks)
        message.timeline += order
        self._messages[(channel, message.ts)] = message
        self.statuses.pop((channel, thread_ts), None)
        return {"channel": channel, "ts": message.ts}

    def _api_append_stream(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        message = self._live_stream(args)
        chunk, tasks, order = self._stream_parts(args)
        if not chunk and not tasks:
            raise _ApiError("invalid_arguments")
        message.stream_touched_at = self.clock()
        if chunk:
            message.set_text(message.text + chunk)
        message.apply_tasks(tasks)
        message.timeline += order
        return {"channel": message.channel, "ts": message.ts}

    def _api_stop_stream(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        message = self._live_stream(args)
        chunk, tasks, order = self._stream_parts(args)
        if chunk:
            message.set_text(message.text + chunk)
        message.apply_tasks(tasks)
        message.timeline += order
        blocks = args.get("blocks")
        if blocks is not None:
            if not isinstance(blocks, list) or len(blocks) > MAX_BLOCKS:
                raise _ApiError("invalid_blocks")
            message.blocks = blocks
        message.streaming = False
        return {"channel": message.channel, "ts": message.ts, "message": message.to_api()}

    def _live_stream(self, args: dict[str, Any]) -> Message:
        message = self._own_message(args)
        if message.stopped_by_user:
            raise _ApiError("stopped_by_user")
        if not self._stream_is_live(message):
            raise _ApiError("message_not_in_streaming_state")
        return message

    @staticmethod
    def _stream_parts(
        args: dict[str, Any],
    ) -> tuple[str, list[dict[str, Any]], list[tuple[str, str]]]:
        """The Markdown, the ``task_update`` chunks (checked like Slack: an id, a title and one
        of its four states) and both in the order given: ``("text", …)`` / ``("task", id)``."""
        text = str(args.get("markdown_text") or "")
        tasks: list[dict[str, Any]] = []
        order: list[tuple[str, str]] = [("text", text)] if text else []
        for chunk in args.get("chunks") or []:
            if not isinstance(chunk, dict):
                raise _ApiError("invalid_chunks")
            if chunk.get("type") == "markdown_text":
                text += str(chunk.get("text", ""))
                order.append(("text", str(chunk.get("text", ""))))
            elif chunk.get("type") == "task_update":
                if not (
                    isinstance(chunk.get("id"), str)
                    and isinstance(chunk.get("title"), str)
                    and chunk.get("status") in TASK_STATES
                ):
                    raise _ApiError("invalid_chunks")
                tasks.append(chunk)
                order.append(("task", chunk["id"]))
            else:
                raise _ApiError("invalid_chunks")
        if len(text) > MARKDOWN_TEXT_LIMIT:
            raise _ApiError("msg_too_long")
        return text, tasks, order

    def _api_users_info(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        user_id = _need(args, "user", "user_not_found")
        name = self.users.get(user_id)
        if name is None:
            raise _ApiError("user_not_found")
        handle = name.lower().replace(" ", ".")
        return {
            "user": {
                "id": user_id,
                "team_id": team,
                "name": handle,
                "real_name": name,
                "is_bot": user_id == self.bot_user_id,
                "is_admin": user_id in self.admins,
                "is_owner": False,
                "deleted": False,
                "profile": {"real_name": name, "display_name": name},
            }
        }

    def _api_files_info(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        if not self.files_read:
            raise _ApiError("missing_scope")
        stored = self._files.get(_need(args, "file", "file_not_found"))
        if stored is None:
            raise _ApiError("file_not_found")
        if stored.deleted:
            raise _ApiError("file_deleted")
        return {
            "file": self.file_object(stored.id),
            "comments": [],
            "response_metadata": {"next_cursor": ""},
        }

    def _api_connections_open(self, args: dict[str, Any], team: str) -> dict[str, Any]:
        return {"url": f"ws://127.0.0.1:{self.port}/socket?ticket={next(self._tickets)}"}


_SIGN_IN_PAGE = """<!DOCTYPE html><html lang="en-US" class="" data-primer><head>
<meta charset="utf-8"><title>Sign in to Test Team | Slack</title>
<link href="https://a.slack-edge.com/d5fba4c/marketing/style/onetrust/onetrust_banner.css"
 rel="stylesheet" type="text/css"></head>
<body><h1>Sign in to Test Team</h1><p>test.slack.com</p>
<form action="/signin" method="post"><input type="email" name="email"></form></body></html>
"""
_NOT_FOUND_PAGE = "<!DOCTYPE html><html><body><h1>File Not Found</h1></body></html>"
