"""Per-thread locks: one answer at a time in a thread, across replicas, with a lease that a dead
holder's lock runs out of.

    locks = ThreadLocks(guard, KeySchema())
    async with locks.hold(key):
        ...                        # the thread's turn: read history, answer, save

While Redis is unavailable a lock degrades to no lock (answers may then overlap).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bot.conversation import ThreadKey
from bot.errors import StoreUnavailable
from bot.store.guard import Guard
from bot.store.keys import KeySchema

log = logging.getLogger("bot.store")

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class ThreadLocks:
    """Leased locks on threads, renewed while held."""

    def __init__(self, guard: Guard, keys: KeySchema) -> None:
        self._guard = guard
        self._keys = keys
        self._release = guard.redis.register_script(_RELEASE_LUA)
        self._renew = guard.redis.register_script(_RENEW_LUA)

    @asynccontextmanager
    async def hold(
        self, key: ThreadKey, *, lease_s: float = 30.0, wait_s: float = 600.0, poll_s: float = 0.05
    ) -> AsyncIterator[None]:
        """Hold the thread's lock; the lease is renewed while held and expires if the holder dies."""
        name = self._keys.lock(key)
        token = secrets.token_hex(8)
        lease_ms = int(lease_s * 1000)
        held = await self._acquire(name, token, lease_ms, wait_s, poll_s)
        renewer = asyncio.create_task(self._keep(name, token, lease_ms)) if held else None
        try:
            yield
        finally:
            if renewer is not None:
                renewer.cancel()
                # A release that fails leaves the lease to expire by itself.
                await self._guard.attempt(
                    lambda r: self._release(keys=[name], args=[token], client=r), "unlock", None
                )

    async def _acquire(
        self, name: str, token: str, lease_ms: int, wait_s: float, poll_s: float
    ) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        delay = poll_s
        while True:
            try:
                if await self._guard.run(
                    lambda r: r.set(name, token, nx=True, px=lease_ms), "lock"
                ):
                    return True
            except StoreUnavailable:
                return False
            if loop.time() >= deadline:
                log.warning("gave up waiting for thread lock %s after %.0f s", name, wait_s)
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    async def _keep(self, name: str, token: str, lease_ms: int) -> None:
        while True:
            await asyncio.sleep(lease_ms / 3000)
            await self._guard.attempt(
                lambda r: self._renew(keys=[name], args=[token, lease_ms], client=r), "renew", None
            )
