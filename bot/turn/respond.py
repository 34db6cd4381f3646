"""The turn's answer step: the model's stream into the reply, until it ends, fails, runs over
the length cap or someone presses Stop.

    outcome = await responder.respond(accepted, context, reply)

The model stream and Slack meet only here: ``async for delta in answer: reply.append(delta)``.
"""

from __future__ import annotations

import asyncio
import logging

from bot.errors import AnswerTooLong, ModelInterrupted, ModelUnavailable
from bot.llm import AnswerStream, ChatModel
from bot.metrics import Metrics
from bot.render.contract import Outcome, Reply
from bot.stops import StopSignals
from bot.store import Store
from bot.turn.context import Context
from bot.turn.intake import Accepted

log = logging.getLogger(__name__)


class Responder:
    """Streams answers from the model into replies; see the module docstring."""

    def __init__(
        self,
        *,
        model: ChatModel,
        store: Store,
        stops: StopSignals,
        metrics: Metrics,
        max_answer_chars: int,
    ) -> None:
        self._model = model
        self._store = store
        self._stops = stops
        self._metrics = metrics
        self._max_chars = max_answer_chars

    async def respond(self, accepted: Accepted, context: Context, reply: Reply) -> Outcome:
        """How the answer ended. Anything but the model's own failures (a cancellation, a bug)
        propagates: ``async with reply`` gives the reply its last form."""
        profile = accepted.profile
        answer = self._model.stream(
            context.messages, model=profile.model, temperature=profile.temperature
        )
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
            await self._record_usage(accepted, answer.usage)
        return Outcome.COMPLETE

    async def _read_unless_stopped(self, answer: AnswerStream, reply: Reply) -> bool:
        """Feed the answer into the reply; True if someone pressed Stop first (our button, on
        any replica, or Slack's own stop of a native stream)."""

        async def read() -> None:
            room = self._max_chars  # what is left of the answer's length cap
            async with answer:  # closes the model stream however reading ends
                async for delta in answer:
                    if len(delta) > room:
                        reply.append(delta[:room])
                        raise AnswerTooLong(f"over {self._max_chars} characters")
                    room -= len(delta)
                    reply.append(delta)

        pressed = self._stops.register(reply.id)
        reader = asyncio.create_task(read())
        stops = [asyncio.create_task(pressed.wait()), asyncio.create_task(reply.stopped.wait())]
        try:
            await asyncio.wait((reader, *stops), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for stop in stops:
                stop.cancel()
            self._stops.unregister(reply.id)
            if not reader.done():
                reader.cancel()  # closes the model stream (``async with answer``)
                await asyncio.wait((reader,))
        if reader.cancelled():
            return True
        reader.result()  # the model's error, if any
        return False

    async def _record_usage(self, accepted: Accepted, usage: dict[str, int] | None) -> None:
        if not usage:
            return
        for kind in ("prompt_tokens", "completion_tokens"):
            self._metrics.tokens.labels(kind=kind.removesuffix("_tokens")).inc(usage.get(kind, 0))
        inbound = accepted.inbound
        await self._store.usage.record(inbound.team, inbound.channel, inbound.user, usage)
