"""Abuse limits and accounting: per-user request rate, daily token usage per workspace, channel
and user, and people's votes on answers.

    usage = Usage(guard, KeySchema(), votes_ttl_s=30 * 86400)
    wait = await usage.hit_rate("T1", "U1", limit=60, window_s=3600)   # 0.0: within the limit
    await usage.record("T1", "C1", "U1", {"total_tokens": 120})

While Redis is unavailable limits are not enforced (a rate is 0.0, usage 0) and counts are lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bot.store.guard import Guard
from bot.store.keys import KeySchema

USAGE_TTL_S = 40 * 86400


class Usage:
    """Rate limits, token usage and feedback votes."""

    def __init__(
        self,
        guard: Guard,
        keys: KeySchema,
        *,
        votes_ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._guard = guard
        self._keys = keys
        self._votes_ttl_ms = int(votes_ttl_s * 1000)
        self._clock = clock
        self._usage = guard.redis.register_script(_USAGE_LUA)
        self._vote = guard.redis.register_script(_VOTE_LUA)
        self._count = guard.redis.register_script(_COUNT_LUA)

    async def hit_rate(self, team: str, user: str, *, limit: int, window_s: float) -> float:
        """Count one request of ``user``; 0.0 when within ``limit`` per window, else seconds
        until the window resets."""
        now = self._clock()
        window = int(now // window_s)
        keys = [self._keys.rate(team, user, window)]
        args = [int(window_s) + 1]
        # A script, not a MULTI (redis-py's cluster client runs a transaction's commands on
        # threads of their own, bench/README.md, issue 14) nor a plain pipeline: a counter whose
        # EXPIRE was lost would stay forever. One command, atomic, runs before every reply.
        count = await self._guard.attempt(
            lambda r: self._count(keys=keys, args=args, client=r), "rate", 0
        )
        if int(count) <= limit:
            return 0.0
        return (window + 1) * window_s - now

    async def first_refusal(self, team: str, user: str, why: str, *, window_s: float) -> bool:
        """Whether ``user`` is to be told of limit ``why`` now: once per window of ``window_s``
        (a day's window for ``window_s`` = 86400 is the UTC day). True while Redis is down."""
        now = self._clock()
        window = int(now // window_s)
        name = self._keys.refused(team, user, why, str(window))
        ttl = max(1, int((window + 1) * window_s - now) + 1)
        # SET NX answers None when the marker was there; the default (Redis down) is "tell".
        told: object = await self._guard.attempt(
            lambda r: r.set(name, "1", nx=True, ex=ttl), "refusal", "down"
        )
        return told is not None

    async def record(self, team: str, channel: str, user: str, usage: dict[str, int]) -> None:
        """Add a reply's token usage to today's counters of its workspace, channel and user."""
        keys = [self._today(team)]
        args: list[str | int] = [USAGE_TTL_S, "replies", 1]
        for kind, value in usage.items():
            if kind.endswith("_tokens") and value > 0:
                args += [kind, value]
        scopes = ("team", f"channel:{channel}", f"user:{user}")
        args[1:1] = [len(scopes), *scopes]
        # One script instead of a MULTI of a dozen HINCRBYs (less work in the client per reply).
        await self._guard.attempt(
            lambda r: self._usage(keys=keys, args=args, client=r), "usage", None
        )

    async def tokens_today(self, team: str, user: str) -> tuple[int, int]:
        """(workspace, user) total tokens used today (UTC)."""
        name = self._today(team)
        fields = ["team:total_tokens", f"user:{user}:total_tokens"]
        nothing: list[bytes | str | None] = [None, None]
        values = await self._guard.attempt(lambda r: r.hmget(name, fields), "usage", nothing)
        return int(values[0] or 0), int(values[1] or 0)

    async def record_feedback(
        self, team: str, channel: str, message_ts: str, user: str, vote: str
    ) -> str | None:
        """Store ``user``'s vote on the answer at (``channel``, ``message_ts``), replacing their
        earlier one, and count it in today's usage hash unless it repeats that earlier vote.
        Returns the earlier vote (None: the first, or the store is down)."""
        keys = [self._keys.feedback(team, channel, message_ts), self._today(team)]
        args: list[str | int] = [user, vote, self._votes_ttl_ms, USAGE_TTL_S]
        earlier = await self._guard.attempt(
            lambda r: self._vote(keys=keys, args=args, client=r), "feedback", None
        )
        if isinstance(earlier, bytes):
            earlier = earlier.decode()
        return str(earlier) if earlier else None

    def _today(self, team: str) -> str:
        return self._keys.usage(team, time.strftime("%Y%m%d", time.gmtime(self._clock())))


# KEYS: the answer's votes, today's usage.  ARGV: user, vote, votes TTL (ms), usage TTL (s).
# Returns the user's earlier vote, '' when none.
_VOTE_LUA = """
local earlier = redis.call('HGET', KEYS[1], ARGV[1]) or ''
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if earlier ~= ARGV[2] then
  redis.call('HINCRBY', KEYS[2], 'team:feedback_' .. ARGV[2], 1)
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return earlier
"""

# KEYS: a user's request counter of one window.  ARGV: its TTL (s).  Returns the count with this
# request.
_COUNT_LUA = """
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return count
"""

# KEYS: today's usage hash.  ARGV: its TTL (s), n, n scopes, then (counter, amount) pairs;
# every scope's counter is raised by its amount.
_USAGE_LUA = """
local n = tonumber(ARGV[2])
for i = 3, 2 + n do
  for j = 3 + n, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[1], ARGV[i] .. ':' .. ARGV[j], ARGV[j + 1])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 0
"""
