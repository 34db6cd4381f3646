"""The Redis boundary: thread history, event dedupe, per-thread locks and the shared edit budget.

Key schema (``{p}`` is the key prefix, ``slackbot`` by default)::

    {p}:thread:{team}:{channel}:{thread_ts}   list of JSON turns, oldest first; TTL refreshed on write
    {p}:engaged:{team}:{channel}:{thread_ts}  "1", same TTL — the bot is answering in this thread
    {p}:seen:evt:{event_id}                   "1", TTL 15 min — Slack retries of one event
    {p}:seen:msg:{team}:{channel}:{ts}        "1", TTL 15 min — app_mention + message of one post
    {p}:lock:{team}:{channel}:{thread_ts}     holder token, PX lease — one answer at a time
    {p}:budget:{team}:{method}                hash {tokens, at} — token bucket shared by replicas
    {p}:pause:{team}:{method}                 "1", PX Retry-After — Slack said 429
    {p}:active:{team}:{method}                zset reply id → lease expiry — replies streaming now
    {p}:stop                                  pub/sub channel: reply ids whose Stop was pressed
    {p}:owner:{owner}                         "1", PX lease — a bot process that is alive
    {p}:inflight                              hash reply id → JSON {owner, team, channel, ts, text}
    {p}:rate:{team}:{user}:{window}           request count in a fixed window — per-user rate limit
    {p}:usage:{team}:{yyyymmdd}               hash {scope}:{prompt|completion|total}_tokens and
                                              {scope}:replies, scope = team | channel:C | user:U;
                                              team:feedback_{good|bad}: votes cast that day
    {p}:feedback:{team}:{channel}:{message_ts} hash user → good | bad — feedback on one answer,
                                              a changed vote replaces the earlier one; history TTL

Every Redis failure leaves this module as ``StoreUnavailable``; the first one of an outage is
logged as one warning, the recovery as one info line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from bot.conversation import ThreadKey, Turn
from bot.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

DEDUPE_TTL_S = 15 * 60


def connect_redis(url: str) -> aioredis.Redis:
    """A client that fails fast while Redis is down instead of stalling every command."""
    # A pool that waits for a free connection instead of failing: a burst of replies must not
    # look like an outage (redis-py's default pool raises past 100 connections).
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=1024,
        timeout=2.0,
        socket_connect_timeout=1.0,
        socket_timeout=2.0,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1),
        health_check_interval=15,
        **_driver_info(),
    )
    return aioredis.Redis.from_pool(pool)


def _driver_info() -> dict[str, Any]:
    """What each connection tells Redis about its client (CLIENT SETINFO), worked out once.

    Left to redis-py 8, every new connection looks its own version up in the installed
    packages' metadata (``importlib.metadata``), and a burst of replies opens hundreds of
    connections: that lookup was ~2–3 % of the bot's CPU in a profile of the benchmark's
    1,000-mention burst; 500 new connections cost 324 instead of 580 ms of CPU with it worked
    out once. Older redis-py has no ``DriverInfo`` and no such lookup.
    """
    try:
        from redis.driver_info import DriverInfo
    except ImportError:
        return {}
    return {"driver_info": DriverInfo()}


def embedded_redis() -> aioredis.Redis:
    """An in-process Redis-compatible store (fakeredis) for a single process without REDIS_URL."""
    from fakeredis import FakeAsyncRedis  # imported here: only the no-Redis set-up needs it

    return FakeAsyncRedis()  # type: ignore[no-any-return]


class Store:
    """All Redis operations of the bot, behind one health-tracking guard.

    store = Store(redis, prefix="slackbot", history_ttl_s=30 * 86400, history_max_turns=200)
    await store.append_turns(key, [Turn("user", "hi", "U1")])
    turns = await store.history(key)
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "slackbot",
        history_ttl_s: float = 30 * 86400,
        history_max_turns: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._p = prefix
        self._ttl_ms = int(history_ttl_s * 1000)
        self._max_turns = history_max_turns
        self._clock = clock
        self._down = False
        self._local_seen: OrderedDict[str, float] = OrderedDict()
        self._abandoned: set[asyncio.Future[Any]] = set()
        self._release = redis.register_script(_RELEASE_LUA)
        self._renew = redis.register_script(_RENEW_LUA)
        self._take = redis.register_script(_TAKE_LUA)
        self._beat = redis.register_script(_BEAT_LUA)
        self._take_beat = redis.register_script(_TAKE_BEAT_LUA)
        self._usage = redis.register_script(_USAGE_LUA)
        self._vote = redis.register_script(_VOTE_LUA)

    @property
    def healthy(self) -> bool:
        return not self._down

    async def ping(self) -> bool:
        try:
            await self._guard(lambda r: r.ping(), "ping")
        except StoreUnavailable:
            return False
        return True

    # -- thread history -------------------------------------------------------------------

    async def history(self, key: ThreadKey) -> list[Turn]:
        raw = await self._guard(lambda r: r.lrange(self._thread(key), 0, -1), "history")
        return [Turn.from_json(item) for item in raw]

    async def knows(self, key: ThreadKey) -> bool:
        """Whether the bot takes part in this thread (answered, or is answering now)."""
        names = (self._thread(key), self._engaged(key))
        return bool(await self._guard(lambda r: r.exists(*names), "knows"))

    async def engage(self, key: ThreadKey) -> None:
        """Mark the thread as one the bot takes part in, as soon as it starts answering there:
        a follow-up sent while the first answer is still streaming must not be ignored."""
        await self._guard(lambda r: r.set(self._engaged(key), "1", px=self._ttl_ms), "engage")

    async def append_turns(self, key: ThreadKey, turns: list[Turn]) -> None:
        name = self._thread(key)

        async def write(r: aioredis.Redis) -> None:
            async with r.pipeline(transaction=True) as pipe:
                pipe.rpush(name, *(t.to_json() for t in turns))
                pipe.ltrim(name, -self._max_turns, -1)
                pipe.pexpire(name, self._ttl_ms)
                pipe.set(self._engaged(key), "1", px=self._ttl_ms)
                await pipe.execute()

        await self._guard(write, "append")

    # -- dedupe ----------------------------------------------------------------------------

    async def first_sighting(self, team: str, channel: str, ts: str, event_id: str | None) -> bool:
        """True exactly once per posted message, across Slack retries, double deliveries and replicas.

        Falls back to this process's memory while Redis is unavailable.
        """
        msg_key = f"{self._p}:seen:msg:{team}:{channel}:{ts}"
        evt_key = f"{self._p}:seen:evt:{event_id}" if event_id else None

        async def claim(r: aioredis.Redis) -> bool:
            async with r.pipeline(transaction=False) as pipe:
                pipe.set(msg_key, "1", nx=True, ex=DEDUPE_TTL_S)
                if evt_key:
                    pipe.set(evt_key, "1", nx=True, ex=DEDUPE_TTL_S)
                results = await pipe.execute()
            return all(bool(x) for x in results)

        try:
            first = await self._guard(claim, "dedupe")
        except StoreUnavailable:
            return self._local_first(msg_key, evt_key)
        self._local_first(msg_key, evt_key)  # remembered locally too, for a later outage
        return first

    def _local_first(self, *keys: str | None) -> bool:
        now = self._clock()
        while self._local_seen and next(iter(self._local_seen.values())) < now:
            self._local_seen.popitem(last=False)
        first = True
        for k in keys:
            if k is None:
                continue
            if k in self._local_seen:
                first = False
            else:
                self._local_seen[k] = now + DEDUPE_TTL_S
        return first

    # -- per-thread lock -------------------------------------------------------------------

    @asynccontextmanager
    async def thread_lock(
        self, key: ThreadKey, *, lease_s: float = 30.0, wait_s: float = 600.0, poll_s: float = 0.05
    ) -> AsyncIterator[None]:
        """Hold the thread's lock; the lease is renewed while held and expires if the holder dies.

        While Redis is unavailable the lock degrades to no lock (answers may then overlap).
        """
        name = f"{self._p}:lock:{key}"
        token = secrets.token_hex(8)
        lease_ms = int(lease_s * 1000)
        held = await self._acquire(name, token, lease_ms, wait_s, poll_s)
        renewer = asyncio.create_task(self._keep(name, token, lease_ms)) if held else None
        try:
            yield
        finally:
            if renewer is not None:
                renewer.cancel()
                try:
                    await self._guard(
                        lambda r: self._release(keys=[name], args=[token], client=r), "unlock"
                    )
                except StoreUnavailable:
                    pass  # the lease expires by itself

    async def _acquire(
        self, name: str, token: str, lease_ms: int, wait_s: float, poll_s: float
    ) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        delay = poll_s
        while True:
            try:
                if await self._guard(lambda r: r.set(name, token, nx=True, px=lease_ms), "lock"):
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
            try:
                await self._guard(
                    lambda r: self._renew(keys=[name], args=[token, lease_ms], client=r), "renew"
                )
            except StoreUnavailable:
                pass

    # -- shared edit budget ----------------------------------------------------------------

    async def take_token(
        self, team: str, method: str, *, per_minute: float, burst: int, reserve: int = 0
    ) -> float:
        """Take one call from the workspace's token bucket: 0.0 when taken, else seconds to wait.

        ``reserve`` tokens are left for more important callers (final edits take with 0).
        Raises ``StoreUnavailable``; callers fall back to a local bucket.
        """
        keys = [f"{self._p}:budget:{team}:{method}", f"{self._p}:pause:{team}:{method}"]
        args = [per_minute / 60.0, burst, int(self._clock() * 1000), reserve]
        wait_ms = await self._guard(lambda r: self._take(keys=keys, args=args, client=r), "budget")
        return int(wait_ms) / 1000.0

    async def take_token_streaming(
        self,
        team: str,
        method: str,
        reply_id: str,
        *,
        per_minute: float,
        burst: int,
        reserve: int = 0,
        lease_s: float = 30.0,
    ) -> tuple[float, int]:
        """``take_token`` and ``active_replies`` for one streaming reply in one round trip:
        (0.0 or the seconds to wait, how many replies stream in ``team`` through ``method``)."""
        keys = [
            f"{self._p}:budget:{team}:{method}",
            f"{self._p}:pause:{team}:{method}",
            f"{self._p}:active:{team}:{method}",
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
        wait_ms, count = await self._guard(
            lambda r: self._take_beat(keys=keys, args=args, client=r), "budget"
        )
        return int(wait_ms) / 1000.0, int(count)

    async def pause(self, team: str, method: str, seconds: float) -> None:
        """Stop every replica's calls of ``method`` in ``team`` for ``seconds`` (after a 429)."""
        name = f"{self._p}:pause:{team}:{method}"
        await self._guard(lambda r: r.set(name, "1", px=max(1, int(seconds * 1000))), "pause")

    async def active_replies(
        self, team: str, method: str, reply_id: str, *, lease_s: float = 30.0
    ) -> int:
        """Register ``reply_id`` as streaming in ``team`` through ``method`` (edits or native
        appends) and return how many are streaming that way now."""
        keys = [f"{self._p}:active:{team}:{method}"]
        now = self._clock()
        args: list[str | float | int] = [reply_id, now + lease_s, now, int(lease_s * 2000)]
        # One script, not a MULTI of four commands: this runs before every interim edit.
        count = await self._guard(lambda r: self._beat(keys=keys, args=args, client=r), "active")
        return int(count)

    async def finished_reply(self, team: str, method: str, reply_id: str) -> None:
        name = f"{self._p}:active:{team}:{method}"
        await self._guard(lambda r: r.zrem(name, reply_id), "active")

    # -- abuse limits and usage ------------------------------------------------------------

    async def hit_rate(self, team: str, user: str, *, limit: int, window_s: float) -> float:
        """Count one request of ``user``; 0.0 when within ``limit`` per window, else seconds
        until the window resets."""
        now = self._clock()
        window = int(now // window_s)
        name = f"{self._p}:rate:{team}:{user}:{window}"

        async def count(r: aioredis.Redis) -> int:
            async with r.pipeline(transaction=True) as pipe:
                pipe.incr(name)
                pipe.expire(name, int(window_s) + 1)
                results = await pipe.execute()
            return int(results[0])

        if await self._guard(count, "rate") <= limit:
            return 0.0
        return (window + 1) * window_s - now

    async def record_usage(self, team: str, channel: str, user: str, usage: dict[str, int]) -> None:
        """Add a reply's token usage to today's counters of its workspace, channel and user."""
        keys = [self._usage_key(team)]
        args: list[str | int] = [40 * 86400, "replies", 1]
        for kind, value in usage.items():
            if kind.endswith("_tokens") and value > 0:
                args += [kind, value]
        scopes = ("team", f"channel:{channel}", f"user:{user}")
        args[1:1] = [len(scopes), *scopes]
        # One script instead of a MULTI of a dozen HINCRBYs (less work in the client per reply).
        await self._guard(lambda r: self._usage(keys=keys, args=args, client=r), "usage")

    async def tokens_today(self, team: str, user: str) -> tuple[int, int]:
        """(workspace, user) total tokens used today (UTC)."""
        name = self._usage_key(team)
        fields = ["team:total_tokens", f"user:{user}:total_tokens"]
        values = await self._guard(lambda r: r.hmget(name, fields), "usage")
        return int(values[0] or 0), int(values[1] or 0)

    def _usage_key(self, team: str) -> str:
        day = time.strftime("%Y%m%d", time.gmtime(self._clock()))
        return f"{self._p}:usage:{team}:{day}"

    # -- feedback on answers ---------------------------------------------------------------

    async def record_feedback(
        self, team: str, channel: str, message_ts: str, user: str, vote: str
    ) -> str | None:
        """Store ``user``'s vote on the answer at (``channel``, ``message_ts``), replacing their
        earlier one, and count it in today's usage hash unless it repeats that earlier vote.
        Returns the earlier vote (None: the first)."""
        keys = [f"{self._p}:feedback:{team}:{channel}:{message_ts}", self._usage_key(team)]
        args: list[str | int] = [user, vote, self._ttl_ms, 40 * 86400]
        earlier = await self._guard(
            lambda r: self._vote(keys=keys, args=args, client=r), "feedback"
        )
        if isinstance(earlier, bytes):
            earlier = earlier.decode()
        return str(earlier) if earlier else None

    # -- Stop across replicas --------------------------------------------------------------

    async def request_stop(self, reply_id: str) -> None:
        """Tell every replica that ``reply_id`` should stop (the one streaming it will)."""
        await self._guard(lambda r: r.publish(f"{self._p}:stop", reply_id), "stop")

    async def stop_requests(self) -> AsyncIterator[str]:
        """Reply ids whose Stop was pressed, from any replica; reconnects after an outage."""
        channel = f"{self._p}:stop"
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                while True:
                    message = await self._uncancellable(pubsub.get_message(timeout=1.0))
                    if message and message.get("type") == "message":
                        data = message["data"]
                        yield data.decode() if isinstance(data, bytes) else str(data)
            except (RedisError, OSError):
                await asyncio.sleep(1.0)  # the store's other calls report the outage
            finally:
                await self._settle()  # a get_message abandoned by a cancellation uses pubsub
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                except (RedisError, OSError):
                    pass

    # -- replies in flight (crash recovery) ------------------------------------------------

    async def heartbeat(self, owner: str, lease_s: float) -> None:
        """This process is alive for ``lease_s`` more seconds."""
        name = f"{self._p}:owner:{owner}"
        await self._guard(lambda r: r.set(name, "1", px=int(lease_s * 1000)), "heartbeat")

    async def track_reply(self, reply_id: str, record: dict[str, Any]) -> None:
        """Remember what a reply in flight shows now (``record`` names its ``owner``)."""
        data = json.dumps(record, ensure_ascii=False)
        await self._guard(lambda r: r.hset(f"{self._p}:inflight", reply_id, data), "track")

    async def untrack_reply(self, reply_id: str) -> None:
        await self._guard(lambda r: r.hdel(f"{self._p}:inflight", reply_id), "track")

    async def orphaned_replies(self) -> list[dict[str, Any]]:
        """Replies in flight whose owner stopped heartbeating, each claimed by this caller
        (removed from the registry, so two replicas never finish the same one)."""
        name = f"{self._p}:inflight"

        async def claim(r: aioredis.Redis) -> list[dict[str, Any]]:
            orphans = []
            for reply_id, raw in (await r.hgetall(name)).items():
                try:
                    record = json.loads(raw)
                except ValueError:
                    record = {}
                owner = record.get("owner") if isinstance(record, dict) else None
                if owner and await r.exists(f"{self._p}:owner:{owner}"):
                    continue
                if await r.hdel(name, reply_id) and isinstance(record, dict) and record:
                    orphans.append(record)
            return orphans

        return await self._guard(claim, "orphans")

    async def aclose(self) -> None:
        """Let commands abandoned by cancelled callers finish, then close the client."""
        await self._settle()
        await self._redis.aclose()

    # -- internals -------------------------------------------------------------------------

    async def _uncancellable(self, call: Awaitable[T]) -> T:
        """Await a redis-py call that a cancellation cannot interrupt midway.

        redis-py 8 can lose a cancellation that lands inside a command (the task then waits
        forever, e.g. at shutdown) and leave the connection unusable. Shielded, the command
        finishes by itself (bounded by the socket timeouts) while the caller is cancelled at
        once; ``aclose`` waits for such commands.
        """
        task = asyncio.ensure_future(call)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._abandoned.add(task)
            task.add_done_callback(self._forget)
            raise

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned command's failure is not worth a warning

    async def _settle(self) -> None:
        if self._abandoned:
            await asyncio.wait(set(self._abandoned), timeout=5.0)

    def _thread(self, key: ThreadKey) -> str:
        return f"{self._p}:thread:{key}"

    def _engaged(self, key: ThreadKey) -> str:
        return f"{self._p}:engaged:{key}"

    async def _guard(self, op: Callable[[aioredis.Redis], Awaitable[T]], what: str) -> T:
        try:
            result = await self._uncancellable(op(self._redis))
        except (RedisError, OSError) as exc:
            if not self._down:
                self._down = True
                log.warning(
                    "Redis unavailable (%s during %s); answering without thread history "
                    "and deduplicating in memory until it is back",
                    type(exc).__name__,
                    what,
                )
            raise StoreUnavailable(what) from exc
        if self._down:
            self._down = False
            log.info("Redis reachable again")
        return result


_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

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
