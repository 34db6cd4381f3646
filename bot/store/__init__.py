"""The Redis boundary, one concern per module, all behind one outage policy (``guard.py``) and one
key schema (``keys.py``):

    history.py   ThreadMemory   turns, engagement, the store's epoch (what it can vouch for)
    dedupe.py    Dedupe         one answer per posted message
    locks.py     ThreadLocks    one answer at a time per thread
    budgets.py   SlackBudgets   Slack call budgets shared by replicas
    usage.py     Usage          rate limits, token usage, feedback votes
    relay.py     StopRelay      Stop clicks across replicas
    inflight.py  InFlightRegistry  replies in flight, finished by another replica if theirs died
    files.py     FileCache      shared files as read (text, downscaled images), for follow-ups
    approvals.py ApprovalDecisions  decisions on tool calls waiting for approval, first wins
    embedded.py  the private server used when no REDIS_URL is set

    store = Store.open(connect_redis(url), history_ttl_s=30 * 86400, history_max_turns=200)
    await store.history.append(key, [Turn("user", "hi", "U1")])
    async with store.locks.hold(key): ...

Nothing outside this package imports ``redis`` or sees a Redis error: each concern states what it
answers while Redis is unavailable, and the guard logs the outage once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from bot.errors import ConfigError
from bot.store.approvals import ApprovalDecisions
from bot.store.budgets import SlackBudgets
from bot.store.client import connect_redis, is_cluster
from bot.store.dedupe import Dedupe, Sighting
from bot.store.files import FileCache
from bot.store.guard import Guard
from bot.store.history import Participation, ThreadMemory
from bot.store.inflight import InFlightRegistry
from bot.store.keys import KeySchema
from bot.store.locks import ThreadLocks
from bot.store.migrate import migrate
from bot.store.relay import StopRelay
from bot.store.usage import Usage

log = logging.getLogger("bot.store")

__all__ = [
    "ApprovalDecisions",
    "Dedupe",
    "FileCache",
    "InFlightRegistry",
    "KeySchema",
    "Participation",
    "Sighting",
    "SlackBudgets",
    "StopRelay",
    "Store",
    "ThreadLocks",
    "ThreadMemory",
    "Usage",
    "connect_redis",
]


@dataclass(frozen=True, slots=True)
class Store:
    """Every concern of the store, sharing one client and one outage policy."""

    guard: Guard
    history: ThreadMemory
    dedupe: Dedupe
    locks: ThreadLocks
    budgets: SlackBudgets
    usage: Usage
    stops: StopRelay
    inflight: InFlightRegistry
    files: FileCache
    approvals: ApprovalDecisions

    @classmethod
    def open(
        cls,
        redis: aioredis.Redis,
        *,
        prefix: str = "slackbot",
        history_ttl_s: float = 30 * 86400,
        history_max_turns: int = 200,
        turn_tokens: int = 8000,
        file_cache_entry_bytes: int = 1_000_000,
        file_cache_ttl_s: float = 72 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> Store:
        """The store on ``redis`` (which it closes in ``aclose``). ``turn_tokens``: the most of
        one turn a prompt can use, what a stored turn is cut to. ``file_cache_entry_bytes``:
        the largest read file kept for follow-ups; ``file_cache_ttl_s``: how long one is kept
        after its last read."""
        guard = Guard(redis)
        keys = KeySchema(prefix)
        return cls(
            guard=guard,
            history=ThreadMemory(
                guard,
                keys,
                ttl_s=history_ttl_s,
                max_turns=history_max_turns,
                turn_tokens=turn_tokens,
                clock=clock,
            ),
            dedupe=Dedupe(guard, keys, clock=clock),
            locks=ThreadLocks(guard, keys),
            budgets=SlackBudgets(guard, keys, clock=clock),
            usage=Usage(guard, keys, votes_ttl_s=history_ttl_s, clock=clock),
            stops=StopRelay(guard, keys),
            inflight=InFlightRegistry(guard, keys, clock=clock),
            files=FileCache(
                guard, keys, ttl_s=file_cache_ttl_s, max_entry_bytes=file_cache_entry_bytes
            ),
            approvals=ApprovalDecisions(guard, keys),
        )

    @property
    def healthy(self) -> bool:
        return self.guard.healthy

    async def ping(self) -> bool:
        return await self.guard.ping()

    async def prepare(self) -> None:
        """At start-up, with Redis reachable: refuse a plain URL to a cluster node, rename keys
        of an older schema, mark the epoch, warn when Redis may evict keys."""
        cluster = is_cluster(self.guard.redis)
        if not cluster:
            nothing: dict[str, Any] = {}
            info = await self.guard.attempt(lambda r: r.info("cluster"), "info", nothing)
            if isinstance(info, dict) and str(info.get("cluster_enabled")) == "1":
                raise ConfigError(
                    [
                        "REDIS_URL points at one node of a Redis Cluster: use "
                        "redis+cluster://host:port[,host:port…] so the bot follows the cluster"
                    ]
                )
        await migrate(self.guard, self.history.keys, cluster=cluster)
        await self.history.begin_epoch()
        await self.check_eviction()

    def prepare_when_reachable(self) -> None:
        """Redis was down at start-up: ``prepare`` once it answers (a plain URL to a cluster
        node is then only logged: the bot is already running)."""
        done = False

        async def once() -> None:
            nonlocal done
            if not done:
                done = True
                try:
                    await self.prepare()
                except ConfigError as exc:
                    log.error("%s", "; ".join(exc.problems))

        self.guard.on_recovery(once)

    async def check_eviction(self) -> None:
        """Warn when Redis may evict keys under memory pressure: a thread's keys evicted while
        the store's epoch stays would make the bot ignore follow-ups there."""
        info = await self.guard.attempt(lambda r: r.info("memory"), "info", None)
        if not isinstance(info, dict):
            return
        policy = str(info.get("maxmemory_policy") or "noeviction")
        if int(info.get("maxmemory") or 0) and policy != "noeviction":
            log.warning(
                "Redis evicts keys when full (maxmemory-policy %s): set it to noeviction, or "
                "follow-ups in threads whose keys were evicted may go unanswered",
                policy,
            )

    async def aclose(self) -> None:
        """Let commands abandoned by cancelled callers finish, then close the client."""
        await self.guard.aclose()
