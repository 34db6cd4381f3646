"""The contract both reply renderers keep (edits: bot/render/reply.py; Slack's native streams:
bot/render/native.py), so the turn never asks which one it holds.

    reply = replies.new(...)                # bot/render/factory.py picks the renderer
    async with reply:                       # something shows at once
        reply.step(Step("t1", "Searching the wiki", StepStatus.IN_PROGRESS))
        async for delta in answer:
            reply.append(delta)             # synchronous and O(1): never waits on Slack
        finished = await reply.finish(Outcome.COMPLETE)
    finished.text, finished.outcome, finished.message_ts

Leaving the ``async with`` block any other way than through ``finish`` gives the reply its last
form too (an exception: ``FAILED``; a cancellation: ``SHUTDOWN``), so no exit path leaves a
message showing the working indicator. ``finish`` returns one frozen :class:`Finished`: the
outcome in it is the one the person sees, which may differ from the one asked for (the person
pressed Slack's own stop: ``STOPPED``).

States: NEW → OPEN → CLOSING → CLOSED; ``append`` and ``step`` are legal only while OPEN.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import secrets
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from bot.metrics import Metrics


class Outcome(enum.Enum):
    """How the model stream ended, i.e. which note the final message carries."""

    COMPLETE = "complete"
    INTERRUPTED = "interrupted"  # error, disconnect, truncation or idle mid-answer
    STOPPED = "stopped"  # a person pressed Stop
    FAILED = "failed"  # nothing usable came from the model, or the turn failed
    SHUTDOWN = "shutdown"  # the bot is stopping

    @property
    def note(self) -> str | None:
        """The note under a partial answer (``FAILED`` after some text reads "interrupted")."""
        return _NOTES.get(self)

    @classmethod
    def on_exit(cls, exc_type: type[BaseException] | None) -> Outcome:
        """How a reply left open by its ``async with`` block ends: complete, failed, or (when
        cancelled) interrupted by shutdown."""
        if exc_type is None:
            return cls.COMPLETE
        if issubclass(exc_type, asyncio.CancelledError):
            return cls.SHUTDOWN
        return cls.FAILED


_NOTES = {
    Outcome.INTERRUPTED: ":warning: _The answer was interrupted._",
    Outcome.FAILED: ":warning: _The answer was interrupted._",
    Outcome.STOPPED: ":black_square_for_stop: _Stopped._",
    Outcome.SHUTDOWN: ":warning: _Interrupted while the bot restarted — please ask again._",
}


class State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


#: How long a step's change waits before it is shown on its own: a tool that answers sooner
#: shows no separate update (its steps ride along with the next text), so fast tools do not
#: spend the message's update slot just before the text that follows them.
STEP_GRACE = 0.3


class ReplyStateError(RuntimeError):
    """A reply method was called in a state that does not allow it (a bug in the caller)."""


class StepStatus(enum.Enum):
    """Where one step of the work (a tool call) stands; the values are Slack's task states."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Step:
    """One step shown while the answer is being worked on: ``title`` names it in a line a
    person can read (never a secret); a later ``Step`` with the same ``id`` updates it."""

    id: str
    title: str
    status: StepStatus
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Finished:
    """What a reply ended as: the model's text (Markdown), the outcome the person sees, and
    the reply's messages in order."""

    text: str
    outcome: Outcome
    message_ts: tuple[str, ...]

    @property
    def first_ts(self) -> str | None:
        return self.message_ts[0] if self.message_ts else None


class TrackedReply(Protocol):
    """What a tracker needs to know of a reply."""

    @property
    def id(self) -> str: ...

    @property
    def native(self) -> bool: ...  # streamed natively: ``rendered`` is then Markdown

    @property
    def team(self) -> str: ...

    @property
    def channel(self) -> str: ...

    @property
    def thread_ts(self) -> str | None: ...


class ReplyTracker(Protocol):
    """Told what a reply's current message shows, so another process can finish it if this one
    dies (see bot/recovery.py). Must not raise."""

    async def shown(self, reply: TrackedReply, ts: str, rendered: str) -> None: ...

    async def finishing(self, reply: TrackedReply) -> None:
        """The reply's final form is about to be delivered: a reply found in flight after this
        may already show it, and must not be overwritten."""

    async def closed(self, reply: TrackedReply) -> None: ...


class NoTracker:
    """A tracker that keeps nothing (one process, tests)."""

    async def shown(self, reply: TrackedReply, ts: str, rendered: str) -> None:
        return None

    async def finishing(self, reply: TrackedReply) -> None:
        return None

    async def closed(self, reply: TrackedReply) -> None:
        return None


