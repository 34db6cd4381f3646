"""Which renderer an answer gets, with its fallback and its status line: the one place that
knows both renderers.

    replies = Replies(slack, budget, edits=EditOptions(...), native=NativeStreaming(...))
    reply = replies.new(team="T1", channel="C1", thread_ts="17.1", asker="U1", is_dm=False)
    async with reply: ...                   # a Reply (bot/render/contract.py)

A native stream where one may be used (``STREAM_MODE`` ``native`` or ``auto``, a thread, a known
reader), else edits; a native stream that cannot do the job hands the answer to the edit
renderer itself (bot/render/native.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bot.metrics import Metrics
from bot.render.budget import EditBudget
from bot.render.contract import NoTracker, Reply, ReplyTracker
from bot.render.native import NativeAvailability, NativeReply
from bot.render.reply import ReplyStream
from bot.render.status import ThreadStatus
from bot.render.text import render, render_final, split
from bot.slack import SlackGateway


@dataclass(frozen=True, slots=True)
class EditOptions:
    """How the edit renderer writes: ``limit`` characters a message, the final delivery
    retried for ``final_deadline`` seconds, a Stop button, 👍/👎 under complete answers."""

    limit: int
    final_deadline: float = 120.0
    stop_button: bool = True
    feedback: bool = False


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
    step_keepalive: float = 10.0  # a running step's card is sent again this often
    call_timeout: float = 5.0


class Replies:
    """Makes the renderer of each answer; one instance serves the process."""

    def __init__(
        self,
        slack: SlackGateway,
        budget: EditBudget,
        *,
        edits: EditOptions,
        native: NativeStreaming | None = None,
        tracker: ReplyTracker | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._slack = slack
        self._budget = budget
        self._edits = edits
        self._native = native
        self._tracker = tracker or NoTracker()
        self._metrics = metrics
        self._availability = NativeAvailability()

    def new(
        self,
        *,
        team: str,
        channel: str,
        thread_ts: str | None,
        asker: str,
        asker_team: str = "",
        is_dm: bool = False,
    ) -> Reply:
        """The renderer for one answer to ``asker`` in ``thread_ts`` (None: the top level)."""
        native = self._native
        # Slack streams only into threads; outside DMs it needs to know who reads the stream.
        if native is None or thread_ts is None or not (is_dm or asker):
            return self._edit_reply(team, channel, thread_ts, asker)
        auto = native.mode == "auto"
        if auto and self._availability.refused(team, channel):
            return self._edit_reply(team, channel, thread_ts, asker)
        status = None
        if is_dm and native.status:
            status = ThreadStatus(
                self._slack, channel, thread_ts, text=native.status, refresh_s=native.status_refresh
            )
        root = thread_ts
        return NativeReply(
            self._slack,
            appends=native.appends,
            starts=native.starts,
            team=team,
            channel=channel,
            thread_ts=root,
            recipient=None if is_dm else (asker, asker_team or team),
            fallback=lambda reply_id: self._edit_reply(team, channel, root, asker, reply_id),
            status=status,
            availability=self._availability if auto else None,
            # ``native`` waits a little for a start token; ``auto`` edits at once instead.
            start_wait=0.0 if auto else 3.0,
            final_deadline=self._edits.final_deadline,
            call_timeout=native.call_timeout,
            step_keepalive=native.step_keepalive,
            feedback=self._edits.feedback,
            tracker=self._tracker,
            metrics=self._metrics,
        )

    def _edit_reply(
        self,
        team: str,
        channel: str,
        thread_ts: str | None,
        asker: str,
        reply_id: str | None = None,
    ) -> ReplyStream:
        return ReplyStream(
            self._slack,
            self._budget,
            team=team,
            channel=channel,
            thread_ts=thread_ts,
            limit=self._edits.limit,
            render=render,
            render_final=render_final,
            split=split,
            final_deadline=self._edits.final_deadline,
            stop_button=self._edits.stop_button,
            asker=asker,
            feedback=self._edits.feedback,
            tracker=self._tracker,
            metrics=self._metrics,
            reply_id=reply_id,
        )
