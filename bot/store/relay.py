"""The Stop relay: a Stop click handled by one replica reaches the replica that streams the reply.

relay = StopRelay(guard, KeySchema())
await relay.publish(reply_id)                # False: Redis is down, not relayed
async for reply_id in relay.requests(): ...  # every replica's clicks; reconnects by itself
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from bot.store.guard import REDIS_FAILURES, Guard
from bot.store.keys import KeySchema

log = logging.getLogger("bot.store")

QUIET_S = 5.0  # silence on the subscription before it is pinged
PONG_S = 3.0  # how long a pong may take before the subscription is made again
_RECONNECT_ON: tuple[type[BaseException], ...] = (*REDIS_FAILURES, TimeoutError)


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
        """Reply ids whose Stop was pressed, from any replica; reconnects after an outage, and
        when the subscription goes deaf: a server that stopped answering (frozen, or a master
        that Sentinel replaced) keeps the socket open but says nothing, so after ``QUIET_S`` of
        silence the subscription is pinged, and without a pong within ``PONG_S`` it is made
        again (on the new master, for Sentinel)."""
        loop = asyncio.get_running_loop()
        while True:
            pubsub = self._guard.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                heard, pinged = loop.time(), None
                while True:
                    message = await self._guard.uncancellable(pubsub.get_message(timeout=1.0))
                    now = loop.time()
                    if message:
                        heard, pinged = now, None
                        if message.get("type") == "message":
                            data = message["data"]
                            yield data.decode() if isinstance(data, bytes) else str(data)
                    elif pinged is not None and now - pinged > PONG_S:
                        raise TimeoutError("the Stop subscription went deaf")
                    elif pinged is None and now - heard > QUIET_S:
                        await self._guard.uncancellable(pubsub.ping())
                        pinged = now
            except _RECONNECT_ON as exc:
                log.info("Stop relay: subscribing again (%s)", type(exc).__name__)
                await asyncio.sleep(1.0)  # the store's other calls report an outage
            finally:
                await self._guard.settle()  # a get_message abandoned by a cancellation
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except REDIS_FAILURES:
                    pass
