"""One reply being streamed into Slack: a placeholder at once, throttled edits as text grows,
continuation messages past the size limit, and a final edit that is retried until it lands.

    reply = ReplyStream(slack, budget, team="T1", channel="C1", thread_ts="17.1", limit=2900)
    await reply.open()                  # the placeholder, before the model is called
    async for delta in answer:
        reply.append(delta)             # never waits on Slack
    await reply.finish(Outcome.COMPLETE)

States: NEW → OPEN → CLOSING → CLOSED; ``append`` is legal only while OPEN, ``finish`` once.
A single flusher task owns every interim edit, so one message never has two edits in flight and
a slow Slack (or a 429) only makes edits sparser — it never slows the reading of the model.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import secrets
from collections.abc import Callable
from typing import Any

from bot.errors import SlackError, SlackRateLimited, SlackRejected, SlackTransient
from bot.render.budget import EditBudget
from bot.slack import SlackGateway

log = logging.getLogger(__name__)

PLACEHOLDER = ":hourglass_flowing_sand: _Thinking…_"
FAILED_TEXT = ":warning: Sorry, I couldn't get an answer from the model just now. Please try again in a moment."
EMPTY_TEXT = ":shrug: The model returned an empty answer. Please try rephrasing."


class Outcome(enum.Enum):
    """How the model stream ended, i.e. which note the final message carries."""

    COMPLETE = "complete"
    INTERRUPTED = "interrupted"  # error, disconnect, truncation or idle mid-answer
    STOPPED = "stopped"  # a person pressed Stop
    FAILED = "failed"  # nothing usable came from the model
    SHUTDOWN = "shutdown"  # the bot is stopping

    @property
    def note(self) -> str | None:
        return _NOTES.get(self)


_NOTES = {
    Outcome.INTERRUPTED: ":warning: _The answer was interrupted._",
    Outcome.STOPPED: ":black_square_for_stop: _Stopped._",
    Outcome.SHUTDOWN: ":warning: _Interrupted while the bot restarted — please ask again._",
}

_WRITING = {
    "type": "context",
    "elements": [{"type": "mrkdwn", "text": ":writing_hand: _writing…_"}],
}


class State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class ReplyStateError(RuntimeError):
    """A ReplyStream method was called in a state that does not allow it (a bug in the caller)."""


Render = Callable[[str], str]
Split = Callable[[str, int], "tuple[str, str]"]


class ReplyStream:
    """The Slack side of one answer; see the module docstring for the lifecycle."""

    def __init__(
        self,
        slack: SlackGateway,
        budget: EditBudget,
        *,
        team: str,
        channel: str,
        thread_ts: str,
        limit: int,
        render: Render,
        split: Split,
        final_deadline: float = 120.0,
    ) -> None:
        self.id = secrets.token_hex(6)
        self._slack = slack
        self._budget = budget
        self._team = team
        self._channel = channel
        self._thread_ts = thread_ts
        self._limit = limit
        self._render = render
        self._split = split
        self._final_deadline = final_deadline
        self.state = State.NEW
        self._chunks: list[str] = []
        self._text = ""  # joined chunks, refreshed by _current_text()
        self._start = 0  # where the current message's part of the text begins
        self._carry = ""  # markdown the current message starts with (a reopened code fence)
        self.ts: str | None = None  # the message being edited now
        self.message_ts: list[str] = []  # every message of this reply, in order
        self._sent = PLACEHOLDER
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self.edits = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Post the placeholder; raises ``SlackError`` when Slack will not take it."""
        self._require(State.NEW)
        self.ts = await self._post(PLACEHOLDER)
        self.message_ts.append(self.ts)
        self.state = State.OPEN
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"reply-{self.id}")

    def append(self, delta: str) -> None:
        """Add model text; cheap and synchronous (the flusher picks it up)."""
        if self.state is not State.OPEN:
            raise ReplyStateError(f"append() while {self.state.value}")
        if delta:
            self._chunks.append(delta)
            self._wake.set()

    @property
    def text(self) -> str:
        """Everything the model has written so far (Markdown)."""
        return self._current_text()

    async def finish(self, outcome: Outcome) -> str:
        """Deliver the final text (retried until ``final_deadline``); return the Markdown shown."""
        if self.state is State.NEW:
            self.state = State.CLOSED
            return ""
        self._require(State.OPEN)
        self.state = State.CLOSING
        self._closing.set()
        self._wake.set()
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        try:
            await self._deliver_final(outcome)
        finally:
            self.state = State.CLOSED
            await self._budget.done(self._team, self.id)
        return self._current_text()

    # -- interim edits -----------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = 0.0  # the first text goes out at once
        while not self._closing.is_set():
            await self._wake.wait()
            self._wake.clear()
            if self._closing.is_set():
                return
            delay = next_at - loop.time()
            if delay > 0 and await self._closed_within(delay):
                return
            if not await self._budget.acquire(self._team, final=False, give_up=self._closing):
                return
            started = loop.time()
            try:
                await self._edit_interim()
            except SlackRateLimited as exc:
                await self._budget.rate_limited(self._team, exc.retry_after)
                self._wake.set()
            except SlackTransient as exc:
                log.info("interim edit failed (%s); will retry", exc.error)
                self._wake.set()
            except SlackRejected as exc:
                log.warning("interim edit rejected (%s) in thread %s", exc.error, self._where)
            interval = await self._budget.interval(self._team, self.id)
            next_at = started + interval

    async def _closed_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _edit_interim(self) -> None:
        markdown = self._carry + self._current_text()[self._start :]
        rendered = self._render(markdown)
        if len(rendered) > self._limit:
            markdown = await self._roll_over(markdown)
            rendered = self._render(markdown)
        if not rendered.strip() or rendered == self._sent:
            return
        assert self.ts is not None
        await self._slack.update(
            self._channel, self.ts, rendered, blocks=[*_section(rendered), _WRITING]
        )
        self._sent = rendered
        self.edits += 1

    async def _roll_over(self, markdown: str) -> str:
        """Freeze full messages at a structural boundary and continue in new ones.

        Returns the Markdown of the message now being written. Freezing (a final-priority edit
        of the full message, then a post of the next) is rare; the model keeps streaming into
        the buffer meanwhile.
        """
        deadline = asyncio.get_running_loop().time() + self._final_deadline
        while True:
            head, tail = self._split(markdown, self._limit)
            if not tail:
                return markdown
            await self._final_edit(self._render(head), None, deadline)
            self._advance(markdown, tail)
            self.ts = await self._post(PLACEHOLDER)
            self.message_ts.append(self.ts)
            self._sent = PLACEHOLDER
            markdown = tail

    def _advance(self, markdown: str, tail: str) -> None:
        """Point the current message at ``tail``: a suffix of ``markdown``, maybe behind a
        reopened code fence (which becomes the new carry)."""
        carry = ""
        if not markdown.endswith(tail):
            carry, tail = tail.split("\n", 1)[0] + "\n", tail.split("\n", 1)[1]
            if not markdown.endswith(tail):
                raise ValueError("split() must return a suffix of its input")
        fresh = len(markdown) - len(self._carry)  # this message's own text so far
        # A split always lies past the carry (one fence line, far below the size limit).
        self._start += fresh - min(len(tail), fresh)
        self._carry = carry

    # -- final delivery ----------------------------------------------------------------------

    async def _deliver_final(self, outcome: Outcome) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._final_deadline
        text = self._current_text()
        if outcome is Outcome.COMPLETE and not text.strip():
            outcome = Outcome.FAILED
            body, note = EMPTY_TEXT, None
        elif outcome is Outcome.FAILED or not text.strip():
            body, note = FAILED_TEXT if outcome is Outcome.FAILED else "", outcome.note
            body = body or (note or FAILED_TEXT)
            note = None
        else:
            body, note = "", outcome.note
        if body:
            await self._final_edit(body, None, deadline)
            return
        markdown = await self._roll_over(self._carry + text[self._start :])
        await self._final_edit(self._render(markdown), note, deadline)

    async def _final_edit(self, rendered: str, note: str | None, deadline: float) -> None:
        """Edit the current message to its last form, retrying until it lands or time runs out."""
        assert self.ts is not None
        loop = asyncio.get_running_loop()
        blocks = [*_section(rendered)]
        if note:
            blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": note}]})
        attempt = 0
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.error("final edit of thread %s not delivered before the deadline", self._where)
                return
            await self._budget.acquire(self._team, final=True)
            try:
                await self._slack.update(self._channel, self.ts, rendered, blocks=blocks)
                self.edits += 1
                self._sent = rendered
                return
            except SlackRateLimited as exc:
                await self._budget.rate_limited(self._team, exc.retry_after)
                wait = exc.retry_after
            except SlackTransient as exc:
                attempt += 1
                wait = min(8.0, 0.25 * 2**attempt) * (0.5 + random.random())
                log.info("final edit failed (%s); retrying in %.1f s", exc.error, wait)
            except SlackRejected as exc:
                if exc.error in ("message_not_found", "cant_update_message", "edit_window_closed"):
                    # The placeholder is gone: the answer still reaches the thread.
                    self.ts = await self._post(rendered, blocks=blocks)
                    self.message_ts.append(self.ts)
                    return
                log.error("final edit of thread %s rejected: %s", self._where, exc.error)
                return
            await asyncio.sleep(min(wait, max(0.0, deadline - loop.time())))

    # -- helpers -----------------------------------------------------------------------------

    async def _post(self, text: str, blocks: list[dict[str, Any]] | None = None) -> str:
        """chat.postMessage in the thread, retried through 429s and 5xx a few times."""
        for attempt in range(5):
            try:
                return await self._slack.post(
                    self._channel, text, thread_ts=self._thread_ts, blocks=blocks
                )
            except SlackRateLimited as exc:
                wait = exc.retry_after
            except SlackTransient as exc:
                if exc.error not in (
                    "ClientConnectorError",
                    "ClientConnectionError",
                ) and not exc.error.startswith("HTTP 5"):
                    raise  # the post may have landed: retrying could double-post
                wait = 0.25 * 2**attempt
            await asyncio.sleep(wait)
        raise SlackError("chat.postMessage", "gave up after retries")

    def _current_text(self) -> str:
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        self._text = self._chunks[0] if self._chunks else ""
        return self._text

    @property
    def _where(self) -> str:
        return f"{self._team}/{self._channel}/{self._thread_ts}"

    def _require(self, state: State) -> None:
        if self.state is not state:
            raise ReplyStateError(f"expected {state.value}, reply is {self.state.value}")


def _section(text: str) -> list[dict[str, Any]]:
    return [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
