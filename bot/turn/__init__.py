"""One conversation turn, in order: dedupe → placeholder → thread lock → context → model stream →
final reply → save.

    turns = Turns(slack=gateway, store=store, recall=recall, model=model, budget=budget,
                  options=TurnOptions(...))
    await turns.answer(inbound)
    await turns.answer(inbound, if_taking_part=True)   # a thread the store cannot place

Context comes from the store; where the store cannot say (down, emptied, older than the thread)
it comes from Slack (bot/recall.py), and is stored again.

The model stream and Slack meet only here: ``async for delta in answer: reply.append(delta)``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

from bot.admission import Admission, Entry
from bot.conversation import ThreadKey, Turn, newest_within, prompt_window
from bot.errors import AnswerTooLong, ModelInterrupted, ModelUnavailable, SlackError
from bot.events import Inbound
from bot.llm import AnswerStream, ChatModel
from bot.logs import correlation
from bot.metrics import Metrics
from bot.policy import Policy, Profile
from bot.recall import Recall
from bot.render.budget import EditBudget
from bot.render.mrkdwn import neutralise_mentions
from bot.render.native import NativeAvailability, NativeReply
from bot.render.reply import Outcome, ReplyStream, ReplyTracker
from bot.render.status import ThreadStatus
from bot.render.text import render, render_final, split
from bot.slack import SlackGateway
from bot.stops import StopSignals
from bot.store import Sighting, Store

log = logging.getLogger(__name__)

DM_TOP_LEVEL = "top"  # the thread_ts of a DM's top-level conversation in its ThreadKey
# How long a follow-up in a thread the store cannot place waits for a Slack read token (it is
# past Slack's ack: only the person waits; beyond this the message is not answered).
PARTICIPATION_WAIT_S = 30.0


HELP_TEXT = (
    "Hi! Ask me anything: mention me with your question, e.g. `@me summarise this thread`. "
    "In a thread I have answered in, you can just keep talking — no mention needed."
)


RATE_TEXT = (
    ":hand: You've asked {n} questions in a short time — that's my limit. "
    "Please try again in about {minutes} min."
)
QUOTA_TEXT = ":hand: {whose} daily token quota is used up; it resets at midnight UTC."


@dataclass(frozen=True, slots=True)
class TurnOptions:
    system_prompt: str
    prompt_token_budget: int
    message_char_limit: int
    final_edit_deadline: float
    max_answer_chars: int = 20_000
    backfill_limit: int = 100
    dm_reply_mode: Literal["top", "thread"] = "top"
    feedback_buttons: bool = False


@dataclass(frozen=True, slots=True)
class NativeStreaming:
    """How answers use Slack's native streams (``mode`` ``native`` or ``auto``; see
    bot/render/native.py): ``appends`` and ``starts`` pace chat.appendStream and
    chat.startStream per workspace; ``status`` is the assistant thread's status line ('' : none)."""

    mode: Literal["native", "auto"]
    appends: EditBudget
    starts: EditBudget
    status: str = "is thinking…"
    status_refresh: float = 90.0
    call_timeout: float = 5.0


