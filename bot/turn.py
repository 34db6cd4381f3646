"""One conversation turn, in order: dedupe → placeholder → thread lock → context → model stream →
final reply → save.

    turns = Turns(slack=gateway, store=store, model=model, budget=budget, options=TurnOptions(...))
    await turns.answer(inbound)

The model stream and Slack meet only here: ``async for delta in answer: reply.append(delta)``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from bot.conversation import Turn, prompt_window
from bot.errors import ModelInterrupted, ModelUnavailable, StoreUnavailable
from bot.events import Inbound
from bot.llm import ChatModel
from bot.render.budget import EditBudget
from bot.render.reply import Outcome, ReplyStream
from bot.render.text import render, split
from bot.slack import SlackGateway
from bot.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TurnOptions:
    system_prompt: str
    prompt_token_budget: int
    message_char_limit: int
    final_edit_deadline: float


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
    ) -> None:
        self._slack = slack
        self._store = store
        self._model = model
        self._budget = budget
        self._options = options

    async def answer(self, inbound: Inbound) -> None:
        """Answer ``inbound`` once, even if Slack delivers it several times to several replicas."""
        if not await self._store.first_sighting(
            inbound.team, inbound.channel, inbound.ts, inbound.event_id
        ):
            log.debug("duplicate delivery of %s/%s ignored", inbound.channel, inbound.ts)
            return
        key = inbound.key
        reply = ReplyStream(
            self._slack,
            self._budget,
            team=inbound.team,
            channel=inbound.channel,
            thread_ts=key.thread_ts,
            limit=self._options.message_char_limit,
            render=render,
            split=split,
            final_deadline=self._options.final_edit_deadline,
        )
        await reply.open()
        async with self._store.thread_lock(key):
            history = await self._history(inbound)
            question = Turn("user", inbound.text, author=inbound.user, ts=inbound.ts)
            messages = prompt_window(
                self._options.system_prompt, [*history, question], self._options.prompt_token_budget
            )
            outcome = await self._stream(messages, reply)
            shown = await reply.finish(outcome)
            await self._save(inbound, question, shown, outcome, reply)

    async def _stream(self, messages: list[dict[str, object]], reply: ReplyStream) -> Outcome:
        try:
            async with self._model.stream(messages) as answer:
                async for delta in answer:
                    reply.append(delta)
        except ModelUnavailable as exc:
            log.warning("model unavailable: %s", exc)
            return Outcome.FAILED
        except ModelInterrupted as exc:
            log.warning("model stream interrupted: %s", exc)
            return Outcome.INTERRUPTED
        except asyncio.CancelledError:
            # Shutting down mid-answer: the message must not stay "writing…".
            await asyncio.shield(reply.finish(Outcome.SHUTDOWN))
            raise
        except BaseException:
            await asyncio.shield(reply.finish(Outcome.FAILED))
            raise
        return Outcome.COMPLETE

    async def _history(self, inbound: Inbound) -> list[Turn]:
        try:
            return await self._store.history(inbound.key)
        except StoreUnavailable:
            return []

    async def _save(
        self, inbound: Inbound, question: Turn, shown: str, outcome: Outcome, reply: ReplyStream
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
            await self._store.append_turns(inbound.key, turns)
        except StoreUnavailable:
            pass  # already warned once by the store
