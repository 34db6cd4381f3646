"""Replies in flight survive their process: each is registered in Redis with what it shows and
its owner's heartbeat; any replica finishes the replies of an owner that died (``kill -9``,
OOM, lost node) so no message stays "writing…".

    inflight = InFlight(store, slack, owner="host-1234", lease_s=30)
    reply = ReplyStream(..., tracker=inflight)
    task = asyncio.create_task(inflight.run())    # heartbeat + sweep at start and periodically
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from typing import Any

from bot.errors import SlackError, StoreUnavailable
from bot.render.reply import FAILED_TEXT, PLACEHOLDER, Outcome, TrackedReply, final_blocks
from bot.render.text import render_final, split
from bot.slack import SlackGateway
from bot.store import Store

log = logging.getLogger(__name__)

# A native message holds more than chat.update takes: what fits is kept, marked as cut.
_RECOVERED_LIMIT = 2900


def new_owner_id() -> str:
    """A name for this process that no other (past or present) shares."""
    return f"{socket.gethostname()}-{secrets.token_hex(4)}"


class InFlight:
    """The registry of this process's replies in flight, and the finisher of orphaned ones."""

    def __init__(self, store: Store, slack: SlackGateway, *, owner: str, lease_s: float) -> None:
        self._store = store
        self._slack = slack
        self.owner = owner
        self._lease = lease_s

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
        try:
            await self._store.track_reply(reply.id, record)
        except StoreUnavailable:
            pass

    async def closed(self, reply: TrackedReply) -> None:
        try:
            await self._store.untrack_reply(reply.id)
        except StoreUnavailable:
            pass

    async def run(self) -> None:
        """Heartbeat every third of the lease; sweep for orphans at once and every lease."""
        beats = 0
        while True:
            try:
                await self._store.heartbeat(self.owner, self._lease)
                if beats % 3 == 0:
                    await self.sweep()
            except StoreUnavailable:
                pass
            beats += 1
            await asyncio.sleep(self._lease / 3)

    async def sweep(self) -> int:
        """Finish every orphaned reply; returns how many were finished."""
        finished = 0
        for record in await self._store.orphaned_replies():
            if await self._finish(record):
                finished += 1
        return finished

    async def _finish(self, record: dict[str, Any]) -> bool:
        channel, ts = record.get("channel"), record.get("ts")
        if not isinstance(channel, str) or not isinstance(ts, str):
            return False
        text = str(record.get("text") or "")
        if record.get("native"):
            # The stream may still be open (chat.update would fail): close it; its Markdown is
            # shown as the edit renderer shows text.
            head, tail = split(text, _RECOVERED_LIMIT)
            text = render_final(head) + ("\n…" if tail else "") if head.strip() else ""
            try:
                await self._slack.stop_stream(channel, ts)
            except SlackError as exc:
                log.info("orphaned native stream %s/%s not closed: %s", channel, ts, exc.error)
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
        return False
