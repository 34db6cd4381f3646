"""The workspace edit budget: token bucket arithmetic on a fake clock, sharing through a real
Redis between two "processes", 429 pauses, fair-share intervals, and the outage fallback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from bot.render.budget import EditBudget, Priority, TokenBucket
from bot.store import Store, connect_redis
from tests.redis_server import RedisServer


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def stores(redis_url: str, clock: FakeClock) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on two connections: two bot processes sharing one Redis."""
    a, b = connect_redis(redis_url), connect_redis(redis_url)
    yield Store.open(a, clock=clock), Store.open(b, clock=clock)
    await a.aclose()
    await b.aclose()


def budget(store: Store, clock: FakeClock, **overrides: float) -> EditBudget:
    values: dict[str, float] = {"per_minute": 60, "burst": 3, "min_interval": 1.0}
    values.update(overrides)
    return EditBudget(
        store.budgets,
        per_minute=values["per_minute"],
        burst=int(values["burst"]),
        min_interval=values["min_interval"],
        clock=clock,
    )


def test_local_bucket_bursts_paces_and_keeps_a_reserve(clock: FakeClock) -> None:
    bucket = TokenBucket(per_minute=60, burst=3, clock=clock)
    assert [bucket.take(reserve=1) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert bucket.take() == 0.0  # the reserved token is there for a final edit
    assert bucket.take() == pytest.approx(1.0)
    clock.advance(1.0)
    assert bucket.take() == 0.0
    bucket.pause(5)
    clock.advance(10)
    assert bucket.take() == 0.0  # refilled while paused, usable after
    bucket.pause(5)
    assert bucket.take() == pytest.approx(5.0)


async def test_two_processes_share_one_bucket_in_priority_order(
    stores: tuple[Store, Store], clock: FakeClock
) -> None:
    one, two = budget(stores[0], clock), budget(stores[1], clock)
    # Burst 3: a progress edit leaves 2 tokens, a first text 1, a final edit takes the last.
    assert await one.take("T1", Priority.PROGRESS) == 0.0
    assert await two.take("T1", Priority.PROGRESS) == pytest.approx(1.0)
    assert await two.take("T1", Priority.FIRST) == 0.0
    assert await one.take("T1", Priority.FIRST) == pytest.approx(1.0)
    assert await one.take("T1", Priority.FINAL) == 0.0
    assert await two.take("T1", Priority.FINAL) == pytest.approx(1.0)
    # Another workspace has a budget of its own.
    assert await two.take("T2", Priority.PROGRESS) == 0.0
    # Time refills the shared bucket at per_minute / 60 a second.
    clock.advance(2.0)
    assert await two.take("T1", Priority.PROGRESS) == pytest.approx(1.0)  # 2 of 3 tokens
    assert await one.take("T1", Priority.FIRST) == 0.0
    assert await two.take("T1", Priority.FIRST) == pytest.approx(1.0)
    assert await two.take("T1", Priority.FINAL) == 0.0


async def test_a_reply_streaming_alone_spends_the_burst_but_one_token(
    stores: tuple[Store, Store], clock: FakeClock
) -> None:
    one, two = budget(stores[0], clock, per_minute=45), budget(stores[1], clock, per_minute=45)
    await one.interval("T1", "r1")  # alone in T1
    # Its progress edits leave one token (for a newcomer's first text or its final edit), not
    # two: at 1 s apart it is not held to the sustained rate while its burst is unused.
    assert await one.take("T1", Priority.FIRST) == 0.0
    clock.advance(1.0)
    assert await one.take("T1", Priority.PROGRESS) == 0.0
    clock.advance(1.0)
    assert await one.take("T1", Priority.PROGRESS) == 0.0
    assert await one.take("T1", Priority.PROGRESS) > 0.0  # the last token stays back
    assert await two.take("T1", Priority.FINAL) == 0.0
    # Once another reply streams there, progress edits leave two tokens again.
    clock.advance(60)
    await two.interval("T1", "r2")
    await one.interval("T1", "r1")
    assert await one.take("T1", Priority.PROGRESS) == 0.0
    assert await one.take("T1", Priority.PROGRESS) == pytest.approx(60 / 45, abs=0.01)
    # And alone again after the other one is done.
    await two.done("T1", "r2")
    await one.interval("T1", "r1")
    assert await one.take("T1", Priority.PROGRESS) == 0.0


async def test_a_small_burst_caps_the_reserve(
    stores: tuple[Store, Store], clock: FakeClock
) -> None:
    tiny = budget(stores[0], clock, burst=1)
    assert await tiny.take("T1", Priority.PROGRESS) == 0.0  # nothing left to keep back
    assert await tiny.take("T1", Priority.FINAL) == pytest.approx(1.0)


async def test_a_429_pauses_every_process_for_retry_after(stores: tuple[Store, Store]) -> None:
    # The pause lives in Redis with a real-time TTL, so this test runs on the real clock.
    one = EditBudget(stores[0].budgets, per_minute=6000, burst=5, min_interval=0.1)
    two = EditBudget(stores[1].budgets, per_minute=6000, burst=5, min_interval=0.1)
    loop = asyncio.get_running_loop()
    await one.rate_limited("T1", 0.4)
    paused_at = loop.time()
    assert 0.2 < await two.take("T1", Priority.FINAL) <= 0.4
    assert await one.take("T1", Priority.PROGRESS) > 0.2
    assert await two.take("T2", Priority.PROGRESS) == 0.0  # only that workspace is paused
    assert await two.acquire("T1", Priority.FINAL)
    assert loop.time() - paused_at >= 0.35


async def test_acquire_gives_up_on_the_event_or_the_deadline(
    stores: tuple[Store, Store], clock: FakeClock
) -> None:
    slow = budget(stores[0], clock, per_minute=1, burst=1)  # one token, then one a minute
    assert await slow.acquire("T1", Priority.FINAL)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await slow.acquire("T1", Priority.FINAL, deadline=loop.time() + 0.2)
    assert 0.15 < loop.time() - started < 2.0

    closing = asyncio.Event()
    waiter = asyncio.create_task(slow.acquire("T1", Priority.PROGRESS, give_up=closing))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    closing.set()
    assert await asyncio.wait_for(waiter, 1.0) is False


async def _budget_scripts(redis_url: str) -> int:
    client = connect_redis(redis_url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_waiters_in_one_process_queue_instead_of_all_asking_redis(redis_url: str) -> None:
    # The real clock: 100 tokens a second, one at a time.
    client = connect_redis(redis_url)
    try:
        await _queue_for_tokens(
            redis_url,
            EditBudget(Store.open(client).budgets, per_minute=6000, burst=1, min_interval=0.1),
        )
    finally:
        await client.aclose()


async def _queue_for_tokens(redis_url: str, edits: EditBudget) -> None:
    assert await edits.acquire("T1", Priority.FINAL)  # the bucket is empty now
    before = await _budget_scripts(redis_url)
    served: list[int] = []

    async def wait_for_a_token(index: int) -> None:
        assert await edits.acquire("T1", Priority.FINAL, deadline=loop.time() + 10)
        served.append(index)

    loop = asyncio.get_running_loop()
    closing = asyncio.Event()
    quitter = asyncio.create_task(edits.acquire("T1", Priority.FINAL, give_up=closing))
    waiters = [asyncio.create_task(wait_for_a_token(i)) for i in range(10)]
    await asyncio.sleep(0)
    closing.set()  # one waiter leaves the queue: the others are not held up by it
    assert await asyncio.wait_for(quitter, 1.0) is False
    await asyncio.wait_for(asyncio.gather(*waiters), 10.0)
    assert sorted(served) == list(range(10))
    # Each waiter asks on arrival and a time or two when its turn comes; without the queue
    # all of them would ask again every time a token came (about 10 + 9 + … + 1 = 55).
    assert await _budget_scripts(redis_url) - before <= 3 * 11


async def test_interval_is_a_fair_share_of_the_budget(
    stores: tuple[Store, Store], clock: FakeClock
) -> None:
    one, two = budget(stores[0], clock, per_minute=45), budget(stores[1], clock, per_minute=45)
    # Alone, a reply is held only to the minimum interval (the bucket paces its sustained rate).
    assert await one.interval("T1", "r1") == pytest.approx(1.0)
    assert await two.interval("T1", "r2") == pytest.approx(2 * 60 / 45)
    assert await two.interval("T1", "r3") == pytest.approx(3 * 60 / 45)
    assert await one.interval("T2", "r4") == pytest.approx(1.0)  # other workspace
    await two.done("T1", "r3")
    assert await one.interval("T1", "r1") == pytest.approx(2 * 60 / 45)
    # A reply that died without done() drops out once its lease runs out.
    clock.advance(60)
    assert await one.interval("T1", "r1") == pytest.approx(1.0)
    # Never below the configured minimum.
    quick = budget(stores[0], clock, per_minute=600, min_interval=1.0)
    assert await quick.interval("T3", "r5") == 1.0


async def test_a_streaming_replys_token_counts_it_so_its_interval_asks_redis_nothing_more(
    stores: tuple[Store, Store], clock: FakeClock, redis_url: str
) -> None:
    one = budget(stores[0], clock, per_minute=45, burst=10)
    two = budget(stores[1], clock, per_minute=45, burst=10)
    assert await two.acquire("T1", Priority.PROGRESS, reply_id="r2")  # another process's
    assert await one.acquire("T1", Priority.PROGRESS, reply_id="r1")
    before = await _budget_scripts(redis_url)
    assert await one.interval("T1", "r1") == pytest.approx(2 * 60 / 45)  # r1 and r2 stream
    assert await _budget_scripts(redis_url) == before  # counted by r1's token
    # Without a token just taken, the interval counts by itself (and renews the lease).
    assert await one.interval("T1", "r1") == pytest.approx(2 * 60 / 45)
    assert await _budget_scripts(redis_url) == before + 1


async def test_many_replies_in_one_process_are_spaced_by_its_own_rate(
    stores: tuple[Store, Store], clock: FakeClock
) -> None:
    """A thousand replies in a thousand workspaces: each workspace's budget would allow an edit
    a second each, but the process sends at most ``process_rate`` interim calls a second."""
    paced = EditBudget(
        stores[0].budgets, per_minute=45, burst=3, min_interval=1.0, process_rate=100, clock=clock
    )
    for i in range(99):
        assert await paced.interval(f"T{i}", f"r{i}") == pytest.approx(1.0)
    assert await paced.interval("T99", "r99") == pytest.approx(1.0)  # 100 streaming: 1 s
    for i in range(100, 300):
        await paced.interval(f"T{i}", f"r{i}")
    assert await paced.interval("T0", "r0") == pytest.approx(3.0)  # 300 replies, 100/s
    for i in range(200):
        await paced.done(f"T{i}", f"r{i}")
    assert await paced.interval("T250", "r250") == pytest.approx(1.0)  # back to 100
    # Another process's replies don't count: each process spends its own CPU.
    other = EditBudget(
        stores[1].budgets, per_minute=45, burst=3, min_interval=1.0, process_rate=100, clock=clock
    )
    assert await other.interval("T9999", "x1") == pytest.approx(1.0)


async def test_redis_outage_falls_back_to_a_local_bucket(
    own_redis: RedisServer, clock: FakeClock
) -> None:
    client = connect_redis(own_redis.url)
    try:
        edits = budget(Store.open(client, clock=clock), clock)
        own_redis.stop()
        assert await edits.take("T1", Priority.PROGRESS) == 0.0
        assert await edits.take("T1", Priority.PROGRESS) == pytest.approx(1.0)
        assert await edits.take("T1", Priority.FIRST) == 0.0
        assert await edits.take("T1", Priority.FINAL) == 0.0
        assert await edits.take("T1", Priority.FINAL) == pytest.approx(1.0)
        clock.advance(1.0)
        await edits.rate_limited("T1", 5)  # remembered locally
        assert await edits.take("T1", Priority.FINAL) == pytest.approx(5.0)
        assert await edits.interval("T1", "r1") == pytest.approx(1.0)
        assert await edits.interval("T1", "r2") == pytest.approx(2.0)
        await edits.done("T1", "r2")
        assert await edits.interval("T1", "r1") == pytest.approx(1.0)
    finally:
        await client.aclose()
