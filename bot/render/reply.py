"""One reply streamed into Slack: a placeholder at once, throttled edits as the text grows,
continuation messages past the size limit, and a final edit that is retried until it lands.

    reply = ReplyStream(slack, budget, team="T1", channel="C1", thread_ts="17.1",
                        limit=2900, render=render, split=split)
    async with reply:                       # posts the placeholder, before the model is called
        async for delta in answer:
            reply.append(delta)             # synchronous and O(1): never waits on Slack
        shown = await reply.finish(Outcome.COMPLETE)

Leaving the ``async with`` block by an exception finishes the reply as ``FAILED`` (cancellation:
``SHUTDOWN``), so no exit path leaves a message showing the working indicator.

States: NEW → OPEN → CLOSING → CLOSED; ``append`` is legal only while OPEN. One flusher task
sends every interim edit and every roll-over, so a message never has two edits in flight, and a
slow Slack or a 429 only makes edits sparser: reading the model never waits for it. The final
delivery starts once the flusher has stopped; an interim edit still in flight then gets
``edit_timeout`` seconds to land (two edits racing could leave the older text on top) before
it is abandoned.

Text: ``render`` formats the current message while it is being written (a prefix that may end
mid-construct); ``render_final`` (by default the same) formats text known to be complete: the
final form of every message. Final Slack text is ``render_final`` of the model's Markdown.

Long answers: when the current message would render past ``limit``, ``split(markdown, limit)``
returns ``(head, tail)`` cut at a structural boundary (``tail == ""`` when it all fits); the head
becomes that message's last form and the tail (which may start with a reopened code fence)
continues in a new message in the same thread. Only the current message is ever rendered, so
the cost of an answer grows linearly with its length.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

from bot.errors import SlackError, SlackRateLimited, SlackRejected, SlackTransient
from bot.metrics import Metrics
from bot.render.budget import EditBudget, Priority
from bot.render.contract import (
    BaseReply,
    Outcome,
    ReplyStateError,
    ReplyTracker,
    State,
    Step,
    StepStatus,
)
from bot.render.feedback import feedback_block
from bot.slack import SlackGateway

log = logging.getLogger(__name__)

PLACEHOLDER = ":hourglass_flowing_sand: _Thinking…_"
WRITING = ":writing_hand: _writing…_"
FAILED_TEXT = (
    ":warning: Sorry, I couldn't get an answer from the model just now. "
    "Please try again in a moment."
)
EMPTY_TEXT = ":shrug: The model returned an empty answer. Please try rephrasing."

#: ``block_id`` of the working indicator (placeholder and interim edits); the final form of
#: every message goes without it.
INDICATOR_BLOCK_ID = "writing"

# Slack's "this message is gone or no longer yours to edit": the text goes to a new message.
_GONE = frozenset({"message_not_found", "cant_update_message", "edit_window_closed"})
# Below this, a msg_too_long is not about length: the limit stops shrinking.
_MIN_LIMIT = 200
# slack_sdk ignores its own ``timeout`` when given a shared aiohttp session (aiohttp's default
# is 300 s): the renderer bounds its calls itself. Posts are not retried after a timeout (one
# may have landed), edits are: a slow Slack gets twice as long after each timeout, up to this.
_POST_TIMEOUT = 15.0
_MAX_EDIT_TIMEOUT = 60.0
# How much Markdown one roll-over looks at: rendering can shrink text, never by this much, and
# the bound keeps a flood of text (a fast model, a long 429 pause) from being split whole.
_WINDOW = 4


# What the only message says when the model showed nothing at all.
_NOTHING_SHOWN: dict[Outcome, str] = {
    Outcome.COMPLETE: EMPTY_TEXT,
    Outcome.INTERRUPTED: FAILED_TEXT,
    Outcome.FAILED: FAILED_TEXT,
    Outcome.STOPPED: Outcome.STOPPED.note or "",
    Outcome.SHUTDOWN: Outcome.SHUTDOWN.note or "",
}


Render = Callable[[str], str]
Split = Callable[[str, int], "tuple[str, str]"]


class ReplyStream(BaseReply):
    """The Slack side of one answer by edits; see the module docstring for the lifecycle.

    ``limit``: the most characters one message shows (rendered). ``final_deadline``: how long
    the final delivery (and each roll-over) keeps retrying before it is logged as an error.
    ``edit_timeout``: how long an edit may take before it is abandoned and retried (doubling
    after each one abandoned in a row, for a Slack that is just slow); also how long finishing
    waits for an interim edit still in flight.
    """

    def __init__(
        self,
        slack: SlackGateway,
        budget: EditBudget,
        *,
        team: str,
        channel: str,
        thread_ts: str | None,  # None: reply at the top level (DMs)
        limit: int,
        render: Render,
        split: Split,
        render_final: Render | None = None,
        final_deadline: float = 120.0,
        edit_timeout: float = 3.0,
        jitter: Callable[[], float] = random.random,
        stop_button: bool = False,
        asker: str = "",
        feedback: bool = False,
        tracker: ReplyTracker | None = None,
        metrics: Metrics | None = None,
        reply_id: str | None = None,
    ) -> None:
        # ``stopped`` is never set here: the edit renderer's Stop is a button of its own
        # (bot/stops.py).
        super().__init__(
            team=team,
            channel=channel,
            thread_ts=thread_ts,
            tracker=tracker,
            metrics=metrics,
            reply_id=reply_id,
        )
        self._asker = asker  # who may press Stop (see bot/stops.py)
        self._feedback = feedback
        self._stop_button = stop_button
        self._slack = slack
        self._budget = budget
        self._limit = limit
        self._render = render
        self._render_final = render_final or render
        self._split = split
        self._final_deadline = final_deadline
        self._edit_timeout = edit_timeout
        self._jitter = jitter
        self.ts: str | None = None  # the message being written now; None: not posted yet
        self._messages: list[str] = []  # every message of this reply, in order
        self.edits = 0  # chat.update calls that landed
        self._taken = 0  # how many of the chunks _current has absorbed
        self._current = ""  # the Markdown of the message being written now
        self._rendered: tuple[str, str] = ("", "")  # (_current, its interim rendering)
        self._sent = ""  # what that message shows now (rendered)
        self._sent_line = PLACEHOLDER  # the working indicator it shows now
        self._editable = True  # False once Slack refused an interim edit of that message
        self._frozen = 0  # messages given their last form before the current one
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._in_flight: asyncio.Timeout | None = None  # the interim edit being sent
        self._slow = 0  # interim edits in a row that got no answer in time

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def message_ts(self) -> list[str]:
        return self._messages

    async def open(self) -> None:
        """Post the placeholder; raises ``SlackError`` when Slack will not take it."""
        self._require(State.NEW)
        deadline = asyncio.get_running_loop().time() + self._final_deadline
        self.ts = await self._post(PLACEHOLDER, self._working_blocks(None), deadline)
        self._messages.append(self.ts)
        self.state = State.OPEN
        await self._track(PLACEHOLDER)
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"reply-{self.id}")

    async def adopt(
        self, ts: str | None, markdown: str, *, earlier: int = 0, placeholder: bool = False
    ) -> None:
        """Take over an answer another renderer began (bot/render/native.py falls back to this
        one): ``ts`` is the message showing it so far (None: none yet; then ``placeholder``
        posts one at once, else the text goes out in a new message at the first flush),
        ``markdown`` the text that message is to show, ``earlier`` how many of the answer's
        messages were finished before it."""
        self._require(State.NEW)
        self._frozen = earlier
        if ts is None and placeholder:
            await self.open()
        else:
            self.ts = ts
            if ts is not None:
                self._messages.append(ts)
            self.state = State.OPEN
            self._flusher = asyncio.create_task(self._flush_loop(), name=f"reply-{self.id}")
        if markdown:
            self.append(markdown)

    def _took(self, delta: str) -> None:
        self._wake.set()

    def _stepped(self, step: Step) -> None:
        pass  # the working indicator shows the newest steps at the next edit

    def _show_steps(self) -> None:
        self._wake.set()

    async def _close(self, outcome: Outcome) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._final_deadline
        in_flight = self._in_flight
        if in_flight is not None:
            # Let the interim edit land first, but do not wait out a hung connection.
            grace = loop.time() + self._edit_timeout
            when = in_flight.when()
            if when is None or when > grace:
                in_flight.reschedule(grace)
        try:
            if self._flusher is not None:
                try:
                    await self._flusher
                except Exception:
                    log.exception("progress edits failed in thread %s", self._where)
            await self._tracker.finishing(self)
            await self._deliver_final(outcome, deadline)
        finally:
            self.state = State.CLOSED
            await self._budget.done(self._team, self.id)
            await self._tracker.closed(self)

    # -- interim edits -----------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        await self._wake.wait()  # the model has started (or the reply is closing)
        if self._closing.is_set():
            return
        # Counted among the workspace's streaming replies from its first token, so the replies
        # that edit first do not take the share of those still waiting for their first edit.
        await self._budget.interval(self._team, self.id)
        next_at = loop.time()  # the first text goes out at once
        while True:
            await self._wake.wait()
            if await self._closed_within(next_at - loop.time()):
                return
            self._wake.clear()
            # Checked after clearing: closing may have set the wake-up while the timer's
            # timeout was being delivered, and the flusher would then wait for another forever.
            if self._closing.is_set():
                return
            if await self._latest() is None:
                continue
            priority = Priority.PROGRESS if self.edits else Priority.FIRST
            waited = loop.time()
            if not await self._budget.acquire(
                self._team, priority, give_up=self._closing, reply_id=self.id
            ):
                return
            if self._metrics is not None:
                self._metrics.budget_wait.observe(loop.time() - waited)
            # The newest text, not the one that asked for the edit (the wait may have been long).
            rendered = await self._latest()
            if self._closing.is_set():
                return
            if rendered is None:
                continue
            started = loop.time()
            await self._edit_interim(rendered)
            next_at = started + await self._budget.interval(self._team, self.id)

    async def _closed_within(self, seconds: float) -> bool:
        if self._closing.is_set() or seconds <= 0:
            return self._closing.is_set()
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _latest(self) -> str | None:
        """Take in new text and roll over if it no longer fits; the current message's new
        rendering, or None when there is nothing to edit."""
        self._absorb()
        deadline = asyncio.get_running_loop().time() + self._final_deadline
        rendered = await self._fit(deadline, final=False)
        if self.ts is None:
            if rendered.strip() and not self._closing.is_set():
                await self._continue_in_new_message(rendered)
            return None
        if not self._editable:
            return None
        if (not rendered.strip() or rendered == self._sent) and (
            self._working_line(rendered) == self._sent_line
        ):
            return None
        return rendered

    async def _edit_interim(self, rendered: str) -> None:
        # Registered before it is sent: if this process dies right after Slack applies the edit,
        # whoever finishes the reply keeps at least the text the user saw.
        if rendered.strip():
            await self._track(rendered)
        try:
            await self._send_interim(rendered)
        except SlackRateLimited as exc:
            await self._budget.rate_limited(self._team, exc.retry_after)
            self._wake.set()
        except TimeoutError:
            self._slow += 1
            log.info("interim edit got no answer in time in thread %s", self._where)
            self._wake.set()
        except SlackTransient as exc:
            log.info("interim edit failed (%s); will retry", exc.error)
            self._wake.set()
        except SlackRejected as exc:
            if exc.error == "msg_too_long" and self._shrink():
                self._wake.set()
            elif exc.error in _GONE:
                log.info("message %s is gone (%s); continuing in a new one", self.ts, exc.error)
                self.ts = None
                self._wake.set()
            else:
                log.warning("interim edit rejected (%s) in thread %s", exc.error, self._where)
                self._editable = False
        else:
            self._sent = rendered
            self._sent_line = self._working_line(rendered)
            self.edits += 1
            self._slow = 0
            if rendered.strip():
                self._text_visible()

    async def _send_interim(self, rendered: str) -> None:
        assert self.ts is not None
        try:
            # Finishing may cut it shorter (see _close).
            seconds = min(_MAX_EDIT_TIMEOUT, self._edit_timeout * 2**self._slow)
            async with asyncio.timeout(seconds) as self._in_flight:
                await self._slack.update(
                    self._channel,
                    self.ts,
                    rendered or self._working_line(rendered),
                    blocks=self._working_blocks(rendered or None),
                )
        finally:
            self._in_flight = None  # at once: an exited Timeout cannot be rescheduled

    async def _continue_in_new_message(self, rendered: str) -> None:
        deadline = asyncio.get_running_loop().time() + self._final_deadline
        try:
            ts = await self._post(rendered, self._working_blocks(rendered), deadline)
        except SlackError as exc:
            log.warning("could not continue the answer in thread %s: %s", self._where, exc)
            return  # tried again at the next flush, and by the final delivery
        self.ts = ts
        self._messages.append(ts)
        self._sent = rendered
        self._sent_line = self._working_line(rendered)
        self._editable = True
        await self._track(rendered)

    # -- long answers ------------------------------------------------------------------------

    def _absorb(self) -> None:
        if self._taken < len(self._chunks):
            self._current += "".join(self._chunks[self._taken :])
            self._taken = len(self._chunks)

    async def _fit(self, deadline: float, *, final: bool) -> str:
        """Give full messages their last form until the current one renders within the limit;
        return its rendering (``render_final`` when ``final``)."""
        while True:
            window = self._current[: _WINDOW * self._limit]
            if len(window) == len(self._current):
                rendered = self._render_final(window) if final else self._render_current()
                if len(rendered) <= self._limit:
                    return rendered
            shown, tail = self._cut(window)
            rest = tail + self._current[len(window) :]
            if await self._freeze(shown, deadline):
                self._current = rest
            # else Slack found it too long: the limit has shrunk, cut again

    def _render_current(self) -> str:
        # The flusher looks twice per edit (before and after waiting for a token), usually
        # at the same text: strings are immutable, so the same object means the same text.
        source, rendered = self._rendered
        if source is not self._current:
            rendered = self._render(self._current)
            self._rendered = (self._current, rendered)
        return rendered

    def _cut(self, markdown: str) -> tuple[str, str]:
        """``split``, checked: (the head's final rendering, the tail), where the head fits and
        the tail is shorter than the input."""
        head, tail = self._split(markdown, self._limit)
        if head.strip() and len(tail) < len(markdown):
            shown = self._render_final(head)
            if len(shown) <= self._limit:
                return shown, tail
        log.warning("split() gave an unusable cut in thread %s; cutting at a line", self._where)
        end = min(len(markdown), self._limit)
        while end > 1 and len(self._render_final(markdown[:end])) > self._limit:
            end = end * 3 // 4
        line = markdown.rfind("\n", 0, end) + 1
        if line > end // 2:
            end = line
        return self._render_final(markdown[:end]), markdown[end:]

    async def _freeze(self, rendered: str, deadline: float) -> bool:
        """Give the current message (or, with none open, a new one) its last form; False when
        Slack said it was too long (the limit has shrunk)."""
        if not await self._deliver(rendered, None, deadline):
            return False
        self.ts = None
        self._sent = ""
        self._editable = True
        self._frozen += 1
        return True

    def _shrink(self) -> bool:
        """Slack found a message too long although it was within ``limit``: lower the limit."""
        if self._limit <= _MIN_LIMIT:
            return False
        self._limit = max(_MIN_LIMIT, self._limit * 2 // 3)
        log.warning("Slack said msg_too_long; limit lowered to %d in %s", self._limit, self._where)
        return True

    # -- final delivery ----------------------------------------------------------------------

    async def _deliver_final(self, outcome: Outcome, deadline: float) -> None:
        self._absorb()
        while True:
            rendered = await self._fit(deadline, final=True)
            note = outcome.note
            if not rendered.strip():
                if not self._frozen:  # the model showed nothing at all
                    rendered, note = _NOTHING_SHOWN[outcome], None
                elif self.ts is None:  # the answer ended with the last full message
                    if note is None:
                        return
                    rendered, note = note, None
                else:
                    rendered = "…"  # a continuation whose text renders as nothing (edge case)
            # 👍/👎 under a complete answer's last message (not under "empty answer").
            last = self._feedback and outcome is Outcome.COMPLETE and bool(self._chunks)
            if await self._deliver(rendered, note, deadline, feedback=last):
                return

    async def _deliver(
        self, rendered: str, note: str | None, deadline: float, *, feedback: bool = False
    ) -> bool:
        """Make ``rendered`` (and ``note``) the current message's last form, retrying through
        429s, 5xx, resets and timeouts until ``deadline``; with no message open, post a new
        one. False when Slack said msg_too_long and the limit shrank (the caller cuts again);
        True when delivered, and also when given up (logged as an error)."""
        loop = asyncio.get_running_loop()
        blocks = _final_blocks(rendered, note)
        if feedback:
            blocks.append(feedback_block())
        failures = timeouts = 0
        while True:
            if self.ts is None:
                try:
                    self.ts = await self._post(rendered, blocks, deadline)
                except SlackError as exc:
                    log.error("answer in thread %s not delivered: %s", self._where, exc)
                else:
                    self._messages.append(self.ts)
                    self._sent = rendered
                return True
            if not await self._budget.acquire(self._team, Priority.FINAL, deadline=deadline):
                log.error("final edit of thread %s not delivered before the deadline", self._where)
                return True
            wait = 0.0
            try:
                left = deadline - loop.time()
                async with asyncio.timeout(min(left, self._edit_timeout * 2**timeouts)):
                    await self._slack.update(self._channel, self.ts, rendered, blocks=blocks)
            except SlackRateLimited as exc:
                await self._budget.rate_limited(self._team, exc.retry_after)
            except TimeoutError:
                timeouts += 1
                log.info("final edit timed out in thread %s; retrying", self._where)
            except SlackTransient as exc:
                failures += 1
                wait = min(8.0, 0.25 * 2**failures) * (0.5 + self._jitter())
                log.info("final edit failed (%s); retrying in %.1f s", exc.error, wait)
            except SlackRejected as exc:
                if exc.error == "msg_too_long" and self._shrink():
                    return False
                if exc.error in _GONE:
                    self.ts = None  # the answer still reaches the thread, in a new message
                    continue
                log.error("final edit of thread %s rejected: %s", self._where, exc.error)
                return True
            else:
                self._sent = rendered
                self.edits += 1
                self._text_visible()
                return True
            if loop.time() + wait >= deadline:
                log.error("final edit of thread %s not delivered before the deadline", self._where)
                return True
            await asyncio.sleep(wait)

    # -- helpers -----------------------------------------------------------------------------

    async def _post(self, text: str, blocks: list[dict[str, Any]], deadline: float) -> str:
        """chat.postMessage in the thread, retried through 429s and failures that surely did
        not post it, until ``deadline``; other failures are raised (a retry could post twice)."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            try:
                async with asyncio.timeout(min(_POST_TIMEOUT, deadline - loop.time())):
                    return await self._slack.post(
                        self._channel, text, thread_ts=self._thread_ts, blocks=blocks
                    )
            except TimeoutError:
                raise SlackTransient("chat.postMessage", "no answer in time") from None
            except SlackRateLimited as exc:
                wait = exc.retry_after
            except SlackTransient as exc:
                if not exc.error.startswith("ClientConnector") and not exc.error.startswith(
                    "HTTP 5"
                ):
                    raise
                failures += 1
                wait = min(8.0, 0.25 * 2**failures) * (0.5 + self._jitter())
            if loop.time() + wait >= deadline:
                raise SlackError("chat.postMessage", "not delivered before the deadline")
            await asyncio.sleep(wait)

    def _working_blocks(self, rendered: str | None) -> list[dict[str, Any]]:
        """How a message looks while the answer is still being written into it (``None``: no
        text yet): the text, the working indicator and, when enabled, the Stop button."""
        line = self._working_line(rendered or "")
        blocks = [_indicator(line)] if rendered is None else [_section(rendered), _indicator(line)]
        if self._stop_button:
            blocks.append(stop_controls(self.id, self._asker))
        return blocks

    def _working_line(self, rendered: str) -> str:
        """The working indicator: the step in progress (a tool call), else "writing…" under
        text, else the placeholder's "Thinking…"."""
        for step in reversed(self._steps.values()):
            if step.status in _WORKING:
                return step_line(step)
        return WRITING if rendered.strip() else PLACEHOLDER

    async def _track(self, rendered: str) -> None:
        if self.ts is not None:
            await self._tracker.shown(self, self.ts, rendered)

    def _require(self, state: State) -> None:
        if self.state is not state:
            raise ReplyStateError(f"expected {state.value}, reply is {self.state.value}")


def mrkdwn_text(text: str) -> dict[str, Any]:
    """A mrkdwn text object Slack shows as written: ``verbatim`` stops Slack from parsing
    mentions, channel names and URLs in it by itself (the renderer has made the text safe)."""
    return {"type": "mrkdwn", "text": text, "verbatim": True}


_WORKING = (StepStatus.PENDING, StepStatus.IN_PROGRESS)


def step_line(step: Step) -> str:
    """A step as the working indicator shows it: its title as code, which Slack shows as
    written (no formatting, links or mentions inside)."""
    title = " ".join(step.title.split()).replace("`", "'")
    title = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f":hammer_and_wrench: _Working:_ `{title}`"


def _indicator(text: str) -> dict[str, Any]:
    return {
        "type": "context",
        "block_id": INDICATOR_BLOCK_ID,
        "elements": [mrkdwn_text(text)],
    }


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": mrkdwn_text(text)}


STOP_ACTION_ID = "stop_reply"


def stop_controls(reply_id: str, asker: str = "") -> dict[str, Any]:
    """The actions block with the Stop button; its value names the reply to stop and the
    person who asked (Slack returns the value as sent: a clicker cannot change it)."""
    return {
        "type": "actions",
        "block_id": "reply_controls",
        "elements": [
            {
                "type": "button",
                "action_id": STOP_ACTION_ID,
                "text": {"type": "plain_text", "text": "Stop"},
                "value": f"{reply_id}:{asker}" if asker else reply_id,
            }
        ],
    }


def final_blocks(rendered: str, note: str | None) -> list[dict[str, Any]]:
    """A message's last form: its text and, for a cut-short answer, the note under it."""
    return _final_blocks(rendered, note)


def _final_blocks(rendered: str, note: str | None) -> list[dict[str, Any]]:
    blocks = [_section(rendered)]
    if note:
        blocks.append(note_block(note))
    return blocks


def note_block(note: str) -> dict[str, Any]:
    """The note under a cut-short answer (interrupted, stopped…)."""
    return {"type": "context", "elements": [mrkdwn_text(note)]}
