"""The Stop button: a click reaches the reply it names, whichever replica streams it.

stops = StopSignals(store.stops)
pressed = stops.register(reply.id)      # an asyncio.Event, set when someone presses Stop
await stops.request(reply_id)           # from the button's action handler
task = asyncio.create_task(stops.run()) # relays clicks handled by other replicas
"""

from __future__ import annotations

import asyncio
import logging

from bot.store import StopRelay

log = logging.getLogger(__name__)


class StopSignals:
    """Stop events of the replies this process streams."""

    def __init__(self, relay: StopRelay) -> None:
        self._relay = relay
        self._local: dict[str, asyncio.Event] = {}

    def register(self, reply_id: str) -> asyncio.Event:
        return self._local.setdefault(reply_id, asyncio.Event())

    def unregister(self, reply_id: str) -> None:
        self._local.pop(reply_id, None)

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
