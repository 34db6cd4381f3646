"""The one-time rename of a store's schema-1 keys to today's names (bot/store/keys.py), so an
upgrade keeps every thread's memory, feedback and usage.

    renamed = await migrate(guard, KeySchema())    # 0 when the store is already on schema 2

Run at start-up, before the bot takes events. One process renames (the others wait for it, up to
a minute); a key that already exists under its new name (written by an upgraded replica) wins
over its old copy. Keys keep their TTLs (RENAMENX). Under Redis Cluster there is nothing to
rename: schema 1 could not run there.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis

from bot.store.guard import Guard
from bot.store.keys import KeySchema

log = logging.getLogger("bot.store")

SCHEMA = "2"
_BATCH = 500
_WAIT_S = 60.0


async def migrate(guard: Guard, keys: KeySchema, *, cluster: bool = False) -> int:
    """Rename the schema-1 keys; how many were renamed (0 also while Redis is unavailable)."""
    unknown: bytes | str | None = b"?"  # Redis is down: nothing can be renamed now
    state = await guard.attempt(lambda r: r.get(keys.schema), "migrate", unknown)
    if state in (SCHEMA, SCHEMA.encode(), b"?"):
        return 0
    if cluster:
        await guard.attempt(lambda r: r.set(keys.schema, SCHEMA), "migrate", None)
        return 0
    lock = f"{keys.schema}:migrating"
    if not await guard.attempt(lambda r: r.set(lock, "1", nx=True, ex=120), "migrate", None):
        await _wait_for(guard, keys)
        return 0
    try:
        renamed = await guard.attempt(lambda r: _rename_all(r, keys), "migrate", -1)
        if renamed >= 0:
            await guard.attempt(lambda r: r.set(keys.schema, SCHEMA), "migrate", None)
            if renamed:
                log.info("store: renamed %d keys to schema %s", renamed, SCHEMA)
        return max(renamed, 0)
    finally:
        await guard.attempt(lambda r: r.delete(lock), "migrate", None)


async def _rename_all(r: aioredis.Redis, keys: KeySchema) -> int:
    renamed = 0
    batch: list[tuple[bytes | str, str]] = []
    async for name in r.scan_iter(match=f"{keys.prefix}:*", count=1000):
        new = keys.renamed(name.decode() if isinstance(name, bytes) else str(name))
        if new is not None:
            batch.append((name, new))
        if len(batch) >= _BATCH:
            renamed += await _rename(r, batch)
            batch = []
    return renamed + (await _rename(r, batch) if batch else 0)


async def _rename(r: aioredis.Redis, batch: list[tuple[bytes | str, str]]) -> int:
    async with r.pipeline(transaction=False) as pipe:
        for old, new in batch:
            pipe.renamenx(old, new)
        results = await pipe.execute(raise_on_error=False)
    stale = [old for (old, _), done in zip(batch, results, strict=True) if done == 0]
    if stale:  # the new name was written since: it is the newer copy
        await r.delete(*stale)
    return sum(1 for done in results if done == 1)


async def _wait_for(guard: Guard, keys: KeySchema) -> None:
    """Another process is renaming: wait until it is done (or give up and go on)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _WAIT_S
    while loop.time() < deadline:
        state = await guard.attempt(lambda r: r.get(keys.schema), "migrate", None)
        if state in (SCHEMA, SCHEMA.encode()):
            return
        await asyncio.sleep(0.2)
    log.warning("store: another process is still renaming keys; going on without waiting")
