"""Event dedupe: each posted message is answered once, across Slack's retries, the app_mention +
message twins of one post, replicas and restarts.

    dedupe = Dedupe(guard, KeySchema())
    sighting = await dedupe.first_sighting("T1", "C1", "17.1", "Ev1", retry=False)
    # Sighting.FIRST / REPEAT / UNVOUCHED (a redelivery the store cannot vouch for: ask Slack)

While Redis is down this process's memory stands in, and what it marked is written to Redis
once it is back, so a retry reaching another replica after the outage is still recognised.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable

import redis.asyncio as aioredis

from bot.conversation import ts_seconds
from bot.errors import StoreUnavailable
from bot.store.guard import Guard
from bot.store.keys import KeySchema

DEDUPE_TTL_S = 15 * 60  # Slack's last retry comes ~5 min after the event


class Sighting(enum.Enum):
    FIRST = "first"  # never seen: answer it
    REPEAT = "repeat"  # a retry or a twin of a message already taken
    UNVOUCHED = "unvouched"  # a redelivery the store cannot vouch for: was it answered?


class Dedupe:
    """First sightings of messages, shared through Redis, with a local stand-in."""

    def __init__(
        self,
        guard: Guard,
        keys: KeySchema,
        *,
        ttl_s: float = DEDUPE_TTL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._guard = guard
        self._keys = keys
        self._ttl_s = ttl_s
        self._clock = clock
        self._local: OrderedDict[str, float] = OrderedDict()  # key -> expiry
        self._unsynced: set[str] = set()  # marked locally while Redis was down
        self._claim = guard.redis.register_script(_CLAIM_LUA)
        guard.on_recovery(self._sync)

    async def first_sighting(
        self, team: str, channel: str, ts: str, event_id: str | None, *, retry: bool = False
    ) -> Sighting:
        """Claim the message ``ts`` (and the delivery ``event_id``). ``retry``: Slack says this
        is a redelivery, so a store that lost or never had its first delivery's marker (it was
        emptied, or the message predates it) cannot tell "never seen" from "forgotten"."""
        names = [self._keys.seen_message(team, channel, ts)]
        if event_id:
            names.append(self._keys.seen_event(team, event_id))
        ttl_ms = int(self._ttl_s * 1000)
        epoch_key = self._keys.epoch

        async def claim(r: aioredis.Redis) -> bool:
            # One script over keys of one slot (the workspace's): with a marker per key set
            # separately, two deliveries racing could each find the other's marker first and
            # nobody would answer.
            return bool(await self._claim(keys=names, args=[ttl_ms], client=r))

        try:
            first = await self._guard.run(claim, "dedupe")
            epoch = await self._guard.run(lambda r: r.get(epoch_key), "dedupe") if retry else None
        except StoreUnavailable:
            first = self._local_first(names, unsynced=True)
            return Sighting.FIRST if first and not retry else _seen(first)
        self._local_first(names, unsynced=False)  # remembered here too, for a later outage
        if not first:
            return Sighting.REPEAT
        if retry and not _remembers(epoch, ts):
            return Sighting.UNVOUCHED
        return Sighting.FIRST

    def _local_first(self, names: list[str], *, unsynced: bool) -> bool:
        now = self._clock()
        while self._local and next(iter(self._local.values())) < now:
            expired, _ = self._local.popitem(last=False)
            self._unsynced.discard(expired)
        first = True
        for name in names:
            if name in self._local:
                first = False
            else:
                self._local[name] = now + self._ttl_s
                if unsynced:
                    self._unsynced.add(name)
        return first

    async def _sync(self) -> None:
        """Write what was marked during the outage (each for the rest of its TTL)."""
        now = self._clock()
        pending = {n: self._local[n] - now for n in self._unsynced if n in self._local}
        self._unsynced.clear()
        if not pending:
            return

        async def write(r: aioredis.Redis) -> None:
            async with r.pipeline(transaction=False) as pipe:
                for name, left in pending.items():
                    if left > 0:
                        pipe.set(name, "1", nx=True, px=int(left * 1000))
                await pipe.execute()

        await self._guard.attempt(write, "dedupe", None)


def _seen(first: bool) -> Sighting:
    return Sighting.UNVOUCHED if first else Sighting.REPEAT


def _remembers(epoch: object, ts: str) -> bool:
    """Whether a store whose memory began at ``epoch`` would hold the marker of message ``ts``
    (no epoch: a new or emptied store)."""
    began = ts_seconds(epoch)
    return 0 < began <= ts_seconds(ts)


# KEYS: the markers of one message (all of one workspace).  ARGV: their TTL (ms).  Sets them all
# and returns 1 when none was set, else 0: exactly one delivery of a message sees 1.
_CLAIM_LUA = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    for _, other in ipairs(KEYS) do redis.call('SET', other, '1', 'PX', ARGV[1], 'NX') end
    return 0
  end
end
for _, key in ipairs(KEYS) do redis.call('SET', key, '1', 'PX', ARGV[1]) end
return 1
"""
