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
import dataclasses
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
from bot.tools.calls import ToolResult, ToolSpec, cut, parse_arguments
from bot.tools.config import Toolset
from bot.turn.context import Context, as_written
from bot.turn.intake import Accepted

log = logging.getLogger(__name__)

T = TypeVar("T")

_EVERY_TOOL = Toolset()

#: Most tools one request offers (OpenAI's documented limit); more are left out with a warning.
MAX_TOOLS = 128
#: A result is never cut below this many bytes; once the room left for results is smaller, the
#: next round is the last (no more tools).
MIN_RESULT_BYTES = 1000
#: Told to the model in the round after MAX_TOOL_ROUNDS, which offers no tools.
LAST_ROUND_NOTE = (
    "You have made all the tool calls you may make for this answer. Answer now with what you "
    "have found, and say what is missing."
)

# What an answer remembers of each tool result for follow-ups (the prompt window budgets it).
REMEMBERED_RESULT_CHARS = 1500


class Tools(Protocol):
    """What the answer step needs of the tools (bot/tools/mcp.py ``Toolbox``)."""

    def specs(self, toolset: Toolset = ...) -> tuple[ToolSpec, ...]: ...

    def needs_approval(self, name: str) -> bool: ...

    def summary(self, name: str, arguments_json: str) -> str: ...

    def approval_text(self, name: str, arguments_json: str) -> str: ...

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

    def approval_text(self, name: str, arguments_json: str) -> str:
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

    async def ask(self, accepted: Accepted, reply: Reply, summary: str, call: str) -> bool: ...


