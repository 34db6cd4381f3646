"""The store's one outage policy: every Redis call goes through ``Guard``, which translates Redis
failures, tracks health and says so once per outage.

    guard = Guard(connect_redis("redis://localhost:6379/0"))   # bot/store/client.py
    turns = await guard.run(lambda r: r.lrange(name, 0, -1), "history")     # StoreUnavailable
    await guard.attempt(lambda r: r.set(name, "1"), "engage", None)         # None while down

Each concern of the store (bot/store/*.py) picks, per operation, what an outage means for it:
``run`` raises ``StoreUnavailable`` (only inside the store package: its concerns turn that into
their documented degraded answer), ``attempt`` returns a stated default. Nothing outside the
package catches a Redis error. The first failure of an outage is logged as one warning, the
recovery as one info line; ``on_recovery`` callbacks run once the store answers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisClusterException, RedisError

from bot.errors import StoreUnavailable

log = logging.getLogger("bot.store")
T = TypeVar("T")

#: What a Redis call may raise while the server is down or unreachable (a cluster's errors are
#: not RedisErrors: a slot no node covers, a cluster nobody answers for).
REDIS_FAILURES: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, OSError)


class Guard:
    """The one way the store's concerns reach Redis."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._down = False
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._recovery_hooks: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._hook_tasks: set[asyncio.Task[None]] = set()

    @property
    def healthy(self) -> bool:
        """False from the first failed call of an outage until a call succeeds again."""
        return not self._down

    def on_recovery(self, hook: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``hook`` (in the background) each time the store answers again after an outage."""
        self._recovery_hooks.append(hook)

    async def run(self, op: Callable[[aioredis.Redis], Awaitable[T]], what: str) -> T:
        """``op(redis)``; raises ``StoreUnavailable`` naming ``what`` when Redis fails."""
        try:
            result = await self.uncancellable(op(self.redis))
        except REDIS_FAILURES as exc:
            if not self._down:
                self._down = True
                log.warning(
                    "Redis unavailable (%s during %s); answering from Slack and this process's "
                    "memory until it is back",
                    type(exc).__name__,
                    what,
                )
            raise StoreUnavailable(what) from exc
        if self._down:
            self._down = False
            log.info("Redis reachable again")
            for hook in self._recovery_hooks:
                task = asyncio.create_task(hook())
                self._hook_tasks.add(task)
                task.add_done_callback(self._hook_tasks.discard)
        return result

    async def attempt(
        self, op: Callable[[aioredis.Redis], Awaitable[T]], what: str, default: T
    ) -> T:
        """``op(redis)``, or ``default`` while Redis is unavailable (the outage is logged once)."""
        try:
            return await self.run(op, what)
        except StoreUnavailable:
            return default

    async def ping(self) -> bool:
        return bool(await self.attempt(lambda r: r.ping(), "ping", False))

    async def uncancellable(self, call: Awaitable[T]) -> T:
        """Await a redis-py call that a cancellation cannot interrupt midway.

        redis-py 8 can lose a cancellation that lands inside a command (the task then waits
        forever, e.g. at shutdown) and leave the connection unusable. Shielded, the command
        finishes by itself (bounded by the socket timeouts) while the caller is cancelled at
        once; ``settle`` waits for such commands.
        """
        task = asyncio.ensure_future(call)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._abandoned.add(task)
            task.add_done_callback(self._forget)
            raise

    async def settle(self) -> None:
        """Let commands abandoned by cancelled callers (and recovery hooks) finish."""
        pending = self._abandoned | self._hook_tasks
        if pending:
            await asyncio.wait(pending, timeout=5.0)

    async def aclose(self) -> None:
        from bot.store.client import close_redis  # (client.py needs nothing of this module)

        await self.settle()
        await close_redis(self.redis)

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned command's failure is not worth a warning