TITLE_LENGTH = 60  # an assistant thread's title: the start of its first question


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request over a limit: ``note`` tells the person why (None: they were told already in
    this window, and the bot stays silent rather than post again)."""

    note: str | None


@dataclass(frozen=True, slots=True)
class Limits:
    """Abuse limits, counted in Redis (0 = off). While Redis is down they are not enforced.
    A person is told once per window that they are over a limit; later requests in the window
    are dropped silently, so refusals cannot flood a channel either."""

    user_requests: int = 0
    user_window_s: float = 3600.0
    user_daily_tokens: int = 0
    workspace_daily_tokens: int = 0

    async def refusal(self, store: Store, inbound: Inbound) -> Refusal | None:
        """Why ``inbound`` is over a limit, else None (and the request counts)."""
        usage = store.usage
        if self.user_daily_tokens or self.workspace_daily_tokens:
            team_used, user_used = await usage.tokens_today(inbound.team, inbound.user)
            if self.workspace_daily_tokens and team_used >= self.workspace_daily_tokens:
                note = QUOTA_TEXT.format(whose="This workspace's")
                return await self._once(store, inbound, "quota-team", 86400, note)
            if self.user_daily_tokens and user_used >= self.user_daily_tokens:
                note = QUOTA_TEXT.format(whose="Your")
                return await self._once(store, inbound, "quota-user", 86400, note)
        if self.user_requests:
            wait = await usage.hit_rate(
                inbound.team, inbound.user, limit=self.user_requests, window_s=self.user_window_s
            )
            if wait > 0:
                minutes = max(1, math.ceil(wait / 60))
                note = RATE_TEXT.format(n=self.user_requests, minutes=minutes)
                return await self._once(store, inbound, "rate", self.user_window_s, note)
        return None

    @staticmethod
    async def _once(
        store: Store, inbound: Inbound, why: str, window_s: float, note: str
    ) -> Refusal:
        first = await store.usage.first_refusal(inbound.team, inbound.user, why, window_s=window_s)
        return Refusal(note if first else None)


class Turns:
    """Answers people's messages; one instance serves every event of the process."""

    def __init__(
        self,
        *,
        slack: SlackGateway,
        store: Store,
        recall: Recall,
        model: ChatModel,
        budget: EditBudget,
        options: TurnOptions,
        policy: Policy | None = None,
        limits: Limits | None = None,
        metrics: Metrics | None = None,
        stops: StopSignals | None = None,
        tracker: ReplyTracker | None = None,
        native: NativeStreaming | None = None,
        admission: Admission | None = None,
    ) -> None:
        self._native = native
        self._admission = admission or Admission()
        self._availability = NativeAvailability()
        self._stops = stops
        self._tracker = tracker
        self._slack = slack
        self._store = store
        self._recall = recall
        self._model = model
        self._budget = budget
        self._options = options
        self._policy = policy or Policy(
            default=Profile(options.system_prompt, model.default_model, model.default_temperature)
        )
        self._limits = limits or Limits()
        self._metrics = metrics
        self._inflight: set[asyncio.Task[Any]] = set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def drain(self, grace: float) -> None:
        """Let answers in flight finish for up to ``grace`` seconds, then end the rest with an
        "interrupted — please ask again" note (their tasks are cancelled; ``async with reply``
        gives each reply its last form)."""
        pending = set(self._inflight)
        if not pending:
            return
        log.info("waiting up to %.0f s for %d answer(s) in flight", grace, len(pending))
        _, late = await asyncio.wait(pending, timeout=grace)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=self._options.final_edit_deadline)

    def address(self, inbound: Inbound) -> tuple[ThreadKey, str | None]:
        """Which conversation ``inbound`` continues, and the thread to reply in (None: top level).

        Top-level DMs are one running conversation answered at the top level by default
        (``DM_REPLY_MODE=top``); with ``thread`` each top-level DM starts a thread of its own.
        """
        if inbound.is_dm and not inbound.in_thread and self._options.dm_reply_mode == "top":
            return ThreadKey(inbound.team, inbound.channel, DM_TOP_LEVEL), None
        return inbound.key, inbound.key.thread_ts

    async def answer(self, inbound: Inbound, *, if_taking_part: bool = False) -> None:
        """Answer ``inbound`` once, even if Slack delivers it several times to several replicas.

        ``if_taking_part``: a thread message the store cannot place (it is down, emptied, or
        younger than the thread): answered only if Slack shows the bot in the thread.
        """
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            with correlation(inbound.event_id or f"{inbound.channel}/{inbound.ts}"):
                if if_taking_part and not await self._recall.takes_part(
                    inbound.key,
                    bot_user=inbound.bot_user_id,
                    wait=PARTICIPATION_WAIT_S,
                    fresh_for=inbound.ts,
                ):
                    self._count("ignored")
                    return
                async with self._admission.turn() as entry:
                    await self._answer(inbound, entry)
        finally:
            self._inflight.discard(task)

    async def _answer(self, inbound: Inbound, entry: Entry) -> None:
        sighting = await self._store.dedupe.first_sighting(
            inbound.team, inbound.channel, inbound.ts, inbound.event_id, retry=inbound.retried
        )
        if sighting is Sighting.REPEAT:
            log.debug("duplicate delivery of %s/%s ignored", inbound.channel, inbound.ts)
            self._count("deduplicated")
            return
        if not self._policy.allows(channel=inbound.channel, user=inbound.user):
            log.info(
                "not answering %s in %s: not allowed by CHANNELS_FILE",
                inbound.user,
                inbound.channel,
            )
            self._count("ignored")
            return
        key, reply_thread = self.address(inbound)
        if sighting is Sighting.UNVOUCHED and await self._recall.answered(inbound, reply_thread):
            log.info("redelivered %s/%s was answered before", inbound.channel, inbound.ts)
            self._count("deduplicated")
            return
        self._count("answered")
        if not inbound.text and not (inbound.mentioned or inbound.is_dm):
            return  # nothing to answer and no note to post (e.g. a file shared in a thread)
        # Empty mentions count against the limits too: help notes are posts like any other.
        refusal = await self._limits.refusal(self._store, inbound)
        if refusal is not None:
            if refusal.note is not None:
                await self._slack.post(inbound.channel, refusal.note, thread_ts=reply_thread)
            else:
                log.info("%s is over a limit and was told so already", inbound.user)
            return
        if not inbound.text:
            if inbound.mentioned or inbound.is_dm:
                await self._slack.post(inbound.channel, HELP_TEXT, thread_ts=reply_thread)
            return
        profile = self._policy.profile(inbound.channel)
        reply = self._reply(inbound, reply_thread)
        # The placeholder goes up now; leaving the block any other way than through finish()
        # (an exception, a cancellation) still gives the reply its last form.
        async with reply, self._counted(inbound, reply):
            entry.taken_in()  # the placeholder is up; waiting for the lock is not intake work
            await self._store.history.engage(key)
            async with self._store.locks.hold(key):
                history = await self._history(key, inbound, reply)
                question = Turn("user", inbound.text, author=inbound.user, ts=inbound.ts)
                messages = prompt_window(
                    profile.system_prompt,
                    [*history, question],
                    self._options.prompt_token_budget,
                )
                await entry.admit()  # a burst of questions starts its answers one by one
                outcome = await self._stream(messages, reply, profile, inbound)
                shown = await reply.finish(outcome)
                await self._save(key, history, question, shown, reply.outcome or outcome, reply)
            # The first question of a DM thread (the greeting may precede it) names the thread.
            if inbound.is_dm and inbound.in_thread and all(t.role != "user" for t in history):
                await self._title(inbound)

    def _reply(self, inbound: Inbound, thread_ts: str | None) -> ReplyStream | NativeReply:
        """The renderer for this answer: a native stream where one may be used, else edits."""

        def edit_reply(reply_id: str | None = None) -> ReplyStream:
            return ReplyStream(
                self._slack,
                self._budget,
                team=inbound.team,
                channel=inbound.channel,
                thread_ts=thread_ts,
                limit=self._options.message_char_limit,
                render=render,
                render_final=render_final,
                split=split,
                final_deadline=self._options.final_edit_deadline,
                stop_button=self._stops is not None,
                asker=inbound.user,
                feedback=self._options.feedback_buttons,
                tracker=self._tracker,
                metrics=self._metrics,
                reply_id=reply_id,
            )

        native = self._native
        # Slack streams only into threads; outside DMs it needs to know who reads the stream.
        if native is None or thread_ts is None or not (inbound.is_dm or inbound.user):
            return edit_reply()
        auto = native.mode == "auto"
        if auto and self._availability.refused(inbound.team, inbound.channel):
            return edit_reply()
        status = None
        if inbound.is_dm and native.status:
            status = ThreadStatus(
                self._slack,
                inbound.channel,
                thread_ts,
                text=native.status,
                refresh_s=native.status_refresh,
            )
        return NativeReply(
            self._slack,
            appends=native.appends,
            starts=native.starts,
            team=inbound.team,
            channel=inbound.channel,
            thread_ts=thread_ts,
            recipient=None if inbound.is_dm else (inbound.user, inbound.user_team or inbound.team),
            fallback=edit_reply,
            status=status,
            availability=self._availability if auto else None,
            # ``native`` waits a little for a start token; ``auto`` edits at once instead.
            start_wait=0.0 if auto else 3.0,
            final_deadline=self._options.final_edit_deadline,
            call_timeout=native.call_timeout,
            feedback=self._options.feedback_buttons,
            tracker=self._tracker,
            metrics=self._metrics,
        )

    async def _title(self, inbound: Inbound) -> None:
        """Name a new assistant thread after its first question (Slack lists threads by it)."""
        first_line = inbound.text.strip().splitlines()[0] if inbound.text.strip() else ""
        title = (
            first_line if len(first_line) <= TITLE_LENGTH else first_line[: TITLE_LENGTH - 1] + "…"
        )
        title = neutralise_mentions(title)  # a person's words, shown by Slack as a title
        assert inbound.thread_ts is not None
        try:
            async with asyncio.timeout(5.0):
                await self._slack.set_title(inbound.channel, inbound.thread_ts, title)
        except (SlackError, TimeoutError) as exc:
            log.info("could not title thread %s: %s", inbound.thread_ts, exc)

    async def _stream(
        self,
        messages: list[dict[str, object]],
        reply: ReplyStream | NativeReply,
        profile: Profile,
        inbound: Inbound,
    ) -> Outcome:
        answer = self._model.stream(messages, model=profile.model, temperature=profile.temperature)
        try:
            if await self._read_unless_stopped(answer, reply):
                return Outcome.STOPPED
        except ModelUnavailable as exc:
            log.warning("model unavailable: %s", exc)
            return Outcome.FAILED
        except ModelInterrupted as exc:
            log.warning("model stream interrupted: %s", exc)
            return Outcome.INTERRUPTED
        finally:
            await self._record_usage(inbound, answer.usage)
        # Anything else (a cancellation, a bug) propagates: ``async with reply`` finishes it.
        return Outcome.COMPLETE

    async def _read_unless_stopped(
        self, answer: AnswerStream, reply: ReplyStream | NativeReply
    ) -> bool:
        """Feed the answer into the reply; True if someone pressed Stop first (our button, on
        any replica, or Slack's own stop of a native stream)."""

        async def read() -> None:
            room = self._options.max_answer_chars  # what is left of the answer's length cap
            async with answer:  # closes the model stream however reading ends
                async for delta in answer:
                    if len(delta) > room:
                        reply.append(delta[:room])
                        raise AnswerTooLong(f"over {self._options.max_answer_chars} characters")
                    room -= len(delta)
                    reply.append(delta)

        pressed = self._stops.register(reply.id) if self._stops is not None else asyncio.Event()
        reader = asyncio.create_task(read())
        stops = [asyncio.create_task(pressed.wait()), asyncio.create_task(reply.stopped.wait())]
        try:
            await asyncio.wait((reader, *stops), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for stop in stops:
                stop.cancel()
            if self._stops is not None:
                self._stops.unregister(reply.id)
            if not reader.done():
                reader.cancel()  # closes the model stream (``async with answer``)
                await asyncio.wait((reader,))
        if reader.cancelled():
            return True
        reader.result()  # the model's error, if any
        return False

    async def _record_usage(self, inbound: Inbound, usage: dict[str, int] | None) -> None:
        if not usage:
            return
        if self._metrics is not None:
            for kind in ("prompt_tokens", "completion_tokens"):
                self._metrics.tokens.labels(kind=kind.removesuffix("_tokens")).inc(
                    usage.get(kind, 0)
                )
        await self._store.usage.record(inbound.team, inbound.channel, inbound.user, usage)

    @asynccontextmanager
    async def _counted(
        self, inbound: Inbound, reply: ReplyStream | NativeReply
    ) -> AsyncIterator[None]:
        """Reply metrics: started, streaming now, how it ended, placeholder latency."""
        metrics = self._metrics
        if metrics is None:
            yield
            return
        metrics.event_to_placeholder.observe(time.monotonic() - inbound.received_at)
        metrics.replies.labels(outcome="started").inc()
        metrics.active_streams.inc()
        try:
            yield
        finally:
            metrics.active_streams.dec()
            metrics.streamed_chars.inc(len(reply.text))
            outcome = reply.outcome.value if reply.outcome is not None else "failed"
            metrics.replies.labels(outcome=outcome).inc()

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.events.labels(outcome=outcome).inc()

    async def _history(
        self, key: ThreadKey, inbound: Inbound, reply: ReplyStream | NativeReply
    ) -> list[Turn]:
        """The conversation's turns from the store; where it has none (the bot was summoned into
        the thread, the store lost it or is down) from Slack, stored again when the store is up.
        A DM's top-level conversation is read back only where the store may have lost it."""
        memory = self._store.history
        history = await memory.history(key)
        if history or self._options.backfill_limit == 0:
            return history or []
        if inbound.in_thread:
            recalled = await self._recall.turns(key, inbound, reply.message_ts)
        elif key.thread_ts == DM_TOP_LEVEL and (
            history is None or not await memory.remembers_all()
        ):
            recalled = await self._recall.channel_turns(inbound, reply.message_ts)
        else:
            return []
        if not recalled:
            return history or []  # Slack would not say in time: answered with what is known
        await memory.append(key, recalled, keep=self._worth_keeping(recalled))
        return recalled

    async def _save(
        self,
        key: ThreadKey,
        history: list[Turn],
        question: Turn,
        shown: str,
        outcome: Outcome,
        reply: ReplyStream | NativeReply,
    ) -> None:
        turns = [question]
        if outcome is not Outcome.FAILED and shown.strip():
            turns.append(
                Turn(
                    "assistant",
                    shown,
                    ts=reply.message_ts[0] if reply.message_ts else None,
                    interrupted=outcome is not Outcome.COMPLETE,
                )
            )
        self._recall.forget(key)  # the bot has posted there since any read of the thread
        await self._store.history.append(key, turns, keep=self._worth_keeping([*history, *turns]))

    def _worth_keeping(self, turns: list[Turn]) -> int:
        """How many of a thread's newest turns to store: what a prompt can use."""
        return newest_within(turns, self._options.prompt_token_budget)
