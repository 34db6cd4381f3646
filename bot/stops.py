"""The Stop button: a click by someone allowed to stop reaches the reply it names, whichever
replica streams it.

stops = StopSignals(store.stops, slack, admins_may_stop=False)
pressed = stops.register(reply.id)      # an asyncio.Event, set when someone presses Stop
await stops.press(StopClick.from_body(body))  # the button's action handler: checked, relayed
task = asyncio.create_task(stops.run()) # relays clicks handled by other replicas

Only the person who asked may stop an answer (with ``admins_may_stop``, workspace admins and
owners too); anyone else who presses it is told so in a message only they see.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from bot.errors import SlackError
from bot.render.reply import STOP_ACTION_ID
from bot.slack import SlackGateway
from bot.store import StopRelay

log = logging.getLogger(__name__)

ONLY_ASKER_TEXT = "Only the person who asked can stop this answer."
_ADMIN_CACHE_S = 600.0


@dataclass(frozen=True, slots=True)
class StopClick:
    """A click on a Stop button: which reply, who asked for it ('' : not recorded, a button of
    an older version), who clicked, where."""

    reply_id: str
    asker: str
    user: str
    team: str
    channel: str
    thread_ts: str | None

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> StopClick | None:
        """The Stop click in a ``block_actions`` body; None when it has none, or is malformed."""
        values = [
            a.get("value")
            for a in body.get("actions") or ()
            if isinstance(a, dict) and a.get("action_id") == STOP_ACTION_ID
        ]
        user, container = body.get("user"), body.get("container")
        team = body.get("team")
        if not values or not isinstance(values[0], str) or not isinstance(user, dict):
            return None
        container = container if isinstance(container, dict) else {}
        reply_id, _, asker = values[0].partition(":")
        clicker, channel = user.get("id"), container.get("channel_id")
        if not (reply_id and isinstance(clicker, str) and isinstance(channel, str)):
            return None
        thread_ts = container.get("thread_ts")
        return cls(
            reply_id=reply_id,
            asker=asker,
            user=clicker,
            team=str(team.get("id") if isinstance(team, dict) else user.get("team_id") or ""),
            channel=channel,
            thread_ts=thread_ts if isinstance(thread_ts, str) else None,
        )


class StopSignals:
    """Stop events of the replies this process streams."""

    def __init__(
        self, relay: StopRelay, slack: SlackGateway, *, admins_may_stop: bool = False
    ) -> None:
        self._relay = relay
        self._slack = slack
        self._admins_may_stop = admins_may_stop
        self._admins: dict[str, tuple[float, bool]] = {}  # user -> (until, is admin)
        self._local: dict[str, asyncio.Event] = {}

    def register(self, reply_id: str) -> asyncio.Event:
        return self._local.setdefault(reply_id, asyncio.Event())

    def unregister(self, reply_id: str) -> None:
        self._local.pop(reply_id, None)

    async def press(self, click: StopClick) -> bool:
        """Stop the reply if ``click.user`` may; else tell them they may not. True if stopped."""
        if not await self._may_stop(click):
            log.info(
                "%s pressed Stop on an answer to %s: not theirs to stop", click.user, click.asker
            )
            try:
                await self._slack.post_ephemeral(
                    click.channel, click.user, ONLY_ASKER_TEXT, thread_ts=click.thread_ts
                )
            except SlackError as exc:
                log.info("could not tell %s they may not stop: %s", click.user, exc.error)
            return False
        await self.request(click.reply_id)
        return True

    async def request(self, reply_id: str) -> None:
        """Stop ``reply_id`` here at once, and on every other replica through Redis."""
        self._set(reply_id)
        if reply_id in self._local:
            return
        if not await self._relay.publish(reply_id):
            log.warning("Stop for reply %s could not be relayed: Redis is unavailable", reply_id)

    async def run(self) -> None:
        async for reply_id in self._relay.requests():
            self._set(reply_id)

    def _set(self, reply_id: str) -> None:
        event = self._local.get(reply_id)
        if event is not None:
            event.set()

    async def _may_stop(self, click: StopClick) -> bool:
        if not click.asker or click.user == click.asker:
            return True
        return self._admins_may_stop and await self._is_admin(click.user)

    async def _is_admin(self, user: str) -> bool:
        """Whether ``user`` is a workspace admin or owner (asked of Slack, kept for a while)."""
        now = time.monotonic()
        known = self._admins.get(user)
        if known is not None and known[0] > now:
            return known[1]
        try:
            profile = await self._slack.user(user)
        except SlackError as exc:
            log.info("could not tell whether %s is an admin: %s", user, exc.error)
            return False
        admin = bool(profile.get("is_admin") or profile.get("is_owner"))
        self._admins[user] = (now + _ADMIN_CACHE_S, admin)
        return admin