class Reply(Protocol):
    """One answer on its way to Slack; see the module docstring."""

    @property
    def id(self) -> str: ...

    @property
    def native(self) -> bool: ...

    @property
    def outcome(self) -> Outcome | None:
        """How the answer ended, once finishing started."""
        ...

    @property
    def stopped(self) -> asyncio.Event:
        """Set when the person stopped the answer from Slack's side (a native stream's stop)."""
        ...

    @property
    def text(self) -> str:
        """Everything the model has written so far (Markdown)."""
        ...

    @property
    def message_ts(self) -> list[str]:
        """The reply's messages so far, in order."""
        ...

    async def open(self) -> None: ...

    def append(self, delta: str) -> None: ...

    def step(self, step: Step) -> None: ...

    async def finish(self, outcome: Outcome) -> Finished: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class BaseReply(abc.ABC):
    """The lifecycle both renderers share: states, the model's text, closing exactly once on
    every exit path, and the first-token-to-visible metric. A renderer implements ``open``,
    ``_took`` (new text or steps arrived) and ``_close`` (deliver the last form)."""

    native = False

    def __init__(
        self,
        *,
        team: str,
        channel: str,
        thread_ts: str | None,
        tracker: ReplyTracker | None = None,
        metrics: Metrics | None = None,
        reply_id: str | None = None,
    ) -> None:
        self.id = reply_id or secrets.token_hex(6)
        self.state = State.NEW
        self.outcome: Outcome | None = None  # how the answer ended, once finishing started
        self.stopped = asyncio.Event()
        self._team = team
        self._channel = channel
        self._thread_ts = thread_ts
        self._tracker: ReplyTracker = tracker or NoTracker()
        self._metrics = metrics
        self._chunks: list[str] = []  # every delta, in order; joined whole only at the end
        self._steps: dict[str, Step] = {}  # by id, in the order first shown
        self._first_token_at: float | None = None  # monotonic; None until visible text
        self._closing = asyncio.Event()
        self._closer: asyncio.Task[None] | None = None
        self._step_timer: asyncio.TimerHandle | None = None

    @property
    def team(self) -> str:
        return self._team

    @property
    def channel(self) -> str:
        return self._channel

    @property
    def thread_ts(self) -> str | None:
        return self._thread_ts

    @property
    def text(self) -> str:
        return "".join(self._chunks)

    @property
    @abc.abstractmethod
    def message_ts(self) -> list[str]: ...

    @abc.abstractmethod
    async def open(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.state is State.OPEN:
            self._start_closing(Outcome.on_exit(exc_type))
        if self._closer is not None:
            # Even when this task is being cancelled, the reply's last form is delivered.
            await asyncio.shield(self._closer)

    def append(self, delta: str) -> None:
        """Add model text; cheap and synchronous (the renderer's flusher picks it up)."""
        if self.state is not State.OPEN:
            raise ReplyStateError(f"append() while {self.state.value}")
        if not delta:
            return
        if not self._chunks and self._metrics is not None:
            self._first_token_at = time.monotonic()
        self._chunks.append(delta)
        self._took(delta)

    def step(self, step: Step) -> None:
        """Show a step of the work (new, or an update of one with the same id)."""
        if self.state is not State.OPEN:
            raise ReplyStateError(f"step() while {self.state.value}")
        if self._steps.get(step.id) == step:
            return
        self._steps[step.id] = step
        self._stepped(step)
        if self._step_timer is None:
            self._step_timer = asyncio.get_running_loop().call_later(STEP_GRACE, self._steps_due)

    def _steps_due(self) -> None:
        self._step_timer = None
        if self.state is State.OPEN:
            self._show_steps()

    async def finish(self, outcome: Outcome) -> Finished:
        """Deliver the final form; never raises ``SlackError`` (what cannot be delivered is
        logged, naming the thread). Returns what the reply ended as."""
        if self.state is State.NEW:
            self.state = State.CLOSED
            self.outcome = outcome
            return Finished("", outcome, ())
        if self._closer is None:
            if self.state is not State.OPEN:
                raise ReplyStateError(f"finish() while {self.state.value}")
            self._start_closing(outcome)
        assert self._closer is not None
        await asyncio.shield(self._closer)
        return Finished(self.text, self.outcome or outcome, tuple(self.message_ts))

    def _start_closing(self, outcome: Outcome) -> None:
        if self._step_timer is not None:
            self._step_timer.cancel()
            self._step_timer = None
        self.outcome = outcome
        self.state = State.CLOSING
        self._closing.set()
        self._took("")
        self._closer = asyncio.create_task(self._close(outcome), name=f"reply-{self.id}-final")

    @abc.abstractmethod
    def _took(self, delta: str) -> None:
        """Text was appended (``""``: closing started): wake whatever sends it."""

    @abc.abstractmethod
    def _stepped(self, step: Step) -> None:
        """A step was added or changed (it shows with the next update, or ``_show_steps``)."""

    @abc.abstractmethod
    def _show_steps(self) -> None:
        """Steps changed ``STEP_GRACE`` ago and have not gone out with text since: send them."""

    @abc.abstractmethod
    async def _close(self, outcome: Outcome) -> None:
        """Deliver the reply's last form and set ``state`` to CLOSED, however that goes."""

    def _text_visible(self) -> None:
        """The first model text is on screen: record how long that took after the first token."""
        if self._first_token_at is not None and self._metrics is not None:
            self._metrics.first_token_to_visible.observe(time.monotonic() - self._first_token_at)
            self._first_token_at = None

    @property
    def _where(self) -> str:
        return f"{self._team}/{self._channel}/{self._thread_ts or 'top'}"
