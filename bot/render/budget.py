"""A workspace's budget for one rate-limited Slack method (chat.update by default; native streams
pace chat.appendStream the same way): one token bucket per workspace and method, shared by every
reply and every replica (in Redis), with a local bucket standing in while Redis is unavailable.

    budget = EditBudget(store.budgets, per_minute=45, burst=3, min_interval=1.0)
    if await budget.acquire("T1", Priority.PROGRESS, give_up=closing, reply_id=reply_id):
        await slack.update(...)               # (waited for a token; the reply is counted)
    await budget.interval("T1", reply_id)     # this reply's fair spacing between its edits
    await budget.rate_limited("T1", 30.0)     # Slack said 429: the whole workspace holds off
    await budget.done("T1", reply_id)

When the budget is short, edits go in ``Priority`` order: each level leaves that many tokens of
the burst to the levels before it, so an answer's last text is never queued behind other
answers' progress, and a reply still showing "Thinking…" goes before one that shows text.
Every reply streaming in a workspace spaces its interim edits by ``active replies × 60 /
per_minute`` seconds (at least ``min_interval``): together they spend the budget, and each
gets an equal share of it. A reply streaming alone in its workspace keeps back only one token
(for a newcomer's first text or its own final edit): it spends the rest of the burst at
``min_interval`` instead of waiting for a full bucket at every edit.

One process also caps its own interim calls of the method at ``process_rate`` per second over
all its streaming replies (each reply's spacing is at least ``streaming here ÷
process_rate``): an interim call costs about a millisecond of CPU (Slack, Redis, rendering),
and with a thousand replies in many workspaces the workspace budgets alone would let the
process spend more than its one core on them — every first text would then wait behind them.
First and final texts are not interim: they never wait for this spacing.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable

from bot.store import SlackBudgets

METHOD = "chat.update"  # the default method a budget paces


class Priority(enum.IntEnum):
    """Which chat.update goes first when the budget is short; the value is how many tokens of
    the burst an edit of that kind leaves for the kinds before it (capped at burst − 1)."""

    FINAL = 0  # a message's last form: the complete text, without the working indicator
    FIRST = 1  # the first text of a reply that shows only its placeholder
    PROGRESS = 2  # later interim edits


class TokenBucket:
    """A plain in-process token bucket (the same arithmetic as the Redis script).

    bucket = TokenBucket(per_minute=60, burst=3, clock=time.monotonic)
    bucket.take()             # 0.0: taken; else seconds until a token is there
    bucket.take(reserve=1)    # only when a token would still be left afterwards
    """

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
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._at) * self._rate)
        self._at = max(now, self._at)
        if self._tokens >= 1 + reserve:
            self._tokens -= 1
            return 0.0
        return (1 + reserve - self._tokens) / self._rate

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._clock() + seconds)


class EditBudget:
    """Shared pacing of chat.update calls per workspace (see the module docstring)."""

    def __init__(
        self,
        store: SlackBudgets,
        *,
        per_minute: float,
        burst: int,
        min_interval: float,
        method: str = METHOD,
        process_rate: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.method = method
        self._process_rate = process_rate
        self._store = store
        self._per_minute = per_minute
        self._burst = burst
        self._min_interval = min_interval
        self._clock = clock  # only the local stand-in buckets read it; Redis uses the store's
        self._local: dict[str, TokenBucket] = {}  # by team
        self._active_local: dict[str, set[str]] = {}
        self._intervals: dict[str, float] = {}
        self._streaming: dict[str, int] = {}  # by team: replies streaming, as last counted
        self._queues: dict[tuple[str, Priority], asyncio.Lock] = {}  # see acquire
        self._counted: dict[str, int] = {}  # by reply: streaming replies, counted by its token

    async def take(self, team: str, priority: Priority, reply_id: str | None = None) -> float:
        """One try: 0.0 when a chat.update may be sent now (the token is taken), else the
        seconds to wait before trying again. With ``reply_id`` (a streaming reply's interim
        call) the same round trip renews its lease and counts the workspace's streaming
        replies, which its next ``interval`` then uses instead of asking again."""
        reserve = max(0, min(self._reserve(team, priority), self._burst - 1))
        if reply_id is None:
            wait = await self._store.take(
                team, self.method, per_minute=self._per_minute, burst=self._burst, reserve=reserve
            )
        else:
            taken = await self._store.take_streaming(
                team,
                self.method,
                reply_id,
                per_minute=self._per_minute,
                burst=self._burst,
                reserve=reserve,
                lease_s=self._lease(team, reply_id),
            )
            if taken is not None:
                wait, self._counted[reply_id] = taken
            else:
                wait = None
        # Redis unavailable: each replica then spends the whole budget on its own (tolerable
        # for an outage).
        return self._bucket(team).take(reserve) if wait is None else wait

    async def acquire(
        self,
        team: str,
        priority: Priority,
        *,
        give_up: asyncio.Event | None = None,
        deadline: float | None = None,
        reply_id: str | None = None,
    ) -> bool:
        """Wait for one chat.update in ``team``; False when ``give_up`` was set, or the event
        loop's clock passed ``deadline``, before a token came. ``reply_id``: see ``take``.

        In one process the waiters of a workspace and priority queue (first come, first
        served) and only the first asks Redis: otherwise every waiter would wake at the same
        moment, one would get the token and the others would all ask again (at 20 replies a
        workspace that was ~14 budget scripts per reply)."""
        queue = self._queues.setdefault((team, priority), asyncio.Lock())
        wait = None
        if not queue.locked():
            wait = await self.take(team, priority, reply_id)
            if wait <= 0:
                return True
        if queue.locked():
            wait = None  # by the time this waiter's turn comes, that answer is stale
        if not await _take_turn(queue, give_up, deadline):
            return False
        try:
            return await self._poll(team, priority, give_up, deadline, wait, reply_id)
        finally:
            queue.release()

    async def _poll(
        self,
        team: str,
        priority: Priority,
        give_up: asyncio.Event | None,
        deadline: float | None,
        wait: float | None,  # what the last take said, if there was one just now
        reply_id: str | None,
    ) -> bool:
        loop = asyncio.get_running_loop()
        while True:
            if wait is None:
                wait = await self.take(team, priority, reply_id)
                if wait <= 0:
                    return True
            if give_up is not None and give_up.is_set():
                return False
            if deadline is not None:
                left = deadline - loop.time()
                if left <= 0:
                    return False
                wait = min(wait, left)
            if give_up is None:
                await asyncio.sleep(wait)
            else:
                try:
                    await asyncio.wait_for(give_up.wait(), wait)
                except TimeoutError:
                    pass
                else:
                    return False
            wait = None

    async def rate_limited(self, team: str, retry_after: float) -> None:
        """Slack said 429: every reply in the workspace holds its edits for ``retry_after``."""
        self._bucket(team).pause(retry_after)
        await self._store.pause(team, self.method, retry_after)

    async def interval(self, team: str, reply_id: str) -> float:
        """Seconds until this reply's next interim edit: its fair share of the workspace budget.

        Also says "``reply_id`` is still streaming": a reply that stops calling this drops out
        of the count after a lease of a little more than two of its intervals.
        """
        local = self._active_local.setdefault(team, set())
        local.add(reply_id)  # kept in step, so an outage starts from a fair count
        active = self._counted.pop(reply_id, None)  # counted by this call's token, if any
        if active is None:
            active = await self._store.active_replies(
                team, self.method, reply_id, lease_s=self._lease(team, reply_id)
            )
        if active is None:  # Redis unavailable
            active = len(local)
        # Alone, a reply may use the burst: the bucket itself holds it to the sustained rate.
        # Shared, each reply's spacing is its fair share of that rate.
        share = active * 60.0 / self._per_minute if active > 1 else 0.0
        self._streaming[team] = active
        self._intervals.setdefault(reply_id, self._min_interval)
        crowd = len(self._intervals) / self._process_rate if self._process_rate else 0.0
        seconds = max(self._min_interval, share, crowd)
        self._intervals[reply_id] = seconds
        return seconds

    async def done(self, team: str, reply_id: str) -> None:
        """``reply_id`` has finished: the others' share grows at their next edit."""
        local = self._active_local.get(team, set())
        local.discard(reply_id)
        self._intervals.pop(reply_id, None)
        self._counted.pop(reply_id, None)
        if local:  # counted again at the others' next edit
            self._streaming[team] = max(1, self._streaming.get(team, 1) - 1)
        else:
            self._streaming.pop(team, None)
        await self._store.finished_reply(team, self.method, reply_id)

    def _lease(self, team: str, reply_id: str) -> float:
        """How long ``reply_id`` counts as streaming after its last call: a little more than
        two of its intervals, or of the fair share at the workspace's last count if that is
        longer (when many replies start at once, its next interval jumps to it)."""
        share = self._streaming.get(team, 1) * 60.0 / self._per_minute
        return 30.0 + 2 * max(self._intervals.get(reply_id, 0.0), share)

    def _reserve(self, team: str, priority: Priority) -> int:
        """Tokens an edit of ``priority`` leaves in the bucket. Progress edits of a reply
        streaming alone leave one, like a first text: with the usual reserve (two of a burst
        of three) a lone reply could edit only when the bucket is full, i.e. at the sustained
        rate (1.33 s apart at 45/min) although its burst sits unused. Until ``interval`` has
        counted the workspace's replies, an edit is taken for one of several."""
        if priority is Priority.PROGRESS and self._streaming.get(team, 2) == 1:
            return int(Priority.FIRST)
        return int(priority)

    def _bucket(self, team: str) -> TokenBucket:
        bucket = self._local.get(team)
        if bucket is None:
            bucket = self._local[team] = TokenBucket(self._per_minute, self._burst, self._clock)
        return bucket


async def _take_turn(
    queue: asyncio.Lock, give_up: asyncio.Event | None, deadline: float | None
) -> bool:
    """Acquire ``queue`` unless ``give_up`` is set or the loop's clock passes ``deadline``
    first; True when it is held (the caller releases it)."""
    loop = asyncio.get_running_loop()
    turn = asyncio.ensure_future(queue.acquire())
    stop = asyncio.ensure_future(give_up.wait()) if give_up is not None else None
    timeout = None if deadline is None else max(0.0, deadline - loop.time())
    held = False
    try:
        await asyncio.wait(
            [turn] if stop is None else [turn, stop],
            timeout=timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        if stop is not None:
            stop.cancel()
        if not turn.done():
            turn.cancel()  # a cancelled Lock.acquire passes the lock on to the next waiter
        elif not turn.cancelled():
            held = not (
                (give_up is not None and give_up.is_set())
                or (deadline is not None and loop.time() >= deadline)
                or _being_cancelled()
            )
            if not held:
                queue.release()  # got it, but too late
    return held


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
