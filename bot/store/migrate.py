"""The one-time rename of a store's schema-1 keys to today's names (bot/store/keys.py), so an
upgrade keeps every thread's memory, feedback and usage.

    renamed = await migrate(guard, KeySchema())    # 0 when the store is already on schema 2

Run at start-up, before the bot takes events (and, if Redis was down then, once it answers). One
process renames (the others wait for it, up to ``_WAIT_S``); keys keep their TTLs. A key that
already exists under its new name (a replica of the new version wrote it, e.g. during a rolling
upgrade) is merged with its old copy: a thread's older turns go in front of the newer ones, a
day's usage counters are added, votes keep the newer. Keys written under old names by replicas
of the old version after this ran are read under their old names until their TTL runs out
(bot/store/history.py). Under Redis Cluster there is nothing to rename: schema 1 could not run
there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis

from bot.store.guard import Guard
from bot.store.keys import KeySchema

log = logging.getLogger("bot.store")

SCHEMA = "2"
_BATCH = 200
_WAIT_S = 20.0  # well within a Kubernetes start-up probe's budget
_LOCK_S = 30


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
    if not await guard.attempt(lambda r: r.set(lock, "1", nx=True, ex=_LOCK_S), "migrate", None):
        await _wait_for(guard, keys)
        return 0
    try:
        renamed = await guard.attempt(lambda r: _rename_all(r, keys, lock), "migrate", -1)
        if renamed >= 0:
            await guard.attempt(lambda r: r.set(keys.schema, SCHEMA), "migrate", None)
            if renamed:
                log.info("store: renamed %d keys to schema %s", renamed, SCHEMA)
        return max(renamed, 0)
    finally:
        await guard.attempt(lambda r: r.delete(lock), "migrate", None)


async def _rename_all(r: aioredis.Redis, keys: KeySchema, lock: str) -> int:
    move = r.register_script(_MOVE_LUA)
    renamed = 0
    batch: list[tuple[bytes | str, str]] = []
    async for name in r.scan_iter(match=f"{keys.prefix}:*", count=1000):
        new = keys.renamed(name.decode() if isinstance(name, bytes) else str(name))
        if new is not None:
            batch.append((name, new))
        if len(batch) >= _BATCH:
            renamed += await _move(r, move, batch)
            batch = []
            await r.expire(lock, _LOCK_S)  # still at it
    return renamed + (await _move(r, move, batch) if batch else 0)


async def _move(r: aioredis.Redis, move: Any, batch: list[tuple[bytes | str, str]]) -> int:
    async with r.pipeline(transaction=False) as pipe:
        for old, new in batch:
            counters = ":usage:" in new
            await move(keys=[old, new], args=[1 if counters else 0], client=pipe)
        results = await pipe.execute(raise_on_error=False)
    return sum(1 for done in results if done == 1)


# KEYS: the old name, the new name.  ARGV: 1 when a hash's fields are counters.  Renames, or
# (the new name exists) merges the old copy into it: a list's old items go in front, a hash's
# counters are added and its other fields kept where the new copy has them; anything else (a
# marker, a lease) keeps the new copy.  Returns 1 when renamed, 2 when merged.
_MOVE_LUA = """
if redis.call('RENAMENX', KEYS[1], KEYS[2]) == 1 then return 1 end
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'list' then
  local old = redis.call('LRANGE', KEYS[1], 0, -1)
  for i = #old, 1, -1 do redis.call('LPUSH', KEYS[2], old[i]) end
elseif kind == 'hash' then
  local old = redis.call('HGETALL', KEYS[1])
  for i = 1, #old, 2 do
    if ARGV[1] == '1' then redis.call('HINCRBY', KEYS[2], old[i], old[i + 1])
    else redis.call('HSETNX', KEYS[2], old[i], old[i + 1]) end
  end
end
redis.call('DEL', KEYS[1])
return 2
"""


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
