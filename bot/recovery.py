"""Replies in flight survive their process: each is registered in Redis with what it shows and
its owner's heartbeat; any replica finishes the replies of an owner that died (``kill -9``,
OOM, lost node) so no message stays "writing…" — and never overwrites an answer that already
shows its final form (a reply is marked final before its final delivery, and an edited reply's
message is read back from Slack before it is touched).

    inflight = InFlight(store.inflight, slack, recall, owner="host-1234", lease_s=30)
    reply = ReplyStream(..., tracker=inflight)
    task = asyncio.create_task(inflight.run())    # heartbeat; sweeps at start and periodically

A reply whose message Slack would not show (rate-limited, down) is put back and tried again at
the next sweep, until its record expires.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from typing import Any

from bot.errors import SlackError
from bot.recall import Recall
from bot.render.contract import Outcome, TrackedReply
from bot.render.reply import FAILED_TEXT, INDICATOR_BLOCK_ID, PLACEHOLDER, final_blocks
from bot.render.text import render_final, split
from bot.slack import SlackGateway
from bot.store import InFlightRegistry

log = logging.getLogger(__name__)

# A native message holds more than chat.update takes: what fits is kept, marked as cut.
_RECOVERED_LIMIT = 2900


def new_owner_id() -> str:
    """A name for this process that no other (past or present) shares."""
    return f"{socket.gethostname()}-{secrets.token_hex(4)}"


class InFlight:
    """The registry of this process's replies in flight, and the finisher of orphaned ones."""

    def __init__(
        self,
        registry: InFlightRegistry,
        slack: SlackGateway,
        recall: Recall,
        *,
        owner: str,
        lease_s: float,
    ) -> None:
        self._registry = registry
        self._slack = slack
        self._recall = recall
        self.owner = owner
        self._lease = lease_s
        self._records: dict[str, dict[str, Any]] = {}  # by reply id: what it was last said to show
        self.swept = asyncio.Event()  # set once a sweep has run (tests wait for the first)

    async def shown(self, reply: TrackedReply, ts: str, rendered: str) -> None:
        record: dict[str, Any] = {
            "native": reply.native,
            "owner": self.owner,
            "team": reply.team,
            "channel": reply.channel,
            "thread_ts": reply.thread_ts,
            "ts": ts,
            "text": "" if rendered == PLACEHOLDER else rendered,
        }
        self._records[reply.id] = record
        await self._registry.track(reply.id, record)

    async def finishing(self, reply: TrackedReply) -> None:
        record = self._records.get(reply.id)
        if record is not None:
            record = self._records[reply.id] = {**record, "native": reply.native, "final": True}
            await self._registry.track(reply.id, record)

    async def closed(self, reply: TrackedReply) -> None:
        self._records.pop(reply.id, None)
        await self._registry.untrack(reply.id)

    async def run(self) -> None:
        """Heartbeat every third of the lease; sweep for orphans at once and every lease (in a
        task of its own: a slow sweep must not let this process's lease lapse)."""
        beats = 0
        sweeper: asyncio.Task[int] | None = None
        try:
            while True:
                alive = await self._registry.heartbeat(self.owner, self._lease)
                if alive and beats % 3 == 0 and (sweeper is None or sweeper.done()):
                    sweeper = asyncio.create_task(self.sweep(), name="in-flight-sweep")
                beats += 1
                await asyncio.sleep(self._lease / 3)
        finally:
            if sweeper is not None:
                sweeper.cancel()
                await asyncio.gather(sweeper, return_exceptions=True)

    async def sweep(self) -> int:
        """Finish every orphaned reply; returns how many were finished."""
        finished = 0
        for reply_id, record in await self._registry.orphans():
            outcome = await self._finish(record)
            if outcome is None:
                await self._registry.track(reply_id, record)  # tried again at the next sweep
            elif outcome:
                finished += 1
        self.swept.set()
        return finished

    async def _finish(self, record: dict[str, Any]) -> bool | None:
        """Give an orphaned reply its last form: True when done, False when there was nothing
        to do (it shows its last form already, or is gone), None when Slack would not say."""
        channel, ts = record.get("channel"), record.get("ts")
        if not isinstance(channel, str) or not isinstance(ts, str):
            return False
        thread_ts = record.get("thread_ts")
        text = str(record.get("text") or "")
        if record.get("native"):
            # The stream may still be open (chat.update would fail): close it; its Markdown is
            # shown as the edit renderer shows text.
            try:
                await self._slack.stop_stream(channel, ts)
            except SlackError as exc:
                log.info("orphaned native stream %s/%s not closed: %s", channel, ts, exc.error)
            if record.get("final"):
                return True  # its final text was being sent: what the stream shows stays
            head, tail = split(text, _RECOVERED_LIMIT)
            text = render_final(head) + ("\n…" if tail else "") if head.strip() else ""
        else:
            readable, message = await self._recall.message(
                str(record.get("team") or ""),
                channel,
                ts,
                thread_ts=thread_ts if isinstance(thread_ts, str) else None,
            )
            if not readable:
                return None
            if message is None or not _shows_working(message):
                log.info("a reply left in flight in %s already shows its last form", channel)
                return False
        note = Outcome.SHUTDOWN.note or FAILED_TEXT
        # The text the user saw stays, with the note under it; a bare placeholder becomes the note.
        rendered, under = (text, note) if text else (note, None)
        for attempt in range(3):
            try:
                await self._slack.update(
                    channel, ts, rendered, blocks=final_blocks(rendered, under)
                )
            except SlackError as exc:
                log.warning("could not finish orphaned reply %s/%s: %s", channel, ts, exc.error)
                await asyncio.sleep(1.0 + attempt)
                continue
            log.info("finished a reply left in flight by %s in %s", record.get("owner"), channel)
            return True
        return None


def _shows_working(message: dict[str, Any]) -> bool:
    """Whether a message still shows the working indicator (its interim form)."""
    blocks = message.get("blocks")
    return isinstance(blocks, list) and any(
        isinstance(b, dict) and b.get("block_id") == INDICATOR_BLOCK_ID for b in blocks
    )
