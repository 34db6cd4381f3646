"""The registry of replies in flight: what each shows now and which process streams it, so any
replica can finish the replies of a process that died.

    registry = InFlightRegistry(guard, KeySchema())
    await registry.heartbeat("host-1", lease_s=30)
    await registry.track("r1", {"owner": "host-1", "channel": "C1", "ts": "17.2", ...})
    await registry.untrack("r1")
    orphans = await registry.orphans()      # (reply id, record) of dead owners, each claimed once

Records expire (``RECORD_TTL_S``), so a reply whose untrack was lost in a Redis blip cannot stay
registered forever; an untrack lost in an outage is done again once Redis answers. Writes are
best effort; ``orphans`` is empty while Redis is unavailable.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from bot.store.guard import Guard
from bot.store.keys import KeySchema

RECORD_TTL_S = 86400  # longer than any reply can stream; bounds what a lost untrack leaves


class InFlightRegistry:
    """Owners' heartbeats and their replies' records."""

    def __init__(
        self, guard: Guard, keys: KeySchema, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._guard = guard
        self._keys = keys
        self._clock = clock
        self._unsynced: set[str] = set()  # untracked while Redis was down
        guard.on_recovery(self._sync)

    async def heartbeat(self, owner: str, lease_s: float) -> bool:
        """This process is alive for ``lease_s`` more seconds; False while Redis is down."""
        name, px = self._keys.owner(owner), int(lease_s * 1000)
        return bool(await self._guard.attempt(lambda r: r.set(name, "1", px=px), "heartbeat", None))

    async def track(self, reply_id: str, record: dict[str, Any]) -> None:
        """Remember what a reply in flight shows now (``record`` names its ``owner``)."""
        name, index = self._keys.reply(reply_id), self._keys.replies
        data = json.dumps(record, ensure_ascii=False)
        expiry = self._clock() + RECORD_TTL_S

        async def write(r: aioredis.Redis) -> None:
            async with r.pipeline(transaction=False) as pipe:
                pipe.set(name, data, ex=RECORD_TTL_S)
                pipe.zadd(index, {reply_id: expiry})
                await pipe.execute()

        await self._guard.attempt(write, "track", None)

    async def untrack(self, *reply_ids: str) -> None:
        names = [self._keys.reply(reply_id) for reply_id in reply_ids]
        index = self._keys.replies

        async def forget(r: aioredis.Redis) -> bool:
            async with r.pipeline(transaction=False) as pipe:
                for name in names:  # one key a command: under Cluster each has its own slot
                    pipe.delete(name)
                pipe.zrem(index, *reply_ids)
                await pipe.execute()
            return True

        if reply_ids and not await self._guard.attempt(forget, "track", False):
            self._unsynced.update(reply_ids)

    async def _sync(self) -> None:
        pending, self._unsynced = self._unsynced, set()
        await self.untrack(*pending)

    async def orphans(self) -> list[tuple[str, dict[str, Any]]]:
        """(reply id, record) of replies whose owner stopped heartbeating, each claimed by this
        caller (removed from the registry, so two replicas never finish the same one; ``track``
        puts one back that could not be finished yet)."""
        return await self._guard.attempt(self._claim_orphans, "orphans", [])

    async def _claim_orphans(self, r: aioredis.Redis) -> list[tuple[str, dict[str, Any]]]:
        index = self._keys.replies
        await r.zremrangebyscore(index, "-inf", self._clock())  # their records expired too
        ids = [_text(i) for i in await r.zrange(index, 0, -1)]
        raws = await _each(r, "get", [self._keys.reply(i) for i in ids])
        candidates: list[tuple[str, dict[str, Any]]] = []
        for reply_id, raw in zip(ids, raws, strict=True):
            record = _record(raw)
            if record is None:
                await r.zrem(index, reply_id)
            else:
                candidates.append((reply_id, record))
        alive = await self._alive(r, {str(rec.get("owner")) for _, rec in candidates})
        orphans = []
        for reply_id, record in candidates:
            if str(record.get("owner")) in alive:
                continue
            claimed = await r.delete(self._keys.reply(reply_id))
            await r.zrem(index, reply_id)
            if claimed:
                orphans.append((reply_id, record))
        return orphans + await self._claim_legacy(r, alive)

    async def _claim_legacy(
        self, r: aioredis.Redis, alive: set[str]
    ) -> list[tuple[str, dict[str, Any]]]:
        """Records an older version left in one hash (no expiry): finished the same way."""
        name = self._keys.legacy_inflight
        entries = await r.hgetall(name)
        if not entries:
            return []
        records = {_text(field): _record(raw) or {} for field, raw in entries.items()}
        alive |= await self._alive(r, {str(rec.get("owner")) for rec in records.values()})
        orphans = []
        for field, record in records.items():
            if str(record.get("owner")) in alive:
                continue
            if await r.hdel(name, field) and record:
                orphans.append((field, record))
        return orphans

    async def _alive(self, r: aioredis.Redis, owners: set[str]) -> set[str]:
        owners.discard("None")
        if not owners:
            return set()
        ordered = sorted(owners)
        async with r.pipeline(transaction=False) as pipe:
            for owner in ordered:
                pipe.exists(self._keys.owner(owner))
            found = await pipe.execute()
        return {owner for owner, exists in zip(ordered, found, strict=True) if exists}


async def _each(r: aioredis.Redis, command: str, names: list[str]) -> list[Any]:
    """``command`` on each key, in one pipeline (a multi-key command would span slots)."""
    if not names:
        return []
    async with r.pipeline(transaction=False) as pipe:
        for name in names:
            getattr(pipe, command)(name)
        return list(await pipe.execute())


def _record(raw: object) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        record = json.loads(raw if isinstance(raw, str | bytes) else str(raw))
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("owner") else None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
