"""Slack call budgets shared by replicas: a token bucket per workspace and method, the pause after
a 429, and the set of replies streaming now (each reply's fair share of the bucket).

    budgets = SlackBudgets(guard, KeySchema())
    wait = await budgets.take("T1", "chat.update", per_minute=45, burst=3)   # None: Redis down
    await budgets.pause("T1", "chat.update", 30.0)

Every read answers ``None`` while Redis is unavailable: the caller (bot/render/budget.py) then
paces itself with a local bucket.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bot.store.guard import Guard
from bot.store.keys import KeySchema


class SlackBudgets:
    """Token buckets, 429 pauses and streaming-reply counts in Redis."""

    def __init__(
        self, guard: Guard, keys: KeySchema, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._guard = guard
        self._keys = keys
        self._clock = clock
        redis = guard.redis
        self._take = redis.register_script(_TAKE_LUA)
        self._beat = redis.register_script(_BEAT_LUA)
        self._take_beat = redis.register_script(_TAKE_BEAT_LUA)

    async def take(
        self, team: str, method: str, *, per_minute: float, burst: int, reserve: int = 0
    ) -> float | None:
        """Take one call from the workspace's token bucket: 0.0 when taken, else seconds to wait.

        ``reserve`` tokens are left for more important callers (final edits take with 0).
        """
        keys = [self._keys.budget(team, method), self._keys.pause(team, method)]
        args = [per_minute / 60.0, burst, int(self._clock() * 1000), reserve]
        wait_ms = await self._guard.attempt(
            lambda r: self._take(keys=keys, args=args, client=r), "budget", None
        )
        return None if wait_ms is None else int(wait_ms) / 1000.0

    async def take_streaming(
        self,
        team: str,
        method: str,
        reply_id: str,
        *,
        per_minute: float,
        burst: int,
        reserve: int = 0,
        lease_s: float = 30.0,
    ) -> tuple[float, int] | None:
        """``take`` and ``active_replies`` for one streaming reply in one round trip:
        (0.0 or the seconds to wait, how many replies stream in ``team`` through ``method``)."""
        keys = [
            self._keys.budget(team, method),
            self._keys.pause(team, method),
            self._keys.active(team, method),
        ]
        now = self._clock()
        args: list[str | float | int] = [
            per_minute / 60.0,
            burst,
            int(now * 1000),
            reserve,
            reply_id,
            now + lease_s,
            now,
            int(lease_s * 2000),
        ]
        result = await self._guard.attempt(
            lambda r: self._take_beat(keys=keys, args=args, client=r), "budget", None
        )
        if result is None:
            return None
        wait_ms, count = result
        return int(wait_ms) / 1000.0, int(count)

    async def pause(self, team: str, method: str, seconds: float) -> None:
        """Stop every replica's calls of ``method`` in ``team`` for ``seconds`` (after a 429)."""
        name = self._keys.pause(team, method)
        px = max(1, int(seconds * 1000))
        await self._guard.attempt(lambda r: r.set(name, "1", px=px), "pause", None)

    async def active_replies(
        self, team: str, method: str, reply_id: str, *, lease_s: float = 30.0
    ) -> int | None:
        """Register ``reply_id`` as streaming in ``team`` through ``method`` (edits or native
        appends) and return how many are streaming that way now."""
        keys = [self._keys.active(team, method)]
        now = self._clock()
        args: list[str | float | int] = [reply_id, now + lease_s, now, int(lease_s * 2000)]
        # One script, not a MULTI of four commands: this runs before every interim edit.
        count = await self._guard.attempt(
            lambda r: self._beat(keys=keys, args=args, client=r), "active", None
        )
        return None if count is None else int(count)

    async def finished_reply(self, team: str, method: str, reply_id: str) -> None:
        name = self._keys.active(team, method)
        await self._guard.attempt(lambda r: r.zrem(name, reply_id), "active", None)


# Registers a reply as streaming (a lease) and counts the workspace's streaming replies.
# beat(key, reply id, its lease expiry, now (s), key TTL (ms)).
_BEAT_FUNCTION = """
local function beat(key, member, expiry, now, ttl)
  redis.call('ZADD', key, expiry, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  redis.call('PEXPIRE', key, ttl)
  return redis.call('ZCARD', key)
end
"""

# KEYS: the workspace's streaming replies.  ARGV: reply id, its lease expiry, now (s), key TTL
# (ms).  Returns how many replies stream there now.
_BEAT_LUA = _BEAT_FUNCTION + "return beat(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])"

# take(): KEYS bucket, pause.  ARGV: rate (tokens/s), burst, now (ms), reserve.
# Returns 0 when a token was taken, else milliseconds until one may be.
_TAKE_FUNCTION = """
local function take()
  local paused = redis.call('PTTL', KEYS[2])
  if paused > 0 then return paused end
  local rate = tonumber(ARGV[1])
  local burst = tonumber(ARGV[2])
  local now = tonumber(ARGV[3])
  local reserve = tonumber(ARGV[4])
  local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
  local tokens = tonumber(state[1])
  local at = tonumber(state[2])
  if tokens == nil or at == nil then tokens = burst; at = now end
  if now > at then tokens = math.min(burst, tokens + (now - at) / 1000 * rate) end
  local ttl = math.ceil(burst / rate * 1000) + 1000
  if tokens >= 1 + reserve then
    redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'at', math.max(now, at))
    redis.call('PEXPIRE', KEYS[1], ttl)
    return 0
  end
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', math.max(now, at))
  redis.call('PEXPIRE', KEYS[1], ttl)
  return math.ceil((1 + reserve - tokens) / rate * 1000)
end
"""

_TAKE_LUA = _TAKE_FUNCTION + "return take()"

# A token for one reply's interim call, and that reply's lease as a streaming reply (one round
# trip instead of two per call).  KEYS: bucket, pause, streaming replies.  ARGV: as take(),
# then as beat() without the key.  Returns {take(), the number of streaming replies}.
_TAKE_BEAT_LUA = (
    _TAKE_FUNCTION
    + _BEAT_FUNCTION
    + "return {take(), beat(KEYS[3], ARGV[5], ARGV[6], ARGV[7], ARGV[8])}"
)