class NoApprovals:
    """Nobody can approve: a call that needs approval is refused (the model is told)."""

    async def ask(self, accepted: Accepted, reply: Reply, summary: str, call: str) -> bool:
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
        prompt_token_budget: int = 8000,
    ) -> None:
        self._model = model
        self._store = store
        self._stops = stops
        self._metrics = metrics
        self._max_chars = max_answer_chars
        self._tools: Tools = tools or NoTools()
        self._approvals: Approvals = approvals or NoApprovals()
        self._max_rounds = max_tool_rounds
        # Tool results of one answer take at most half the prompt's room (UTF-8 bytes, ~4 a
        # token, the unit conversation.estimate_tokens counts), shared by the calls of each
        # round: results cannot overflow the model's context after tools already ran.
        self._results_room = prompt_token_budget * 4 // 2

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
        specs = self._tools.specs(profile.toolset)
        if len(specs) > MAX_TOOLS:
            log.warning(
                "%d tools offered in %s; the model is offered the first %d",
                len(specs),
                accepted.inbound.channel,
                MAX_TOOLS,
            )
        offered = [
            ModelTool(spec.name, spec.description, spec.parameters) for spec in specs[:MAX_TOOLS]
        ]
        round_ = _Round(reply, {tool.name for tool in offered})
        messages = list(context.messages)
        room = self._max_chars  # what is left of the answer's length cap
        results_room = self._results_room  # what is left of the prompt's room for results
        # Said once, before the answer, if the model turns out not to take the images.
        unseen = [_unseen_note(context.images)] if context.images else []
        final = False  # the next round offers no tools
        try:
            for number in range(self._max_rounds + 1):
                last = final or number == self._max_rounds
                answer = self._model.stream(
                    messages,
                    model=profile.model,
                    temperature=profile.temperature,
                    tools=() if last else offered,
                    on_tool_call=self._pending(round_, number),
                )
                try:
                    text = await _unless_stopped(
                        self._read(answer, reply, room, unseen), pressed, reply
                    )
                except ModelUnavailable as exc:
                    log.warning("model unavailable: %s", exc)
                    # After a tool round something happened that the answer must not lose.
                    failed = Outcome.INTERRUPTED if round_.uses else Outcome.FAILED
                    return round_.answered(failed)
                except ModelInterrupted as exc:
                    log.warning("model stream interrupted: %s", exc)
                    return round_.answered(Outcome.INTERRUPTED)
                finally:
                    await self._record_usage(accepted, answer.usage)
                if text is None:
                    return round_.answered(Outcome.STOPPED)
                room -= len(text)
                calls = answer.tool_calls
                if calls and answer.finish_reason == "length":
                    # The server cut the answer while it wrote a call: not run, and said so.
                    return round_.answered(Outcome.INTERRUPTED)
                if not calls:
                    return round_.answered(Outcome.COMPLETE)
                share = max(MIN_RESULT_BYTES, results_room // len(calls))
                results = await _unless_stopped(
                    self._run(calls, accepted, round_, number, share), pressed, reply
                )
                if results is None:
                    return round_.answered(Outcome.STOPPED)
                results_room -= sum(len(result.text.encode()) for result in results)
                final = results_room < MIN_RESULT_BYTES or number + 1 == self._max_rounds
                outputs = [(result.text, result.is_error) for result in results]
                if final:
                    # Told with the results (a message of its own after them would break the
                    # role order some servers' chat templates insist on).
                    content, is_error = outputs[-1]
                    outputs[-1] = (f"{content}\n\n[{LAST_ROUND_NOTE}]", is_error)
                messages += self._model.tool_round(text, calls, outputs)
            raise AssertionError("unreachable: the last round offers no tools")
        finally:
            round_.end()

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

    def _pending(self, round_: _Round, number: int) -> Callable[[str, int], None]:
        """Shows a call as pending as soon as the model names it."""

        def show(name: str, index: int) -> None:
            step = Step(f"{number}.{index}", self._tools.summary(name, ""), _PENDING)
            # Soon, not now: the model's text read with the call's first chunk is handed to
            # the reply just after this runs, and the step must come after that text.
            asyncio.get_running_loop().call_soon(round_.show, step)

        return show

    async def _run(
        self, calls: list[ToolCall], accepted: Accepted, round_: _Round, number: int, share: int
    ) -> list[ToolResult]:
        """One round's calls, concurrently, each shown as a step; results in call order, each
        cut to ``share`` bytes (the round's part of the prompt's room for results)."""

        async def run(index: int, call: ToolCall) -> ToolResult:
            step_id = f"{number}.{index}"
            summary = self._tools.summary(call.name, call.arguments)
            approved = False
            try:
                # A tool the channel does not offer is refused by the call: nobody is asked.
                # Nor is a call whose arguments are not a JSON object: it fails either way.
                if (
                    call.name in round_.offered
                    and self._tools.needs_approval(call.name)
                    and _readable(call.arguments)
                ):
                    round_.show(Step(step_id, summary, _PENDING, "waiting for approval"))
                    full = self._tools.approval_text(call.name, call.arguments)
                    approved = await self._approvals.ask(accepted, round_.reply, summary, full)
                round_.show(Step(step_id, summary, StepStatus.IN_PROGRESS, "running"))
                result = await self._tools.call(
                    call.name, call.arguments, toolset=accepted.profile.toolset, approved=approved
                )
            except asyncio.CancelledError:
                round_.show(Step(step_id, summary, StepStatus.ERROR, "stopped"))
                raise
            result = dataclasses.replace(result, text=_within(result.text, share))
            round_.done(step_id, result)
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


def _readable(arguments: str) -> bool:
    try:
        parse_arguments(arguments)
    except ValueError:
        return False
    return True


def _within(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` UTF-8 bytes (at a character), with a note of what was left."""
    data = text.encode()
    if len(data) <= limit:
        return text
    head = data[:limit].decode(errors="ignore")
    return f"{head}\n[cut: {len(text) - len(head):,} more characters]"


class _Round:
    """What an answer's tool rounds have shown and done: the steps still open (ended as "not
    run" however the answer ends) and the calls that completed (remembered with the answer,
    also when it is stopped or fails after them)."""

    def __init__(self, reply: Reply, offered: set[str]) -> None:
        self.reply = reply
        self.offered = offered
        self.uses: list[ToolUse] = []
        self._open: dict[str, Step] = {}

    def show(self, step: Step) -> None:
        self._open[step.id] = step
        _show(self.reply, step)

    def done(self, step_id: str, result: ToolResult) -> None:
        self._open.pop(step_id, None)
        status = StepStatus.ERROR if result.is_error else StepStatus.COMPLETE
        _show(
            self.reply,
            Step(step_id, result.summary, status, "failed" if result.is_error else "done"),
        )
        self.uses.append(
            ToolUse(result.summary, cut(result.text, REMEMBERED_RESULT_CHARS), result.is_error)
        )

    def answered(self, outcome: Outcome) -> Answered:
        return Answered(outcome, tuple(self.uses))

    def end(self) -> None:
        for step in self._open.values():
            if step.status is not StepStatus.ERROR:
                _show(
                    self.reply, dataclasses.replace(step, status=StepStatus.ERROR, detail="not run")
                )
        self._open.clear()


def _unseen_note(images: tuple[str, ...]) -> str:
    """The person's note for images the model could not look at."""
    names = ", ".join(as_written(name) for name in images[:3])
    names += f" and {len(images) - 3} more" if len(images) > 3 else ""
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
