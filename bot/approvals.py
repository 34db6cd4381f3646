"""Approval of tool calls: a call whose tool needs approval (``Toolbox.needs_approval``: not
annotated read-only or non-destructive, nor trusted in MCP_SERVERS_FILE, or named in
``confirm``) runs only after the person who asked presses Approve, whichever replica Slack
hands the click to.

    approvals = Approvals(
        store.approvals, slack, timeout=settings.approval_timeout, metrics=metrics
    )
    approved = await approvals.ask(
        accepted, reply, 'github.create_issue(title="x")', toolbox.approval_text(name, args)
    )
    await approvals.press(ApprovalClick.from_body(body))   # the buttons' action handler

``ask`` posts a message with the call in full (``call``: the tool and every argument, as
``bot.tools`` shows it for approval) and two buttons in the reply's thread, waits up to
``timeout`` seconds for a decision, then edits the message to say what happened (approved by
whom, denied, no answer in time, cancelled) and returns True only on Approve. Only the person
who asked may decide; anyone else who presses is told so in a message only they see.

Across replicas: the click's replica records the decision in Redis (the first one wins), and
the waiting replica polls for it every ``poll_s``; a poll survives a lost pub/sub message and a
reconnect, and costs one GET per waiting call. A click that reaches the waiting replica itself
is also handed over in memory, so it works while Redis is down. A click that reaches another
replica while Redis is down cannot be passed on: the presser is asked to press again (the
buttons stay until the wait ends). Cancelling ``ask`` (Stop, shutdown) ends the wait and edits
the message to "Cancelled". Slack failures are logged; a prompt that could not be posted means
"not approved".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from bot.errors import SlackError, SlackRateLimited
from bot.metrics import Metrics
from bot.render.contract import Reply
from bot.slack import SlackGateway
from bot.store import ApprovalDecisions
from bot.turn.intake import Accepted

log = logging.getLogger(__name__)

APPROVE_ACTION_ID = "approve_tool"
DENY_ACTION_ID = "deny_tool"

ONLY_ASKER_TEXT = "Only the person who asked can approve this."
NOT_PASSED_ON_TEXT = "I couldn't pass your answer on just now. Please press the button again."
ENDED_TEXT = "This request has already ended: {how}."

_SHOW_TRIES = 3  # edits of a prompt's outcome, through 429s
_SHOW_WAIT_S = 10.0  # the longest wait for one
APPROVED, DENIED, TIMEOUT, CANCELLED = "approved", "denied", "timeout", "cancelled"
_VERDICTS = {APPROVE_ACTION_ID: APPROVED, DENY_ACTION_ID: DENIED}
_ENDING_S = 3.0  # how long a cancelled wait may take to record and show that it ended


@dataclass(frozen=True, slots=True)
class ApprovalClick:
    """A press of Approve or Deny: which approval, whose request it is, who pressed, where."""

    approval_id: str
    team: str  # the workspace the approval's decision is kept under
    asker: str
    verdict: str  # APPROVED | DENIED
    user: str
    channel: str
    thread_ts: str | None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ApprovalClick | None:
        """The click in a ``block_actions`` body; None when it has none, or is malformed."""
        actions = [
            a
            for a in body.get("actions") or ()
            if isinstance(a, dict) and a.get("action_id") in _VERDICTS
        ]
        user, container = body.get("user"), body.get("container")
        if not actions or not isinstance(actions[0].get("value"), str):
            return None
        if not isinstance(user, dict) or not isinstance(container, dict):
            return None
        approval_id, asker, team = [*actions[0]["value"].split(":"), "", ""][:3]
        clicker, channel = user.get("id"), container.get("channel_id")
        if not (approval_id and asker and team and isinstance(clicker, str)):
            return None
        if not isinstance(channel, str):
            return None
        thread_ts = container.get("thread_ts")
        return cls(
            approval_id=approval_id,
            team=team,
            asker=asker,
            verdict=_VERDICTS[actions[0]["action_id"]],
            user=clicker,
            channel=channel,
            thread_ts=thread_ts if isinstance(thread_ts, str) else None,
        )


@dataclass(frozen=True, slots=True)
class _Request:
    """One call waiting for approval, and where its message is."""

    id: str
    team: str
    asker: str
    channel: str
    thread_ts: str | None
    summary: str  # one line, plain text: for notifications
    call: str  # the call in full, mrkdwn: what the person approves


class Approvals:
    """Asks the person who asked before a tool call runs; see the module docstring."""

    def __init__(
        self,
        decisions: ApprovalDecisions,
        slack: SlackGateway,
        *,
        timeout: float,
        metrics: Metrics,
        poll_s: float = 0.5,
    ) -> None:
        self._metrics = metrics
        self._decisions = decisions
        self._slack = slack
        self._timeout = timeout
        self._poll_s = poll_s
        self._waiting: dict[str, asyncio.Future[str]] = {}  # approval id -> its decision here

    async def ask(self, accepted: Accepted, reply: Reply, summary: str, call: str) -> bool:
        """Whether the person who asked approved the call within the timeout. ``call`` is the
        call in full as mrkdwn, posted as it is (the prompt and its outcome show it);
        ``summary``, one line of plain text, is the notification's text."""
        inbound = accepted.inbound
        request = _Request(
            id=secrets.token_hex(8),
            team=inbound.team,
            asker=inbound.user,
            channel=inbound.channel,
            thread_ts=accepted.reply_thread,
            summary=summary,
            call=call,
        )
        blocks = _prompt_blocks(request, self._timeout)
        try:
            ts = await self._slack.post(
                request.channel, _prompt_text(request), thread_ts=request.thread_ts, blocks=blocks
            )
        except SlackError as exc:
            log.warning("could not ask for approval of a tool call (%s): not run", exc.error)
            return False
        decided = self._waiting[request.id] = asyncio.get_running_loop().create_future()
        try:
            decision = await self._wait(request, decided)
        except asyncio.CancelledError:
            # Recorded so that a late click elsewhere is told the request ended; bounded: a
            # stop or a shutdown must not wait on a hung store or Slack.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ENDING_S):
                    await self._decisions.decide(request.team, request.id, CANCELLED)
                    await self._show(request, ts, CANCELLED)
            self._metrics.tool_approvals.labels(decision=CANCELLED).inc()
            raise
        finally:
            del self._waiting[request.id]
        await self._show(request, ts, decision)
        verdict = decision.partition(":")[0]
        log.info("tool call %s: %s", request.id, verdict)
        self._metrics.tool_approvals.labels(decision=verdict).inc()
        return decision.startswith(APPROVED + ":")

    async def press(self, click: ApprovalClick) -> None:
        """Record ``click``'s decision if its presser may decide; else tell them they may not."""
        if click.user != click.asker:
            log.info(
                "%s pressed %s on a request of %s: not theirs",
                click.user,
                click.verdict,
                click.asker,
            )
            await self._tell(click, ONLY_ASKER_TEXT)
            return
        decision = f"{click.verdict}:{click.user}"
        standing = await self._decisions.decide(click.team, click.approval_id, decision)
        here = self._waiting.get(click.approval_id)
        if here is not None and not here.done():
            here.set_result(standing or decision)
        elif standing is None:
            # Redis is down and the call waits on another replica: nothing can reach it.
            log.warning(
                "approval %s could not be passed on: Redis is unavailable", click.approval_id
            )
            await self._tell(click, NOT_PASSED_ON_TEXT)
        elif standing in (TIMEOUT, CANCELLED):
            await self._tell(click, ENDED_TEXT.format(how=_ENDINGS[standing]))

    async def _wait(self, request: _Request, decided: asyncio.Future[str]) -> str:
        """The decision: a click handled here, one recorded by any replica, or the timeout
        (unless a decision was recorded first)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while (left := deadline - loop.time()) > 0:
            await asyncio.wait((decided,), timeout=min(self._poll_s, left))
            if decided.done():
                return decided.result()
            found = await self._decisions.decision(request.team, request.id)
            if found is not None:
                return found
        standing = await self._decisions.decide(request.team, request.id, TIMEOUT)
        if decided.done():  # pressed here while the store was down
            return decided.result()
        return standing or TIMEOUT

    async def _show(self, request: _Request, ts: str, decision: str) -> None:
        """Edit the prompt to say how it ended (its buttons go away); a 429 is waited out, up
        to ``_SHOW_TRIES`` times, so a busy workspace does not leave live buttons behind."""
        text = _outcome_text(request, decision)
        for _ in range(_SHOW_TRIES):
            try:
                await self._slack.update(request.channel, ts, text, blocks=[_section(text)])
                return
            except SlackRateLimited as exc:
                await asyncio.sleep(min(exc.retry_after, _SHOW_WAIT_S))
            except SlackError as exc:
                log.warning("could not show the outcome of approval %s: %s", request.id, exc.error)
                return
        log.warning("could not show the outcome of approval %s: still rate limited", request.id)

    async def _tell(self, click: ApprovalClick, text: str) -> None:
        try:
            await self._slack.post_ephemeral(
                click.channel, click.user, text, thread_ts=click.thread_ts
            )
        except SlackError as exc:
            log.info(
                "could not tell %s about approval %s: %s", click.user, click.approval_id, exc.error
            )


_ENDINGS = {TIMEOUT: "no answer in time, not run", CANCELLED: "cancelled, not run"}


def _code(summary: str) -> str:
    """``summary`` as a code span: Slack shows it as written (no links, mentions, formatting)."""
    text = " ".join(summary.split()).replace("`", "'")
    return "`" + text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") + "`"


def _prompt_text(request: _Request) -> str:
    """The notification's text (a push or a desktop banner shows no blocks)."""
    return f":raised_hand: <@{request.asker}>, may I run {_code(request.summary)}?"


