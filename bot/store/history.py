"""Thread memory: the turns of each conversation, which threads the bot takes part in, and how far
back the store's own memory reaches (its epoch).

    memory = ThreadMemory(guard, KeySchema(), ttl_s=30 * 86400, max_turns=200, turn_tokens=8000)
    await memory.append(key, [Turn("user", "hi", "U1")], keep=50)
    turns = await memory.history(key)          # None: the store cannot say (it is down)
    await memory.participation(key)            # YES / NO / UNKNOWN (ask Slack)

Slack holds the conversation; this is the fast path. A "no" is only given where the store would
know: the thread began after the store's epoch and within the history TTL. Otherwise (a new or
emptied store, a thread older than the TTL, Redis down) the answer is ``UNKNOWN`` and the caller
asks Slack, then caches a negative answer here with ``not_mine``.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis

from bot.conversation import ThreadKey, Turn, cut_to, ts_seconds
from bot.errors import StoreUnavailable
from bot.store.guard import Guard
from bot.store.keys import KeySchema

NOT_MINE_TTL_S = 86400  # a thread where the bot had not posted, as Slack said
_LOCAL_THREADS = 10_000  # threads this process took part in, remembered for an outage


class Participation(enum.Enum):
    """Whether the bot takes part in a thread, as far as the store can tell."""

    YES = "yes"
    NO = "no"
    UNKNOWN = "unknown"  # down, emptied, or the thread predates the store's memory: ask Slack


class ThreadMemory:
    """History, engagement and the epoch; reads say ``None`` / ``UNKNOWN`` while Redis is down,
    writes are best effort (lost during an outage: Slack still has the thread)."""

    def __init__(
        self,
        guard: Guard,
        keys: KeySchema,
        *,
        ttl_s: float,
        max_turns: int,
        turn_tokens: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._guard = guard
        self.keys = self._keys = keys
        self._ttl_s = ttl_s
        self._ttl_ms = int(ttl_s * 1000)
        self._max_turns = max_turns
        self._turn_tokens = turn_tokens
        self._clock = clock
        self._engaged_here: OrderedDict[ThreadKey, None] = OrderedDict()
        # Written while Redis was down: the turns (this process's copy, used until Redis is
        # back) and the threads whose stored history is then out of date.
        self._outage_turns: OrderedDict[ThreadKey, list[Turn]] = OrderedDict()
        self._unsynced: set[ThreadKey] = set()
        self._append = guard.redis.register_script(_APPEND_LUA)
        guard.on_recovery(self._sync)

    async def history(self, key: ThreadKey) -> list[Turn] | None:
        """The thread's stored turns, oldest first. While Redis is down: what this process
        wrote of the thread meanwhile, or None (the store cannot say)."""
        name, legacy = self._keys.thread(key), self._keys.legacy_thread(key)

        async def read(r: aioredis.Redis) -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.lrange(name, 0, -1)
                # Turns a replica of the previous version wrote after the keys were renamed
                # (a rolling upgrade): read under the old name until its TTL runs out.
                pipe.lrange(legacy, 0, -1)
                return list(await pipe.execute())

        raw = await self._guard.attempt(read, "history", None)
        if raw is None:
            return self._outage_turns.get(key)
        current, older = raw
        return [Turn.from_json(item) for item in [*older, *current]]

    async def participation(self, key: ThreadKey) -> Participation:
        """Whether the bot answered (or is answering) in this thread, if the store can say."""
        if key in self._engaged_here:
            return Participation.YES
        if not self._guard.healthy:
            return Participation.UNKNOWN  # not another wait on a server known to be down
        names = (self._keys.thread(key), self._keys.engaged(key))
        not_mine, epoch_key = self._keys.not_mine(key), self._keys.epoch

        legacy = (self._keys.legacy_thread(key), self._keys.legacy_engaged(key))

        async def look(r: aioredis.Redis) -> list[object]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.exists(*names)
                pipe.exists(not_mine)
                pipe.get(epoch_key)
                for name in legacy:  # see history(); one key a command (slots differ)
                    pipe.exists(name)
                return list(await pipe.execute())

        try:
            known, refused, epoch, *old = await self._guard.run(look, "participation")
        except StoreUnavailable:
            return Participation.UNKNOWN
        if known or any(old):
            return Participation.YES
        if refused:
            return Participation.NO
        # A new or emptied store (no epoch) remembers from now.
        began = ts_seconds(epoch) or await self.begin_epoch()
        started = ts_seconds(key.thread_ts)
        if started and started >= max(began, self._clock() - self._ttl_s):
            return Participation.NO  # any answer there would be remembered
        return Participation.UNKNOWN

    async def remembers_all(self) -> bool:
        """Whether an empty history here means there is none: the store has remembered for
        longer than the history TTL (else a conversation it lacks may predate it)."""
        epoch = ts_seconds(
            await self._guard.attempt(lambda r: r.get(self._keys.epoch), "epoch", None)
        )
        return 0 < epoch <= self._clock() - self._ttl_s

    async def begin_epoch(self) -> float:
        """Mark when this store began remembering, unless it already knows; returns the epoch."""
        now = self._clock()
        name = self._keys.epoch

        async def mark(r: aioredis.Redis) -> object:
            # Not a transaction (redis-py's cluster client runs those on threads of their own,
            # bench/README.md, issue 14): in order on one connection, the GET reads the epoch
            # that won; a flush between the two reads nothing, and "now" is then right anyway.
            async with r.pipeline(transaction=False) as pipe:
                pipe.set(name, repr(now), nx=True)
                pipe.get(name)
                return (await pipe.execute())[1]

        return ts_seconds(await self._guard.attempt(mark, "epoch", None)) or now

    async def engage(self, key: ThreadKey) -> None:
        """Mark the thread as one the bot takes part in, as soon as it starts answering there:
        a follow-up sent while the first answer is still streaming must not be ignored."""
        self._remember(key)
        name = self._keys.engaged(key)
        written = await self._guard.attempt(
            lambda r: r.set(name, "1", px=self._ttl_ms), "engage", None
        )
        if written is None:
            self._unsynced.add(key)

    async def append(self, key: ThreadKey, turns: Sequence[Turn], *, keep: int = 0) -> bool:
        """Add turns (each cut to what a prompt can hold) and keep the newest ``keep`` (at most
        ``max_turns``; 0: ``max_turns``). False when the store could not take them (they are
        kept in this process until Redis is back)."""
        self._remember(key)
        name, engaged = self._keys.thread(key), self._keys.engaged(key)
        cut = [cut_to(turn, self._turn_tokens) for turn in turns]
        stored = [turn.to_json() for turn in cut]
        newest = min(keep or self._max_turns, self._max_turns)

        async def write(r: aioredis.Redis) -> bool:
            # One script over two keys of one slot (the workspace's), not a MULTI: as atomic
            # (no reader sees the list untrimmed, no key is left without its TTL), one command,
            # and redis-py's cluster client runs a transaction's commands on threads of their
            # own while the event loop waits (bench/README.md, issue 14).
            await self._append(
                keys=[name, engaged], args=[self._ttl_ms, -newest, *stored], client=r
            )
            return True

        if not stored:
            return False
        if await self._guard.attempt(write, "append", False):
            return True
        self._unsynced.add(key)
        self._outage_turns[key] = [*self._outage_turns.get(key, ()), *cut][-newest:]
        self._outage_turns.move_to_end(key)
        if len(self._outage_turns) > _LOCAL_THREADS:
            self._outage_turns.popitem(last=False)
        return False

    async def not_mine(self, key: ThreadKey) -> None:
        """Remember that Slack showed no message of the bot in this thread."""
        name = self._keys.not_mine(key)
        await self._guard.attempt(
            lambda r: r.set(name, "1", ex=NOT_MINE_TTL_S), "participation", None
        )

    async def _sync(self) -> None:
        """After an outage: every replica is to place the threads this process answered in
        meanwhile, and their stored history, which lacks those answers, is dropped (read back
        from Slack, complete, when next needed)."""
        pending, self._unsynced = self._unsynced, set()
        self._outage_turns.clear()
        if not pending:
            return

        async def write(r: aioredis.Redis) -> None:
            async with r.pipeline(transaction=False) as pipe:
                for key in pending:
                    pipe.delete(self._keys.thread(key))
                    pipe.set(self._keys.engaged(key), "1", px=self._ttl_ms)
                await pipe.execute()

        await self._guard.attempt(write, "engage", None)

    def _remember(self, key: ThreadKey) -> None:
        self._engaged_here[key] = None
        self._engaged_here.move_to_end(key)
        if len(self._engaged_here) > _LOCAL_THREADS:
            self._engaged_here.popitem(last=False)


# KEYS: the thread's turns, its engagement.  ARGV: their TTL (ms), -(turns to keep), then the
# turns (JSON).  Appends the turns, keeps the newest, refreshes both TTLs.
_APPEND_LUA = """
for i = 3, #ARGV do redis.call('RPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], ARGV[2], -1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return 1
"""
