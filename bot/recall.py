"""Reading conversations back from Slack, the source of truth, where the store cannot answer:
does the bot take part in this thread, what was said in it, was this message answered already.

    recall = Recall(slack, store.history, reads, limit=100)
    await recall.takes_part(key, bot_user="U0BOT")           # asks Slack; caches a "no"
    turns = await recall.turns(key, inbound, own_replies)    # None: Slack would not say
    await recall.answered(inbound, reply_thread)             # True / False / None

This is the cold path: the turn calls it only when the store is down, emptied, or older than
the thread (see bot/store/history.py). Reads are paced by a workspace budget shared by replicas
(``reads``; some apps get one ``conversations.replies`` a minute), a thread is read once for a
burst of messages (one read in flight per thread, its result reused while it is fresh enough),
and at most ``max_pages`` pages are read, keeping the thread's parent and its newest messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bot.conversation import ThreadKey, Turn, ts_seconds
from bot.errors import SlackError, SlackRateLimited
from bot.events import USER_SUBTYPES, Inbound, files_of, mention_pattern
from bot.render.budget import EditBudget, Priority
from bot.slack import SlackGateway
from bot.store import ThreadMemory

log = logging.getLogger(__name__)

READ_METHOD = "conversations.replies"
_CACHED_THREADS = 256
_NOT_MINE_LOCAL_S = 600.0  # a "no" kept here too, for when the store is down
_FRESH_S = 10.0  # a view this young may still say "no, the bot is not in this thread"
_SPARE = 8  # messages read beyond BACKFILL_LIMIT (see Recall._read)
_CALL_S = 5.0  # how long joining another message's read may take beyond the wait


@dataclass(frozen=True, slots=True)
class ThreadView:
    """What Slack showed of a thread: its parent and newest messages, oldest first; who wrote
    the messages read; whether every message was read, and whether the read reached the
    thread's end; when it was read (``time.monotonic``)."""

    messages: tuple[dict[str, Any], ...]
    authors: frozenset[str]
    complete: bool
    to_the_end: bool
    read_at: float

    def posted_by(self, user: str) -> bool | None:
        """Whether ``user`` posted in the thread (None: not in what was read, which is not
        all of it). The parent's ``reply_users`` names repliers beyond the pages read."""
        if user in self.authors:
            return True
        parent = self.messages[0] if self.messages else {}
        repliers = parent.get("reply_users")
        if isinstance(repliers, list) and user in repliers:
            return True
        if self.complete:
            return False
        count = parent.get("reply_users_count")
        return False if isinstance(repliers, list) and count == len(repliers) else None

    def covers(self, ts: str) -> bool:
        """Whether this view holds everything posted before message ``ts``: it shows that
        message or a later one (Slack's clock, not ours), or it is all that could be read."""
        if not self.to_the_end:
            return True
        return any(ts_seconds(m.get("ts")) >= ts_seconds(ts) for m in self.messages)


