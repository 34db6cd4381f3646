"""The turn's answer step: the model's rounds into the reply — text, tool calls run and fed
back, more text — until the answer ends, fails, runs over the length cap or someone presses
Stop.

    answered = await responder.respond(accepted, context, reply)
    answered.outcome, answered.tools          # how it ended; the tool calls it made

The model stream and Slack meet only here: ``async for delta in answer: reply.append(delta)``.
Text written before, between and after tool rounds goes into the one reply, in order. Each
call shows as a step (pending as soon as the model names it, in progress, then complete or
error); calls of one round run concurrently; a tool that needs approval runs only once the
person who asked approves it. Up to ``max_tool_rounds`` rounds offer tools; the next one must
answer without them. Stop cancels whatever runs: the model's stream or the tool calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from bot.conversation import ToolUse
from bot.errors import AnswerTooLong, ModelInterrupted, ModelUnavailable
from bot.llm import AnswerStream, ChatModel, ToolCall
from bot.llm import ToolSpec as ModelTool
from bot.metrics import Metrics
from bot.render.contract import Outcome, Reply, ReplyStateError, Step, StepStatus
from bot.stops import StopSignals
from bot.store import Store
from bot.tools.calls import ToolResult, ToolSpec, cut
from bot.tools.config import Toolset
from bot.turn.context import Context
from bot.turn.intake import Accepted

log = logging.getLogger(__name__)

T = TypeVar("T")

_EVERY_TOOL = Toolset()

# What an answer remembers of each tool result for follow-ups (the prompt window budgets it).
REMEMBERED_RESULT_CHARS = 1500


class Tools(Protocol):
    """What the answer step needs of the tools (bot/tools/mcp.py ``Toolbox``)."""

    def specs(self, toolset: Toolset = ...) -> tuple[ToolSpec, ...]: ...

    def needs_approval(self, name: str) -> bool: ...

    def summary(self, name: str, arguments_json: str) -> str: ...

    async def call(
        self, name: str, arguments_json: str, *, toolset: Toolset = ..., approved: bool = False
    ) -> ToolResult: ...


class NoTools:
    """No tools (``TOOLS=off``, or no MCP server configured): the model is offered none."""

    def specs(self, toolset: Toolset = _EVERY_TOOL) -> tuple[ToolSpec, ...]:
        return ()

    def needs_approval(self, name: str) -> bool:
        return False

    def summary(self, name: str, arguments_json: str) -> str:
        return name[:64]

    async def call(
        self,
        name: str,
        arguments_json: str,
        *,
        toolset: Toolset = _EVERY_TOOL,
        approved: bool = False,
    ) -> ToolResult:
        return ToolResult("Tools are turned off here.", "error", name[:64])


class Approvals(Protocol):
    """Asks the person who asked whether a tool call may run (bot/approvals.py)."""

    async def ask(self, accepted: Accepted, reply: Reply, summary: str) -> bool: ...


class NoApprovals:
    """Nobody can approve: a call that needs approval is refused (the model is told)."""

    async def ask(self, accepted: Accepted, reply: Reply, summary: str) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Answered:
    """How the answer ended, and the tool calls it made (remembered with it)."""

    outcome: Outcome
    tools: tuple[ToolUse, ...] = ()


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
        tools: Tools | None = None,
        approvals: Approvals | None = None,
        max_tool_rounds: int = 5,
    ) -> None:
        self._model = model
        self._store = store
        self._stops = stops
        self._metrics = metrics
        self._max_chars = max_answer_chars
        self._tools: Tools = tools or NoTools()
        self._approvals: Approvals = approvals or NoApprovals()
        self._max_rounds = max_tool_rounds

    async def respond(self, accepted: Accepted, context: Context, reply: Reply) -> Answered:
        """How the answer ended. Anything but the model's own failures (a cancellation, a bug)
        propagates: ``async with reply`` gives the reply its last form."""
        pressed = self._stops.register(reply.id)
        try:
            return await self._rounds(accepted, context, reply, pressed)
        finally:
            self._stops.unregister(reply.id)

    async def _rounds(
        self, accepted: Accepted, context: Context, reply: Reply, pressed: asyncio.Event
    ) -> Answered:
        profile = accepted.profile
        offered = [
            ModelTool(spec.name, spec.description, spec.parameters)
            for spec in self._tools.specs(profile.toolset)
        ]
        messages = list(context.messages)
        uses: list[ToolUse] = []
        room = self._max_chars  # what is left of the answer's length cap
        # Said once, before the answer, if the model turns out not to take the images.
        unseen = [_unseen_note(context.images)] if context.images else []
        for number in range(self._max_rounds + 1):
            answer = self._model.stream(
                messages,
                model=profile.model,
                temperature=profile.temperature,
                tools=offered if number < self._max_rounds else (),
                on_tool_call=self._pending(reply, number),
            )
            try:
                text = await _unless_stopped(
                    self._read(answer, reply, room, unseen), pressed, reply
                )
            except ModelUnavailable as exc:
                log.warning("model unavailable: %s", exc)
                return Answered(Outcome.FAILED, tuple(uses))
            except ModelInterrupted as exc:
                log.warning("model stream interrupted: %s", exc)
                return Answered(Outcome.INTERRUPTED, tuple(uses))
            finally:
                await self._record_usage(accepted, answer.usage)
            if text is None:
                return Answered(Outcome.STOPPED, tuple(uses))
            room -= len(text)
            calls = answer.tool_calls
            # After "length" the server cut the answer on purpose: calls may be half-written.
            if not calls or answer.finish_reason == "length":
                return Answered(Outcome.COMPLETE, tuple(uses))
            results = await _unless_stopped(
                self._run(calls, accepted, reply, number), pressed, reply
            )
            if results is None:
                return Answered(Outcome.STOPPED, tuple(uses))
            uses += [
                ToolUse(r.summary, cut(r.text, REMEMBERED_RESULT_CHARS), r.is_error)
                for r in results
            ]
            messages += self._model.tool_round(
                text, calls, [(result.text, result.is_error) for result in results]
            )
        raise AssertionError("unreachable: the last round offers no tools")

    async def _read(self, answer: AnswerStream, reply: Reply, room: int, unseen: list[str]) -> str:
        """One round's text into the reply (after a blank line when earlier rounds wrote
        some); returns it. ``unseen``: the note for images the model did not take, told (and
        taken from the list) before the first text of an answer made without them."""
        written: list[str] = []
        async with answer:  # closes the model stream however reading ends
            async for delta in answer:
                if answer.images_dropped and unseen:
                    reply.append(unseen.pop())
                if not written and reply.text and not reply.text.endswith("\n"):
                    reply.append("\n\n")
                if len(delta) > room:
                    reply.append(delta[:room])
                    raise AnswerTooLong(f"over {self._max_chars} characters")
                room -= len(delta)
                written.append(delta)
                reply.append(delta)
        return "".join(written)

    def _pending(self, reply: Reply, number: int) -> Callable[[str, int], None]:
        """Shows a call as pending as soon as the model names it."""

        def show(name: str, index: int) -> None:
            _show(reply, Step(f"{number}.{index}", self._tools.summary(name, ""), _PENDING))

        return show

    async def _run(
        self, calls: list[ToolCall], accepted: Accepted, reply: Reply, number: int
    ) -> list[ToolResult]:
        """One round's calls, concurrently, each shown as a step; results in call order."""

        async def run(index: int, call: ToolCall) -> ToolResult:
            step_id = f"{number}.{index}"
            summary = self._tools.summary(call.name, call.arguments)
            approved = False
            if self._tools.needs_approval(call.name):
                _show(reply, Step(step_id, summary, _PENDING, "waiting for approval"))
                approved = await self._approvals.ask(accepted, reply, summary)
            _show(reply, Step(step_id, summary, StepStatus.IN_PROGRESS))
            try:
                result = await self._tools.call(
                    call.name, call.arguments, toolset=accepted.profile.toolset, approved=approved
                )
            except asyncio.CancelledError:
                _show(reply, Step(step_id, summary, StepStatus.ERROR, "stopped"))
                raise
            status = StepStatus.ERROR if result.is_error else StepStatus.COMPLETE
            _show(reply, Step(step_id, result.summary, status))
            return result

        return list(await asyncio.gather(*(run(i, call) for i, call in enumerate(calls))))

    async def _record_usage(self, accepted: Accepted, usage: dict[str, int] | None) -> None:
        if not usage:
            return
        for kind in ("prompt_tokens", "completion_tokens"):
            self._metrics.tokens.labels(kind=kind.removesuffix("_tokens")).inc(usage.get(kind, 0))
        inbound = accepted.inbound
        await self._store.usage.record(inbound.team, inbound.channel, inbound.user, usage)


_PENDING = StepStatus.PENDING


def _unseen_note(images: tuple[str, ...]) -> str:
    """The person's note for images the model could not look at."""
    names = ", ".join(images[:3]) + (f" and {len(images) - 3} more" if len(images) > 3 else "")
    return f"_I couldn't look at {names}: the model I use can't see images._\n\n"


def _show(reply: Reply, step: Step) -> None:
    try:
        reply.step(step)
    except ReplyStateError:
        pass  # the reply is being finished (a stop, a shutdown): nothing more to show


async def _unless_stopped(work: Awaitable[T], pressed: asyncio.Event, reply: Reply) -> T | None:
    """``work``'s result, or None when someone pressed Stop first (our button, on any replica,
    or Slack's own stop of a native stream): ``work`` is then cancelled (closing the model
    stream, cancelling tool calls). ``work``'s errors propagate."""
    task: asyncio.Task[Any] = asyncio.ensure_future(work)
    stops = [asyncio.create_task(pressed.wait()), asyncio.create_task(reply.stopped.wait())]
    try:
        await asyncio.wait((task, *stops), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for stop in stops:
            stop.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait((task,))
    if task.cancelled():
        return None
    result: T = task.result()
    return result
