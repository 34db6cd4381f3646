"""One conversation turn, as a short pipeline of named steps:

    intake  (bot/turn/intake.py)   dedupe, channel policy, limits, help → Accepted | None
    reply   (bot/render/factory)   the placeholder / status line goes up at once
    context (bot/turn/context.py)  history (store, else Slack) + question → prompt
            (bot/turn/files.py)    the files shared in it, read into the prompt
    answer  (bot/turn/respond.py)  model rounds and tool calls into the reply, Stop, cap
    save    (bot/turn/context.py)  the exchange, for follow-ups

    turns = Turns(intake=intake, replies=replies, memory=memory, responder=responder,
                  recall=recall, slack=slack, store=store, metrics=metrics)
    await turns.answer(inbound)
    await turns.answer(inbound, if_taking_part=True)   # a thread the store cannot place

Every step gets what it needs as a required collaborator and can be driven alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from bot.admission import Admission, Entry
from bot.errors import SlackError
from bot.events import Inbound
from bot.logs import correlation
from bot.metrics import Metrics
from bot.recall import Recall
from bot.render.contract import Reply
from bot.render.factory import Replies
from bot.render.mrkdwn import neutralise_mentions
from bot.slack import SlackGateway
from bot.store import Store
from bot.turn.context import Context, Memory
from bot.turn.files import NoFiles, SharedFiles
from bot.turn.intake import (
    DM_TOP_LEVEL,
    HELP_TEXT,
    QUOTA_TEXT,
    RATE_TEXT,
    Accepted,
    Intake,
    Limits,
    Refusal,
)
from bot.turn.respond import Answered, Approvals, NoApprovals, NoTools, Responder, Tools

__all__ = [
    "DM_TOP_LEVEL",
    "HELP_TEXT",
    "QUOTA_TEXT",
    "RATE_TEXT",
    "Accepted",
    "Answered",
    "Approvals",
    "Context",
    "Intake",
    "Limits",
    "Memory",
    "NoApprovals",
    "NoFiles",
    "NoTools",
    "Refusal",
    "Responder",
    "SharedFiles",
    "Tools",
    "Turns",
]

log = logging.getLogger(__name__)

# How long a follow-up in a thread the store cannot place waits for a Slack read token (it is
# past Slack's ack: only the person waits; beyond this the message is not answered).
PARTICIPATION_WAIT_S = 30.0
TITLE_LENGTH = 60  # an assistant thread's title: the start of its first question


class Turns:
    """Answers people's messages; one instance serves every event of the process."""

    def __init__(
        self,
        *,
        intake: Intake,
        replies: Replies,
        memory: Memory,
        responder: Responder,
        recall: Recall,
        slack: SlackGateway,
        store: Store,
        metrics: Metrics,
        admission: Admission,
        final_edit_deadline: float,
    ) -> None:
        self._intake = intake
        self._replies = replies
        self._memory = memory
        self._responder = responder
        self._recall = recall
        self._slack = slack
        self._store = store
        self._metrics = metrics
        self._admission = admission
        self._final_edit_deadline = final_edit_deadline
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
            await asyncio.wait(late, timeout=self._final_edit_deadline)

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
                    self._metrics.events.labels(outcome="ignored").inc()
                    return
                async with self._admission.turn() as entry:
                    await self._answer(inbound, entry)
        finally:
            self._inflight.discard(task)

    async def _answer(self, inbound: Inbound, entry: Entry) -> None:
        accepted = await self._intake.accept(inbound)
        if accepted is None:
            return
        reply = self._replies.new(
            team=inbound.team,
            channel=inbound.channel,
            thread_ts=accepted.reply_thread,
            asker=inbound.user,
            asker_team=inbound.user_team or inbound.team,
            is_dm=inbound.is_dm,
        )
        # The placeholder goes up now; leaving the block any other way than through finish()
        # (an exception, a cancellation) still gives the reply its last form.
        async with reply, self._counted(inbound, reply):
            entry.taken_in()  # the placeholder is up; waiting for the lock is not intake work
            await self._store.history.engage(accepted.key)
            async with self._store.locks.hold(accepted.key):
                context = await self._memory.context(accepted, reply)
                await entry.admit()  # a burst of questions starts its answers one by one
                answered = await self._responder.respond(accepted, context, reply)
                finished = await reply.finish(answered.outcome)
                await self._memory.save(accepted, context, finished, answered.tools)
        if inbound.is_dm and inbound.in_thread and context.first_question:
            await self._title(accepted)

    async def _title(self, accepted: Accepted) -> None:
        """Name a new assistant thread after its first question (Slack lists threads by it)."""
        inbound = accepted.inbound
        first_line = inbound.text.strip().splitlines()[0] if inbound.text.strip() else ""
        if not first_line and inbound.files:
            first_line = ", ".join(file.label for file in inbound.files)  # files without words
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

    @asynccontextmanager
    async def _counted(self, inbound: Inbound, reply: Reply) -> AsyncIterator[None]:
        """Reply metrics: started, streaming now, how it ended, placeholder latency."""
        metrics = self._metrics
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