class Recall:
    """The cold path to Slack's copy of conversations (see the module docstring)."""

    def __init__(
        self,
        slack: SlackGateway,
        memory: ThreadMemory,
        reads: EditBudget,
        *,
        limit: int,
        page_size: int = 200,
        max_pages: int = 10,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._slack = slack
        self._memory = memory
        self._reads = reads
        self._limit = limit
        self._page_size = page_size
        self._max_pages = max_pages
        self._clock = clock
        self._monotonic = monotonic
        self._views: OrderedDict[tuple[str, str], ThreadView] = OrderedDict()
        self._reading: dict[tuple[str, str], asyncio.Task[ThreadView | None]] = {}
        self._not_mine: OrderedDict[ThreadKey, float] = OrderedDict()

    async def takes_part(
        self, key: ThreadKey, *, bot_user: str | None, wait: float, fresh_for: str
    ) -> bool:
        """Whether the bot has posted in the thread, as Slack shows it (for the message
        ``fresh_for``). Waits up to ``wait`` seconds for a read token; False when Slack cannot
        say (the message is not answered)."""
        if bot_user is None:
            return False
        if self._not_mine.get(key, 0.0) > self._clock():
            return False
        view = await self.thread(key, wait=wait)
        if view is not None and view.posted_by(bot_user) is not True:
            # A "no" must come from a read of now, not from one kept from long ago: the bot
            # may have answered there since, through another replica.
            if self._monotonic() - view.read_at > _FRESH_S and not view.covers(fresh_for):
                view = await self.thread(key, wait=wait, fresh_for=fresh_for)
        if view is None:
            log.info("could not tell from Slack whether the bot is in thread %s", key)
            return False
        posted = view.posted_by(bot_user)
        if posted is False:
            self._remember_not_mine(key)
            await self._memory.not_mine(key)
        return bool(posted)

    async def turns(
        self, key: ThreadKey, inbound: Inbound, own_replies: Iterable[str], *, wait: float = 0.0
    ) -> list[Turn] | None:
        """The thread's earlier messages as turns (the newest that were read); None when
        Slack would not say in time."""
        view = await self.thread(key, wait=wait, fresh_for=inbound.ts)
        if view is None:
            return None
        own = set(own_replies)
        turns = [t for t in (_turn_from_slack(m, inbound, own) for m in view.messages) if t]
        if len(turns) > self._limit:  # the first message, and the newest
            turns = turns[:1] + turns[len(turns) - (self._limit - 1) :]
        return turns

    async def channel_turns(
        self, inbound: Inbound, own_replies: Iterable[str]
    ) -> list[Turn] | None:
        """The newest top-level messages before ``inbound`` in its channel (a DM's running
        conversation) as turns, oldest first; None when Slack would not say at once."""
        deadline = asyncio.get_running_loop().time()
        if not await self._reads.acquire(inbound.team, Priority.FINAL, deadline=deadline):
            return None
        try:
            messages = await self._slack.channel_page(
                inbound.channel, latest=inbound.ts, limit=max(self._limit, 1)
            )
        except SlackError as exc:
            await self._note_failure(inbound.team, exc)
            log.info("could not read %s from Slack: %s", inbound.channel, exc.error)
            return None
        own = set(own_replies)
        turns = (_turn_from_slack(m, inbound, own) for m in reversed(messages))
        return [turn for turn in turns if turn is not None]

    async def answered(self, inbound: Inbound, reply_thread: str | None) -> bool | None:
        """Whether the bot has posted after ``inbound`` where it would answer it (the thread
        ``reply_thread``, or the channel's top level); None when Slack would not say."""
        if inbound.bot_user_id is None:
            return None
        if not await self._reads.acquire(
            inbound.team, Priority.FINAL, deadline=asyncio.get_running_loop().time() + 10.0
        ):
            return None
        try:
            if reply_thread is None:
                messages = await self._slack.channel_page(inbound.channel, oldest=inbound.ts)
            else:
                messages, _ = await self._slack.thread_page(
                    inbound.channel, reply_thread, oldest=inbound.ts, limit=self._page_size
                )
        except SlackError as exc:
            await self._note_failure(inbound.team, exc)
            return None
        later = (m for m in messages if ts_seconds(m.get("ts")) > ts_seconds(inbound.ts))
        return any(m.get("user") == inbound.bot_user_id for m in later)

    async def message(
        self, team: str, channel: str, ts: str, *, thread_ts: str | None
    ) -> tuple[bool, dict[str, Any] | None]:
        """The message ``ts`` as Slack shows it now: (True, it), (True, None) when it is gone,
        (False, None) when Slack would not say (no read token within 10 s, an error)."""
        deadline = asyncio.get_running_loop().time() + 10.0
        if not await self._reads.acquire(team, Priority.FINAL, deadline=deadline):
            return False, None
        try:
            return True, await self._slack.message(channel, ts, thread_ts=thread_ts)
        except SlackError as exc:
            await self._note_failure(team, exc)
            log.info("could not read message %s/%s from Slack: %s", channel, ts, exc.error)
            return False, None

    def forget(self, key: ThreadKey) -> None:
        """The bot has just posted in the thread: what was read of it is out of date."""
        self._views.pop((key.channel, key.thread_ts), None)
        self._not_mine.pop(key, None)

    async def thread(
        self, key: ThreadKey, *, wait: float, fresh_for: str | None = None
    ) -> ThreadView | None:
        """The thread as Slack shows it: read once for every caller asking at the same time,
        reused while it covers ``fresh_for`` (a message's ts; None: any view will do)."""
        where = (key.channel, key.thread_ts)
        view = self._views.get(where)
        if view is not None and (fresh_for is None or view.covers(fresh_for)):
            return view
        reading = self._reading.get(where)
        if reading is not None:
            # A read another message started may be waiting longer for its token than this
            # one may wait.
            try:
                view = await asyncio.wait_for(asyncio.shield(reading), wait + _CALL_S)
            except TimeoutError:
                return None
            if view is None or fresh_for is None or view.covers(fresh_for):
                return view
            # That read began before the message it is wanted for was posted: read again.
        reading = self._reading[where] = asyncio.create_task(self._read(key, wait))
        reading.add_done_callback(lambda done: self._forget_read(where, done))
        return await asyncio.shield(reading)

    def _forget_read(self, where: tuple[str, str], done: asyncio.Task[ThreadView | None]) -> None:
        if self._reading.get(where) is done:
            del self._reading[where]
        view = None if done.cancelled() or done.exception() else done.result()
        if view is not None:
            self._views[where] = view
            self._views.move_to_end(where)
            while len(self._views) > _CACHED_THREADS:
                self._views.popitem(last=False)

    async def _read(self, key: ThreadKey, wait: float) -> ThreadView | None:
        """The parent and the newest messages (``limit`` in all). The first page waits up to
        ``wait`` for a read token; a later one reads only if a token is there at once (so an
        app Slack limits to one read a minute reads one page: the thread's beginning). A long
        thread is not walked page by page: after the first page the read jumps to its tail
        (estimated from the parent's ``reply_count`` and ``latest_reply``); at most
        ``max_pages`` pages in all."""
        loop = asyncio.get_running_loop()
        read_at = self._monotonic()
        parent: dict[str, Any] | None = None
        # The parent and ``limit`` - 1 of the newest, once the message being answered and the
        # bot's own messages after it are left out (``turns``): room for a few of those.
        newest: deque[dict[str, Any]] = deque(maxlen=max(self._limit - 1, 1) + _SPARE)
        authors: set[str] = set()
        cursor: str | None = None
        oldest: str | None = None
        replies_read = 0
        for page in range(self._max_pages):
            deadline = loop.time() + (wait if page == 0 else 0.0)
            if not await self._reads.acquire(key.team, Priority.FINAL, deadline=deadline):
                break
            try:
                messages, cursor = await self._slack.thread_page(
                    key.channel, key.thread_ts, limit=self._page_size, cursor=cursor, oldest=oldest
                )
            except SlackError as exc:
                await self._note_failure(key.team, exc)
                if page == 0:
                    log.info("could not read thread %s from Slack: %s", key, exc.error)
                    return None
                break
            for message in map(_kept, messages):
                if isinstance(message.get("user"), str):
                    authors.add(message["user"])
                if message.get("ts") == key.thread_ts:
                    parent = parent or message
                else:
                    newest.append(message)
                    replies_read += 1
            if cursor is None:
                return ThreadView(
                    _with_parent(parent, newest),
                    frozenset(authors),
                    complete=oldest is None,
                    to_the_end=True,
                    read_at=read_at,
                )
            if oldest is None:
                oldest = _tail_start(parent, newest, replies_read, self._limit, self._page_size)
                if oldest is not None:
                    cursor = None  # the tail's own pages from here on
        else:
            log.info("thread %s is longer than %d pages; read part of it", key, self._max_pages)
        if parent is None and not newest:
            return None
        return ThreadView(
            _with_parent(parent, newest),
            frozenset(authors),
            complete=False,
            to_the_end=False,
            read_at=read_at,
        )

    async def _note_failure(self, team: str, exc: SlackError) -> None:
        if isinstance(exc, SlackRateLimited):
            await self._reads.rate_limited(team, exc.retry_after)

    def _remember_not_mine(self, key: ThreadKey) -> None:
        self._not_mine[key] = self._clock() + _NOT_MINE_LOCAL_S
        self._not_mine.move_to_end(key)
        while len(self._not_mine) > _CACHED_THREADS:
            self._not_mine.popitem(last=False)


def _with_parent(
    parent: dict[str, Any] | None, newest: Iterable[dict[str, Any]]
) -> tuple[dict[str, Any], ...]:
    return tuple([parent, *newest] if parent is not None else newest)


def _tail_start(
    parent: dict[str, Any] | None,
    newest: deque[dict[str, Any]],
    replies_read: int,
    limit: int,
    page_size: int,
) -> str | None:
    """Where to read on from so that the rest of the read holds about the newest ``limit``
    messages (with a margin), assuming replies came at an even pace; None: read page by page
    (the rest is short, or the parent does not say how long the thread is)."""
    if parent is None or not newest:
        return None
    count, latest = parent.get("reply_count"), ts_seconds(parent.get("latest_reply"))
    last_read = ts_seconds(newest[-1].get("ts"))
    if not isinstance(count, int) or latest <= last_read:
        return None
    remaining = count - replies_read
    if remaining <= 2 * page_size:
        return None
    # A wide margin: the pace is never even (the message being answered often came after a
    # pause), and a window too wide costs a page more, one too narrow loses context.
    share = min(1.0, 3 * limit / remaining)
    return f"{latest - (latest - last_read) * share:.6f}"


_FIELDS = (
    "ts",
    "user",
    "bot_id",
    "subtype",
    "text",
    "thread_ts",
    "reply_count",
    "latest_reply",
    "reply_users",
    "reply_users_count",
)


def _kept(message: dict[str, Any]) -> dict[str, Any]:
    """What a cached view keeps of a message (not its blocks, reactions …; of its files only
    their ids, read through the file cache or files.info when a prompt wants them)."""
    kept = {name: message[name] for name in _FIELDS if name in message}
    files = _file_ids(message)
    if files:
        kept["files"] = files
    return kept


def _file_ids(message: dict[str, Any]) -> tuple[str, ...]:
    """The ids of a message's files: Slack's file objects, or the ids a cached view kept."""
    files = message.get("files")
    if isinstance(files, tuple):
        return files
    return tuple(file.id for file in files_of(message))


def _turn_from_slack(message: dict[str, Any], inbound: Inbound, own: set[str]) -> Turn | None:
    """One earlier thread message as a turn; None for the current message, this answer's own
    messages and messages posted after it."""
    ts = message.get("ts")
    text = message.get("text")
    if not isinstance(ts, str) or not isinstance(text, str) or ts in own:
        return None
    if ts_seconds(ts) >= ts_seconds(inbound.ts):
        return None
    if message.get("subtype") not in USER_SUBTYPES and message.get("subtype") != "bot_message":
        return None
    bot_user = inbound.bot_user_id
    if bot_user and message.get("user") == bot_user:
        return Turn("assistant", text, ts=ts)
    if bot_user:
        text = mention_pattern(bot_user).sub("", text).strip()
    author = message.get("user") or message.get("bot_id")
    files = _file_ids(message)
    if not text and not files:
        return None
    return Turn("user", text, author=str(author) if author else None, ts=ts, files=files)