def _prompt_section(request: _Request) -> str:
    return f":raised_hand: <@{request.asker}>, may I run this?\n{request.call}"


def _prompt_note(timeout: float) -> str:
    wait = f"{timeout / 60:g} min" if timeout >= 60 else f"{timeout:g} s"
    return f"Only you can answer. Without an answer within {wait}, it is not run."


def _outcome_text(request: _Request, decision: str) -> str:
    # The call stays in full: the thread keeps a record of what was approved or refused.
    verdict, _, user = decision.partition(":")
    call = request.call
    if verdict == APPROVED:
        return f":white_check_mark: Approved by <@{user}>:\n{call}"
    if verdict == DENIED:
        return f":no_entry_sign: Denied by <@{user}> — not run:\n{call}"
    if verdict == CANCELLED:
        return f":black_square_for_stop: Cancelled — not run:\n{call}"
    return f":hourglass: No answer in time — not run:\n{call}"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _prompt_blocks(request: _Request, timeout: float) -> list[dict[str, Any]]:
    """The prompt and its buttons; each button's value names the approval, the person who
    asked and their workspace (Slack returns it as sent: a presser cannot change it)."""
    value = f"{request.id}:{request.asker}:{request.team}"
    return [
        _section(_prompt_section(request)),
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": _prompt_note(timeout)}],
        },
        {
            "type": "actions",
            "block_id": "approval",
            "elements": [
                _button(APPROVE_ACTION_ID, "Approve", value, "primary"),
                _button(DENY_ACTION_ID, "Deny", value, "danger"),
            ],
        },
    ]


def _button(action_id: str, label: str, value: str, style: str) -> dict[str, Any]:
    return {
        "type": "button",
        "action_id": action_id,
        "text": {"type": "plain_text", "text": label},
        "value": value,
        "style": style,
    }
