"""One reply streamed through Slack's native streaming API (chat.startStream / appendStream /
stopStream), falling back to the edit renderer whenever a native stream cannot do the job.

    reply = NativeReply(slack, appends=appends, starts=starts, team="T1", channel="C1",
                        thread_ts="17.1", recipient=("U1", "T1"), fallback=make_edit_reply)
    async with reply:                       # status line or an open stream, at once
        async for delta in answer:
            reply.append(delta)             # synchronous and O(1), as in ReplyStream
        shown = await reply.finish(Outcome.COMPLETE)

The same interface and guarantees as :class:`bot.render.reply.ReplyStream` (whose module
docstring describes them): every exit path gives the answer its last form, nothing waits on
Slack while reading the model, and the final text is exact.

How it goes:

* **Start.** In an assistant thread (a DM) the status line ("is thinking…") shows at once and
  the stream opens with the first text. Where there is no status line (channels, or Slack
  refused it) the stream opens at once, empty. Opening takes a token of the workspace's
  chat.startStream budget (Slack allows ~20/min): with none to spare, or when Slack refuses the
  stream (no thread, recipient missing, messages tab disabled…), the answer goes to the edit
  renderer instead — with ``auto``, refusals are remembered for a while per channel.
* **Text.** One flusher appends what the model wrote since the last append, on a timer (the
  workspace's chat.appendStream budget shared fairly by the streams in flight, like edits) and
  earlier when much text is waiting — never only on size, so short answers show at once.
* **Stop.** chat.stopStream with the rest of the text; the note of a cut-short answer and the
  feedback buttons go in as blocks.
* **Trouble.** Slack closes streams after an undocumented few minutes
  (``message_not_in_streaming_state``); an append whose fate is unknown (timeout, 5xx, reset)
  could show twice if retried; a message nearing its size limit must end. In each case the
  stream is closed and the edit renderer *adopts* the message: it edits it to the exact text
  and carries on (in continuation messages when needed). ``stopped_by_user`` — the person
  pressed Slack's stop — sets :attr:`stopped`, so the turn stops reading the model, and the
  answer ends as ``STOPPED``.

The model's Markdown goes to Slack through :class:`bot.render.mrkdwn.MarkdownGuard`: a link whose
label names another place than its target shows the real target, ``<!here>``, ``<@U…>``,
``<#C…>`` and ``@here``/``@channel``/``@everyone`` never become mentions, and text whose meaning
more text could still change (an unfinished link) waits for it. When the guard cannot place a
rewrite it needs, the edit renderer takes the answer over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
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
from bot.render.mrkdwn import MarkdownGuard, UnsafeMarkdown, neutralise_mentions
from bot.render.reply import ReplyStream, note_block
from bot.render.status import ThreadStatus
from bot.slack import SlackGateway

log = logging.getLogger(__name__)

#: Most Markdown characters one native message takes before the answer continues in another
#: (a ``markdown`` block, which an expired stream is finished with, holds 12,000).
NATIVE_LIMIT = 10_000

# Errors after which the stream is closed (or gone) on Slack's side.
_ENDED = frozenset(
    {"message_not_in_streaming_state", "stopped_by_user", "message_not_found", "channel_not_found"}
)
# How long chat.stopStream keeps being retried when it neither lands nor fails for good,
# before the edit renderer finishes the message instead.
_STOP_TRIES = 4


class NativeAvailability:
    """Channels where Slack refused a native stream lately: ``auto`` goes straight to edits
    there instead of spending a start call on each answer (in-process, forgets after
    ``ttl_s``)."""

    def __init__(self, ttl_s: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_s
        self._clock = clock
        self._refused: dict[tuple[str, str], float] = {}

    def refused(self, team: str, channel: str) -> bool:
        until = self._refused.get((team, channel))
        if until is None:
            return False
        if self._clock() >= until:
            del self._refused[(team, channel)]
            return False
        return True

    def remember_refusal(self, team: str, channel: str) -> None:
        self._refused[(team, channel)] = self._clock() + self._ttl


class NativeReply(BaseReply):
    """The Slack side of one answer through a native stream; see the module docstring.

    ``fallback(reply_id)`` builds the edit renderer that takes over when needed (same id, so
    Stop and recovery keep working). ``start_wait``: how long to wait for a start token before
    falling back (0: only if one is there now). ``flush_chars``: this much waiting text is
    appended without waiting for the timer (the budget still paces it).
    """

    native = True

    def __init__(
        self,
        slack: SlackGateway,
        *,
        appends: EditBudget,
        starts: EditBudget,
        team: str,
        channel: str,
        thread_ts: str,
        recipient: tuple[str, str] | None,
        fallback: Callable[[str], ReplyStream],
        status: ThreadStatus | None = None,
        availability: NativeAvailability | None = None,
        start_wait: float = 0.0,
        limit: int = NATIVE_LIMIT,
        flush_chars: int = 1000,
        final_deadline: float = 120.0,
        call_timeout: float = 5.0,
        step_keepalive: float = 10.0,
        feedback: bool = False,
        tracker: ReplyTracker | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        # ``stopped`` is set when the person pressed Slack's own stop.
        super().__init__(
            team=team, channel=channel, thread_ts=thread_ts, tracker=tracker, metrics=metrics
        )
        self._root = thread_ts  # Slack streams only into threads
        self.ts: str | None = None  # the native message being streamed
        self.edits = 0
        self._slack = slack
        self._appends = appends
        self._starts = starts
        self._recipient = recipient
        self._make_fallback = fallback
        self._status = status
        self._availability = availability
        self._start_wait = start_wait
        self._limit = limit
        self._flush_chars = flush_chars
        self._final_deadline = final_deadline
        self._call_timeout = call_timeout
        self._keepalive = step_keepalive
        self._feedback = feedback
        self._native_ts: list[str] = []  # messages streamed natively, in order
        self._taken = 0
        self._fresh = 0  # characters of the chunks not absorbed yet
        self._current = ""  # Markdown the stream's message shows (as the model wrote it)
        self._shown = ""  # what Slack shows of it (its guarded form)
        self._unsent = ""  # Markdown taken from the model, not appended yet
        self._held = 0  # characters of it the guard held back at the last take
        self._guard = MarkdownGuard()
        self._fallback: ReplyStream | None = None
        self._live = False  # a stream is open (started, not yet closed by anyone)
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()  # much text waiting, or closing: skip the timer
        self._unsent_steps: dict[str, Step] = {}  # task card updates not appended yet
        self._keepalive_due = False  # the next append only re-sends running steps
        self._chars = 0  # characters of model text so far
        self._step_at: dict[str, int] = {}  # where in the text each step began
        self._flusher: asyncio.Task[None] | None = None

    # -- the Reply contract ------------------------------------------------------------------

    @property
    def message_ts(self) -> list[str]:
        """Every message of this answer, in order (native ones, then the fallback's)."""
        shown = list(self._native_ts)
        if self._fallback is not None:
            shown += [ts for ts in self._fallback.message_ts if ts not in shown]
        return shown

    async def open(self) -> None:
        """Show at once that an answer is coming: the status line, else an empty stream, else
        (Slack would not stream here) the edit renderer's placeholder."""
        if self.state is not State.NEW:
            raise ReplyStateError(f"open() while {self.state.value}")
        self.state = State.OPEN
        if self._status is None or not await self._status.show():
            if not await self._start("", ""):
                await self._fall_back(None, "", placeholder=True)
                return
        self._flusher = asyncio.create_task(self._flush_loop(), name=f"native-{self.id}")

    def _took(self, delta: str) -> None:
        if not delta:  # closing: the flusher stops at once
            self._urgent.set()
            self._wake.set()
            return
        self._chars += len(delta)
        if self._fallback is not None:
            self._taken = len(self._chunks)
            self._fallback.append(delta)
            return
        self._fresh += len(delta)
        self._wake.set()
        if len(self._unsent) - self._held + self._fresh >= self._flush_chars:
            self._urgent.set()

    def _stepped(self, step: Step) -> None:
        if self._fallback is not None:
            self._fallback.step(step)
            return
        self._unsent_steps[step.id] = step  # a newer state of the same step replaces it
        self._step_at.setdefault(step.id, self._chars)

    def _show_steps(self) -> None:
        if self._fallback is None and self._unsent_steps:
            self._wake.set()
            self._urgent.set()

    # -- closing -----------------------------------------------------------------------------

    async def _close(self, outcome: Outcome) -> None:
        deadline = asyncio.get_running_loop().time() + self._final_deadline
        try:
            if self._flusher is not None:
                try:
                    # An append in flight gets its call timeout; the flusher then stops.
                    await self._flusher
                except Exception:
                    log.exception("native stream failed in thread %s", self._where)
            if self.stopped.is_set() and outcome is not Outcome.SHUTDOWN:
                outcome = self.outcome = Outcome.STOPPED
            await self._tracker.finishing(self)
            await self._finish(outcome, deadline)
        finally:
            self.state = State.CLOSED
            if self._status is not None:
                await self._status.clear()
            await self._appends.done(self._team, self.id)
            await self._tracker.closed(self)

    async def _finish(self, outcome: Outcome, deadline: float) -> None:
        self._absorb()
        rest = self._unsent
        try:
            shown: str | None = self._guard.take(self._shown, rest, final=True)[0]
        except UnsafeMarkdown:
            shown = None
        fits = shown is not None and len(self._shown) + len(shown) <= self._limit
        if self._fallback is None and self._live:
            if fits and await self._stop_stream(rest, shown or "", outcome, deadline):
                self._current += rest
                self._shown += shown or ""
                self._unsent = ""
                return
            if self._live:
                await self._abandon_stream()
        if self._fallback is None:
            # Never streamed, stopped by the person, or the stream would not close: the edit
            # renderer gives the message (or a new one) its exact last form.
            await self._fall_back(self.ts, self._current)
        assert self._fallback is not None
        await self._fallback.finish(outcome)

    async def _stop_stream(self, rest: str, shown: str, outcome: Outcome, deadline: float) -> bool:
        """chat.stopStream with the rest of the text (``shown``: its guarded form) and the
        closing blocks; False when the stream cannot be closed that way (the caller finishes the
        message by editing it)."""
        loop = asyncio.get_running_loop()
        blocks: list[dict[str, Any]] = []
        note = outcome.note if (self._current + rest).strip() else None
        if note:
            blocks.append(note_block(note))
        if not (self._current + rest).strip():
            return False  # nothing was written: the edit renderer posts the right note
        if self._feedback and outcome is Outcome.COMPLETE:
            blocks.append(feedback_block())
        assert self.ts is not None
        for _ in range(_STOP_TRIES):
            try:
                async with asyncio.timeout(min(self._call_timeout, deadline - loop.time())):
                    await self._slack.stop_stream(
                        self._channel,
                        self.ts,
                        markdown=shown,
                        blocks=blocks,
                        **self._cards(self._unsent_steps.values()),
                    )
            except SlackRateLimited as exc:
                if loop.time() + exc.retry_after >= deadline:
                    break
                await asyncio.sleep(exc.retry_after)
            except (SlackTransient, TimeoutError):
                # Landed or not, the edit renderer's chat.update then makes the text exact.
                log.info("chat.stopStream got no clear answer in thread %s", self._where)
                return False
            except SlackRejected as exc:
                self._ended_by_slack(exc.error)
                if exc.error == "stopped_by_user":
                    self.outcome = Outcome.STOPPED
                else:
                    log.info("native stream in %s ended early (%s)", self._where, exc.error)
                return False
            else:
                self._live = False
                self._unsent_steps.clear()
                self._text_visible()
                return True
        return False

    # -- the flusher -------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await self._woken()
            if self._closing.is_set():
                return
            if self.ts is None:  # the status line is showing; open the stream with the text
                try:
                    markdown, shown = self._take()
                except UnsafeMarkdown:
                    await self._fall_back(None, "")
                    return
                steps = self._take_steps()
                if not markdown and not steps:
                    self._wake.clear()
                    continue
                if not await self._start(markdown, shown, steps):
                    await self._fall_back(None, markdown)
                    return
                next_at = loop.time() + await self._appends.interval(self._team, self.id)
                continue
            await self._urgent_within(next_at - loop.time())
            self._wake.clear()
            self._urgent.clear()
            # Checked after clearing: closing may have set both while the timer's timeout was
            # being delivered, and a flusher that missed it would wait for a wake-up forever.
            if self._closing.is_set():
                return
            try:
                chunk, shown = self._take()
                streamable = True
            except UnsafeMarkdown:
                chunk, shown, streamable = "", "", False
            steps = self._take_steps()
            if streamable and not chunk and not steps:
                continue
            if not streamable or len(self._shown) + len(shown) > self._limit:
                # The message is full (or its text cannot be streamed as Markdown): the edit
                # renderer ends it and continues in new ones.
                self._unsent = chunk + self._unsent
                await self._abandon_stream()
                await self._fall_back(self.ts, self._current)
                return
            # An empty stream (a channel's) waits for its first text: that goes first.
            # A keepalive alone never goes ahead of other replies' first text, and does not
            # hold back the text that follows it.
            keepalive, self._keepalive_due = self._keepalive_due and not chunk, False
            first = not self._current and not keepalive
            priority = Priority.FIRST if first else Priority.PROGRESS
            if not await self._appends.acquire(
                self._team, priority, give_up=self._closing, reply_id=self.id
            ):
                self._unsent = chunk + self._unsent
                self._put_back(steps)  # they go with chat.stopStream
                return
            started = loop.time()
            if not await self._append(chunk, shown, steps):
                return
            if not keepalive:
                next_at = started + await self._appends.interval(self._team, self.id)

    async def _woken(self) -> None:
        """Until there is something to send. While a step is in progress (a tool runs, an
        approval waits) and nothing else is sent, its state is sent again every
        ``step_keepalive`` seconds: the only way to learn that the person pressed Slack's stop
        (the call fails with ``stopped_by_user``), and it keeps Slack from closing a stream that
        has been quiet for a while."""
        while not self._wake.is_set():
            working = [s for s in self._steps.values() if s.status in _WORKING]
            if not (working and self._live):
                await self._wake.wait()
                return
            try:
                await asyncio.wait_for(self._wake.wait(), self._keepalive)
            except TimeoutError:
                for step in working:
                    self._unsent_steps.setdefault(step.id, step)
                self._keepalive_due = True
                self._wake.set()
                self._urgent.set()

    async def _urgent_within(self, seconds: float) -> bool:
        if seconds <= 0 or self._urgent.is_set():
            return True
        try:
            await asyncio.wait_for(self._urgent.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _append(self, chunk: str, shown: str, steps: Sequence[Step]) -> bool:
        """Append ``chunk`` (``shown``: its guarded form) and task card updates; False when the
        flusher must stop (the answer has moved on to the edit renderer, or the person stopped
        it)."""
        assert self.ts is not None
        try:
            async with asyncio.timeout(self._call_timeout):
                await self._slack.append_stream(
                    self._channel,
                    self.ts,
                    shown,
                    **self._cards(steps),
                )
        except SlackRateLimited as exc:
            await self._appends.rate_limited(self._team, exc.retry_after)
            self._unsent = chunk + self._unsent
            self._put_back(steps)
            self._wake.set()
            return True
        except (SlackTransient, TimeoutError) as exc:
            # It may have landed: retrying could show it twice. Editing shows it exactly.
            log.info("chat.appendStream failed (%s) in %s; finishing by edits", exc, self._where)
            self._unsent = chunk + self._unsent
            await self._abandon_stream()
            await self._fall_back(self.ts, self._current)
            return False
        except SlackRejected as exc:
            self._unsent = chunk + self._unsent
            self._ended_by_slack(exc.error)
            if exc.error == "stopped_by_user":
                log.info("the person stopped the native stream in %s", self._where)
                return False
            log.info("native stream in %s ended (%s); finishing by edits", self._where, exc.error)
            if self._live:
                await self._abandon_stream()
            await self._fall_back(self.ts, self._current)
            return False
        self._current += chunk
        self._shown += shown
        self.edits += 1
        self._text_visible()
        await self._track()
        return True

    async def _abandon_stream(self) -> None:
        """Close the stream without more text (chat.update fails on a stream still open);
        when even that fails, the edit renderer retries until Slack closes it by itself."""
        assert self.ts is not None
        try:
            async with asyncio.timeout(self._call_timeout):
                await self._slack.stop_stream(self._channel, self.ts)
        except SlackRejected as exc:
            self._ended_by_slack(exc.error)
            log.info("could not close native stream in %s: %s", self._where, exc.error)
        except (SlackError, TimeoutError) as exc:
            log.info("could not close native stream in %s: %s", self._where, exc)
        else:
            self._live = False

    def _ended_by_slack(self, error: str) -> None:
        """Slack says the stream is over: expired, gone, or stopped by the person."""
        if error in _ENDED:
            self._live = False
        if error == "stopped_by_user":
            self.stopped.set()

    def _cards(self, steps: Iterable[Step]) -> dict[str, list[dict[str, str]]]:
        """The task cards of a stream call: those of steps that began before the text not yet
        shown go before it (a fast tool's card shows above the text written with its result),
        the others after it."""
        shown = len(self._current)
        before = [_task(s) for s in steps if self._step_at.get(s.id, 0) <= shown]
        after = [_task(s) for s in steps if self._step_at.get(s.id, 0) > shown]
        return {"tasks_before": before, "tasks": after}

    def _take_steps(self) -> list[Step]:
        steps = list(self._unsent_steps.values())
        self._unsent_steps.clear()
        return steps

    def _put_back(self, steps: Sequence[Step]) -> None:
        """Steps that were not sent go out later, unless a newer state replaced them."""
        for step in steps:
            self._unsent_steps.setdefault(step.id, step)

    def _absorb(self) -> None:
        if self._taken < len(self._chunks):
            self._unsent += "".join(self._chunks[self._taken :])
            self._taken = len(self._chunks)
            self._fresh = 0

    def _take(self) -> tuple[str, str]:
        """The waiting text that may go out now and what Slack is sent for it (see the module
        docstring); text whose meaning more text could change waits, except when closing.
        Raises ``UnsafeMarkdown`` when the text cannot be streamed as Markdown."""
        self._absorb()
        shown, used = self._guard.take(self._shown, self._unsent, final=self._closing.is_set())
        text = self._unsent[:used]
        self._unsent = self._unsent[used:]
        self._held = len(self._unsent)
        return text, shown

    # -- starting and falling back -----------------------------------------------------------

    async def _start(self, markdown: str, shown: str, steps: Sequence[Step] = ()) -> bool:
        """Open the stream (with ``markdown``, possibly empty; ``shown``: its guarded form);
        False to fall back to edits."""
        if self._availability is not None and self._availability.refused(self._team, self._channel):
            return False
        loop = asyncio.get_running_loop()
        # Starts have a bucket of their own: nothing more important to keep a token back for.
        if not await self._starts.acquire(
            self._team, Priority.FINAL, deadline=loop.time() + self._start_wait
        ):
            log.info("no chat.startStream budget left in %s; answering by edits", self._team)
            return False
        try:
            async with asyncio.timeout(self._call_timeout):
                ts = await self._slack.start_stream(
                    self._channel,
                    self._root,
                    markdown=shown,
                    recipient=self._recipient,
                    **self._cards(steps),
                )
        except SlackRateLimited as exc:
            await self._starts.rate_limited(self._team, exc.retry_after)
            return False
        except (SlackTransient, TimeoutError) as exc:
            log.warning("chat.startStream failed in %s (%s); answering by edits", self._where, exc)
            return False
        except SlackRejected as exc:
            log.info("Slack refused a native stream in %s (%s)", self._where, exc.error)
            if self._availability is not None:
                self._availability.remember_refusal(self._team, self._channel)
            return False
        self.ts = ts
        self._live = True
        self._native_ts.append(ts)
        self._current = markdown
        self._shown = shown
        if markdown:
            self._text_visible()
        await self._track()
        return True

    async def _fall_back(self, ts: str | None, markdown: str, *, placeholder: bool = False) -> None:
        """Hand the answer to the edit renderer: it adopts message ``ts`` (None: a new one)
        showing ``markdown`` and everything not sent yet; text the model writes later goes
        straight to it."""
        reply = self._make_fallback(self.id)
        self._absorb()
        markdown += self._unsent
        self._unsent = ""
        earlier = len(self._native_ts) - (1 if ts is not None else 0)
        await reply.adopt(ts, markdown, earlier=earlier, placeholder=placeholder)
        self._fallback = reply
        self._unsent_steps.clear()
        if reply.state is State.OPEN:
            for step in self._steps.values():  # the step in progress shows in its indicator
                reply.step(step)
        for delta in self._chunks[self._taken :]:  # written while the edit renderer started
            reply.append(delta)
        self._taken = len(self._chunks)
        if self._status is not None:
            self._status.text_visible()

    # -- helpers -----------------------------------------------------------------------------

    def _text_visible(self) -> None:
        if self._status is not None:
            self._status.text_visible()
        super()._text_visible()

    async def _track(self) -> None:
        if self.ts is not None:
            await self._tracker.shown(self, self.ts, self._current)


_WORKING = (StepStatus.PENDING, StepStatus.IN_PROGRESS)


def _task(step: Step) -> dict[str, str]:
    """A step as Slack's ``task_update`` chunk (a task card in the stream's timeline). Its
    title may carry words the model chose: no mention in it can ping anyone, whether Slack
    reads it as text or as mrkdwn."""
    title = neutralise_mentions(" ".join(step.title.split())[:256])
    task = {"id": step.id, "title": title, "status": step.status.value}
    if step.detail:
        task["details"] = neutralise_mentions(step.detail[:256])
    return task
