"""The Redis boundary against a real redis-server: history, dedupe, locks, budget, outages."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis
import redis.asyncio as aioredis

from bot.conversation import ThreadKey, Turn
from bot.errors import StoreUnavailable
from bot.store import Store, connect_redis
from tests.redis_server import RedisServer

KEY = ThreadKey("T1", "C1", "1700000000.000100")


@pytest.fixture
async def store(redis_url: str) -> Store:
    client = connect_redis(redis_url)
    yield Store(client, history_ttl_s=60, history_max_turns=4)
    await client.aclose()


async def test_history_round_trip_keeps_order_author_and_interruption(store: Store) -> None:
    assert await store.knows(KEY) is False
    turns = [Turn("user", "hi", "U1", "1.1"), Turn("assistant", "hello", None, "1.2", True)]
    await store.append_turns(KEY, turns)
    assert await store.knows(KEY) is True
    assert await store.history(KEY) == turns


async def test_history_is_bounded_and_expires(store: Store, redis_client: aioredis.Redis) -> None:
    for i in range(6):
        await store.append_turns(KEY, [Turn("user", f"m{i}", "U1")])
    assert [t.text for t in await store.history(KEY)] == ["m2", "m3", "m4", "m5"]
    ttl = await redis_client.ttl("slackbot:thread:T1:C1:1700000000.000100")
    assert 0 < ttl <= 60


async def test_first_sighting_is_true_once_per_message_and_per_event(store: Store) -> None:
    assert await store.first_sighting("T1", "C1", "1.1", "Ev1") is True
    assert await store.first_sighting("T1", "C1", "1.1", "Ev1") is False  # Slack retry
    assert await store.first_sighting("T1", "C1", "1.1", "Ev2") is False  # app_mention twin
    assert await store.first_sighting("T1", "C1", "1.2", "Ev3") is True


async def test_first_sighting_is_shared_between_two_store_clients(redis_url: str) -> None:
    a, b = connect_redis(redis_url), connect_redis(redis_url)
    try:
        results = await asyncio.gather(
            *(Store(c).first_sighting("T1", "C1", "9.9", "Ev9") for c in (a, b, a, b))
        )
    finally:
        await a.aclose()
        await b.aclose()
    assert sorted(results) == [False, False, False, True]


async def test_thread_lock_serialises_holders(store: Store) -> None:
    order: list[str] = []

    async def hold(name: str) -> None:
        async with store.thread_lock(KEY, poll_s=0.01):
            order.append(f"{name}+")
            await asyncio.sleep(0.05)
            order.append(f"{name}-")

    await asyncio.gather(hold("a"), hold("b"))
    assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])


async def test_thread_lock_of_a_dead_holder_expires(
    store: Store, redis_client: aioredis.Redis
) -> None:
    # A holder that died leaves its key; the lease lets the next one in.
    await redis_client.set("slackbot:lock:T1:C1:1700000000.000100", "dead", px=200)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with store.thread_lock(KEY, poll_s=0.02):
        waited = loop.time() - started
    assert 0.1 < waited < 2.0


async def test_token_bucket_allows_burst_then_paces(redis_url: str) -> None:
    now = [1000.0]
    client = connect_redis(redis_url)
    store = Store(client, clock=lambda: now[0])
    try:
        takes = [
            await store.take_token("T1", "chat.update", per_minute=60, burst=3) for _ in range(4)
        ]
        assert takes[:3] == [0.0, 0.0, 0.0] and takes[3] == pytest.approx(1.0, abs=0.01)
        now[0] += 1.0
        assert await store.take_token("T1", "chat.update", per_minute=60, burst=3) == 0.0
        # A reserve keeps the last tokens for final edits.
        now[0] += 2.0
        assert await store.take_token("T1", "chat.update", per_minute=60, burst=3, reserve=1) == 0.0
        assert await store.take_token("T1", "chat.update", per_minute=60, burst=3, reserve=1) > 0
        assert await store.take_token("T1", "chat.update", per_minute=60, burst=3) == 0.0
        # A 429 pauses the whole workspace.
        now[0] += 10
        await store.pause("T1", "chat.update", 2.0)
        assert await store.take_token("T1", "chat.update", per_minute=60, burst=3) > 1.0
        assert await store.take_token("T2", "chat.update", per_minute=60, burst=3) == 0.0
    finally:
        await client.aclose()


async def test_a_streaming_replys_token_also_counts_the_workspaces_streaming_replies(
    redis_url: str,
) -> None:
    now = [1000.0]
    client = connect_redis(redis_url)
    store = Store(client, clock=lambda: now[0])
    try:

        async def take(reply: str, team: str = "T1") -> tuple[float, int]:
            return await store.take_token_streaming(
                team, "chat.appendStream", reply, per_minute=60, burst=2, lease_s=5.0
            )

        assert await take("r1") == (0.0, 1)
        assert await take("r2") == (0.0, 2)
        wait, count = await take("r1")  # the same bucket as take_token: empty now
        assert wait == pytest.approx(1.0, abs=0.01) and count == 2
        assert await take("r3", team="T2") == (0.0, 1)
        # The same count as active_replies; a reply that stopped calling drops out.
        assert await store.active_replies("T1", "chat.appendStream", "r2", lease_s=5.0) == 2
        now[0] += 6.0
        assert await store.active_replies("T1", "chat.appendStream", "r1", lease_s=5.0) == 1
    finally:
        await client.aclose()


async def test_outage_degrades_then_recovers_with_one_warning(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = connect_redis(own_redis.url)
    store = Store(client)
    try:
        await store.append_turns(KEY, [Turn("user", "before", "U1")])
        own_redis.stop()
        caplog.set_level(logging.INFO, logger="bot.store")
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(3):
            with pytest.raises(StoreUnavailable):
                await store.history(KEY)
        assert loop.time() - started < 3.0  # fails fast, no multi-second stall per command
        # Dedupe falls back to memory.
        assert await store.first_sighting("T1", "C1", "5.5", "E5") is True
        assert await store.first_sighting("T1", "C1", "5.5", "E5") is False
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "Redis unavailable" in warnings[0].getMessage()
        own_redis.start()
        await store.append_turns(KEY, [Turn("user", "after", "U1")])
        assert [t.text for t in await store.history(KEY)] == ["after"]  # a fresh server
        assert store.healthy
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        await client.aclose()


async def test_connections_share_one_client_identity_worked_out_once(redis_url: str) -> None:
    # What CLIENT SETINFO tells Redis (name, version) is worked out once for the pool, not
    # looked up in the installed packages' metadata for every new connection.
    client = connect_redis(redis_url)
    pool = client.connection_pool
    connections = [await pool.get_connection() for _ in range(3)]
    try:
        identities = {id(c.driver_info) for c in connections}
        assert len(identities) == 1
        info = connections[0].driver_info
        assert info is not None and info.lib_version == redis.__version__
    finally:
        for connection in connections:
            await pool.release(connection)
        await client.aclose()
