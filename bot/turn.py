"""One conversation turn, in order: dedupe → placeholder → thread lock → context → model stream →
final reply → save.

    turns = Turns(slack=gateway, store=store, model=model, budget=budget, options=TurnOptions(...))
    await turns.answer(inbound)

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
from bot.conversation import ThreadKey, Turn, prompt_window
from bot.errors import ModelInterrupted, ModelUnavailable, SlackError, StoreUnavailable
from bot.events import USER_SUBTYPES, Inbound, mention_pattern
from bot.llm import AnswerStream, ChatModel
from bot.logs import correlation
from bot.metrics import Metrics
from bot.policy import Policy, Profile
from bot.render.budget import EditBudget
from bot.render.native import NativeAvailability, NativeReply
from bot.render.reply import Outcome, ReplyStream, ReplyTracker
from bot.render.status import ThreadStatus
from bot.render.text import render, render_final, split
from bot.slack import SlackGateway
from bot.stops import StopSignals
from bot.store import Store

log = logging.getLogger(__name__)

DM_TOP_LEVEL = "top"  # the thread_ts of a DM's top-level conversation in its ThreadKey


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
class Limits:
    """Abuse limits, counted in Redis (0 = off). While Redis is down they are not enforced."""

    user_requests: int = 0
    user_window_s: float = 3600.0
    user_daily_tokens: int = 0
    workspace_daily_tokens: int = 0

    async def refusal(self, store: Store, inbound: Inbound) -> str | None:
        """A friendly note when ``inbound`` is over a limit, else None (and the request counts)."""
        try:
            if self.user_daily_tokens or self.workspace_daily_tokens:
                team_used, user_used = await store.tokens_today(inbound.team, inbound.user)
                if self.workspace_daily_tokens and team_used >= self.workspace_daily_tokens:
                    return QUOTA_TEXT.format(whose="This workspace's")
                if self.user_daily_tokens and user_used >= self.user_daily_tokens:
                    return QUOTA_TEXT.format(whose="Your")
            if self.user_requests:
                wait = await store.hit_rate(
                    inbound.team,
                    inbound.user,
                    limit=self.user_requests,
                    window_s=self.user_window_s,
                )
                if wait > 0:
                    minutes = max(1, math.ceil(wait / 60))
                    return RATE_TEXT.format(n=self.user_requests, minutes=minutes)
        except StoreUnavailable:
            return None
        return None


class Turns:
    """Answers people's messages; one instance serves every event of the process."""

    def __init__(
        self,
        *,
        slack: SlackGateway,
        store: Store,
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

    async def answer(self, inbound: Inbound) -> None:
        """Answer ``inbound`` once, even if Slack delivers it several times to several replicas."""
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            with correlation(inbound.event_id or f"{inbound.channel}/{inbound.ts}"):
                async with self._admission.turn() as entry:
                    await self._answer(inbound, entry)
        finally:
            self._inflight.discard(task)

    async def _answer(self, inbound: Inbound, entry: Entry) -> None:
        if not await self._store.first_sighting(
            inbound.team, inbound.channel, inbound.ts, inbound.event_id
        ):
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
        self._count("answered")
        key, reply_thread = self.address(inbound)
        if not inbound.text:
            if inbound.mentioned or inbound.is_dm:
                await self._slack.post(inbound.channel, HELP_TEXT, thread_ts=reply_thread)
            return
        refusal = await self._limits.refusal(self._store, inbound)
        if refusal:
            await self._slack.post(inbound.channel, refusal, thread_ts=reply_thread)
            return
        profile = self._policy.profile(inbound.channel)
        reply = self._reply(inbound, reply_thread)
        # The placeholder goes up now; leaving the block any other way than through finish()
        # (an exception, a cancellation) still gives the reply its last form.
        async with reply, self._counted(inbound, reply):
            entry.taken_in()  # the placeholder is up; waiting for the lock is not intake work
            await self._engage(key)
            async with self._store.thread_lock(key):
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
                await self._save(key, question, shown, reply.outcome or outcome, reply)
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
            async with answer:
                async for delta in answer:
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
        try:
            await self._store.record_usage(inbound.team, inbound.channel, inbound.user, usage)
        except StoreUnavailable:
            pass

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

    async def _engage(self, key: ThreadKey) -> None:
        try:
            await self._store.engage(key)
        except StoreUnavailable:
            pass

    async def _history(
        self, key: ThreadKey, inbound: Inbound, reply: ReplyStream | NativeReply
    ) -> list[Turn]:
        """The thread's turns from Redis; a thread Redis does not know (the bot was summoned
        into it, or Redis lost it) is read once from Slack and stored."""
        try:
            history = await self._store.history(key)
        except StoreUnavailable:
            return []
        if history or not inbound.in_thread or self._options.backfill_limit == 0:
            return history
        history = await self._backfill(key, inbound, set(reply.message_ts))
        if history:
            try:
                await self._store.append_turns(key, history)
            except StoreUnavailable:
                pass
        return history

    async def _backfill(
        self, key: ThreadKey, inbound: Inbound, own_replies: set[str]
    ) -> list[Turn]:
        try:
            messages = await self._slack.thread_messages(
                key.channel, key.thread_ts, limit=self._options.backfill_limit
            )
        except SlackError as exc:
            log.info(
                "could not read thread %s for context (%s); answering without it", key, exc.error
            )
            return []
        turns = []
        for message in messages:
            turn = _turn_from_slack(message, inbound, own_replies)
            if turn is not None:
                turns.append(turn)
        return turns

    async def _save(
        self,
        key: ThreadKey,
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
        try:
            await self._store.append_turns(key, turns)
        except StoreUnavailable:
            pass  # already warned once by the store


def _turn_from_slack(
    message: dict[str, Any], inbound: Inbound, own_replies: set[str]
) -> Turn | None:
    """One earlier thread message as a turn; None for the current message, placeholders and
    messages posted after it."""
    ts = message.get("ts")
    text = message.get("text")
    if not isinstance(ts, str) or not isinstance(text, str) or ts in own_replies:
        return None
    if float(ts) >= float(inbound.ts):
        return None
    if message.get("subtype") not in USER_SUBTYPES and message.get("subtype") != "bot_message":
        return None
    bot_user = inbound.bot_user_id
    if bot_user and message.get("user") == bot_user:
        return Turn("assistant", text, ts=ts)
    if bot_user:
        text = mention_pattern(bot_user).sub("", text).strip()
    author = message.get("user") or message.get("bot_id")
    if not text:
        return None
    return Turn("user", text, author=str(author) if author else None, ts=ts)
