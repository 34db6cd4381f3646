"""The turn's context step and its save step: what the model is told, and what is remembered.

    context = await memory.context(accepted, reply)     # history + question → prompt
    ...
    await memory.save(accepted, context, finished)      # the exchange, for follow-ups

History comes from the store; where the store cannot say (down, emptied, older than the
thread) it comes from Slack (bot/recall.py), and is stored again. Files shared in the
conversation are read into the prompt by the files step (bot/turn/files.py); what could not be
read is told to the person in a line at the top of the reply.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from bot.conversation import ToolUse, Turn, estimate_tokens, newest_within, prompt_window
from bot.recall import Recall
from bot.render.contract import Finished, Outcome, Reply
from bot.store import Store
from bot.turn.files import SharedFiles
from bot.turn.intake import DM_TOP_LEVEL, Accepted


@dataclass(frozen=True, slots=True)
class Context:
    """The conversation so far, the new question, and the prompt built from them; ``images``
    names the question's images the prompt carries (should the model refuse them)."""

    history: list[Turn]
    question: Turn
    messages: list[dict[str, Any]]
    images: tuple[str, ...] = ()

    @property
    def first_question(self) -> bool:
        """No earlier question in the conversation (a greeting may precede this one)."""
        return all(turn.role != "user" for turn in self.history)


class Memory:
    """Reads a conversation's context and saves each exchange; see the module docstring."""

    def __init__(
        self,
        *,
        store: Store,
        recall: Recall,
        files: SharedFiles,
        prompt_token_budget: int,
        backfill_limit: int,
    ) -> None:
        self._store = store
        self._recall = recall
        self._files = files
        self._budget = prompt_token_budget
        self._backfill_limit = backfill_limit

    async def context(self, accepted: Accepted, reply: Reply) -> Context:
        inbound = accepted.inbound
        history, attachments = await asyncio.gather(
            self._history(accepted, reply), self._files.read(inbound.team, inbound.files)
        )
        question = Turn(
            "user",
            inbound.text,
            author=inbound.user,
            ts=inbound.ts,
            files=tuple(a.file_id for a in attachments if a.file_id),
            images=tuple(
                (a.file_id, a.name) for a in attachments if a.file_id and a.kind == "image"
            ),
        )
        system = accepted.profile.system_prompt
        shown = await self._files.shown(
            inbound.team,
            [*history, question],
            attachments,
            room_tokens=self._budget - estimate_tokens(system),
        )
        if shown.notes:
            reply.append("".join(f"_{as_written(note)}_\n" for note in shown.notes) + "\n")
        messages = prompt_window(system, shown.turns, self._budget)
        return Context(history, question, messages, shown.images)

    async def save(
        self,
        accepted: Accepted,
        context: Context,
        finished: Finished,
        tools: tuple[ToolUse, ...] = (),
    ) -> None:
        """Store the question and what the person saw of the answer (nothing of a failed one),
        with the tool calls it was built on (kept also when the answer then failed)."""
        turns = [context.question]
        shown = finished.outcome is not Outcome.FAILED and finished.text.strip()
        # Tool calls that ran are remembered however the answer ended: a follow-up must not
        # run them again unknowingly.
        if shown or tools:
            turns.append(
                Turn(
                    "assistant",
                    finished.text,
                    ts=finished.first_ts,
                    interrupted=finished.outcome is not Outcome.COMPLETE,
                    tools=tools,
                )
            )
        self._recall.forget(accepted.key)  # the bot has posted there since any read of it
        await self._store.history.append(
            accepted.key, turns, keep=self._worth_keeping([*context.history, *turns])
        )

    async def _history(self, accepted: Accepted, reply: Reply) -> list[Turn]:
        """The conversation's turns from the store; where it has none (the bot was summoned into
        the thread, the store lost it or is down) from Slack, stored again when the store is up.
        A DM's top-level conversation is read back only where the store may have lost it."""
        key, inbound = accepted.key, accepted.inbound
        memory = self._store.history
        history = await memory.history(key)
        if history or self._backfill_limit == 0:
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

    def _worth_keeping(self, turns: list[Turn]) -> int:
        """How many of a thread's newest turns to store: what a prompt can use."""
        return newest_within(turns, self._budget)


_MARKDOWN = re.compile(r"([\\`*_~\[\]<>|])")


def as_written(note: str) -> str:
    """A note as Markdown that shows it as written (file names are the person's own text:
    ``*draft*.pdf`` stays as it is)."""
    return _MARKDOWN.sub(r"\\\1", note)
