"""The Stop relay: a Stop click handled by one replica reaches the replica that streams the reply.

relay = StopRelay(guard, KeySchema())
await relay.publish(reply_id)                # False: Redis is down, not relayed
async for reply_id in relay.requests(): ...  # every replica's clicks; reconnects by itself
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from bot.store.guard import REDIS_FAILURES, Guard
from bot.store.keys import KeySchema


class StopRelay:
    """Stop requests over Redis pub/sub."""

    def __init__(self, guard: Guard, keys: KeySchema) -> None:
        self._guard = guard
        self._channel = keys.stop_channel

    async def publish(self, reply_id: str) -> bool:
        """Tell every replica that ``reply_id`` should stop; False when it could not be sent."""
        sent = await self._guard.attempt(lambda r: r.publish(self._channel, reply_id), "stop", None)
        return sent is not None

    async def requests(self) -> AsyncIterator[str]:
        """Reply ids whose Stop was pressed, from any replica; reconnects after an outage."""
        while True:
            pubsub = self._guard.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                while True:
                    message = await self._guard.uncancellable(pubsub.get_message(timeout=1.0))
                    if message and message.get("type") == "message":
                        data = message["data"]
                        yield data.decode() if isinstance(data, bytes) else str(data)
            except REDIS_FAILURES:
                await asyncio.sleep(1.0)  # the store's other calls report the outage
            finally:
                await self._guard.settle()  # a get_message abandoned by a cancellation
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except REDIS_FAILURES:
                    pass
