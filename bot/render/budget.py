"""The workspace's chat.update budget: one token bucket per workspace shared by every reply and
every replica (in Redis), with a local bucket standing in while Redis is unavailable.

    budget = EditBudget(store, per_minute=45, burst=3)
    await budget.acquire("T1", final=False)   # waits until an edit may be sent
    budget.interval("T1")                      # this reply's fair spacing between edits

Final edits take from the whole bucket; interim edits leave ``reserve`` tokens for them, so an
answer's last text is never queued behind other answers' progress edits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bot.errors import StoreUnavailable
from bot.store import Store

METHOD = "chat.update"


class TokenBucket:
    """A plain in-process token bucket (the same arithmetic as the Redis script)."""

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._paused_until = 0.0

    def take(self, reserve: int = 0) -> float:
        """0.0 when a token was taken, else seconds until one may be."""
        now = self._clock()
        if now < self._paused_until:
            return self._paused_until - now
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1 + reserve:
            self._tokens -= 1
            return 0.0
        return (1 + reserve - self._tokens) / self._rate

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)


class EditBudget:
    """Shared pacing of chat.update calls per workspace."""

    def __init__(
        self,
        store: Store,
        *,
        per_minute: float,
        burst: int,
        min_interval: float,
        reserve: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._per_minute = per_minute
        self._burst = burst
        self._min_interval = min_interval
        self._reserve = min(reserve, burst - 1)
        self._clock = clock
        self._local: dict[str, TokenBucket] = {}
        self._active_local: dict[str, set[str]] = {}

    async def acquire(
        self, team: str, *, final: bool, give_up: asyncio.Event | None = None
    ) -> bool:
        """Wait for one chat.update in ``team``; False if ``give_up`` was set while waiting."""
        reserve = 0 if final else self._reserve
        while True:
            try:
                wait = await self._store.take_token(
                    team, METHOD, per_minute=self._per_minute, burst=self._burst, reserve=reserve
                )
            except StoreUnavailable:
                wait = self._bucket(team).take(reserve)
            if wait <= 0:
                return True
            if give_up is None:
                await asyncio.sleep(wait)
                continue
            try:
                await asyncio.wait_for(give_up.wait(), wait)
            except TimeoutError:
                continue
            return False

    async def rate_limited(self, team: str, retry_after: float) -> None:
        """Slack said 429: every reply in the workspace holds its edits for ``retry_after``."""
        self._bucket(team).pause(retry_after)
        try:
            await self._store.pause(team, METHOD, retry_after)
        except StoreUnavailable:
            pass

    async def interval(self, team: str, reply_id: str) -> float:
        """Seconds between this reply's interim edits: its fair share of the workspace budget."""
        try:
            active = await self._store.active_replies(team, reply_id)
        except StoreUnavailable:
            active = len(self._active_local.setdefault(team, set()) | {reply_id})
        self._active_local.setdefault(team, set()).add(reply_id)
        return max(self._min_interval, active * 60.0 / self._per_minute)

    async def done(self, team: str, reply_id: str) -> None:
        self._active_local.get(team, set()).discard(reply_id)
        try:
            await self._store.finished_reply(team, reply_id)
        except StoreUnavailable:
            pass

    def _bucket(self, team: str) -> TokenBucket:
        bucket = self._local.get(team)
        if bucket is None:
            bucket = self._local[team] = TokenBucket(self._per_minute, self._burst, self._clock)
        return bucket
