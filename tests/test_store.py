"""The store's contracts, run once against every back-end the bot can use (a private
``redis-server``, the embedded server), and its outage policy against a server that goes away."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis

from bot.conversation import TRUNCATED_MARK, ThreadKey, Turn
from bot.errors import ConfigError
from bot.store import KeySchema, Participation, Sighting, Store, connect_redis
from bot.store.client import redis_url_problem
from bot.store.inflight import RECORD_TTL_S
from bot.store.migrate import migrate
from tests.conftest import sync_client
from tests.redis_server import RedisServer

KEY = ThreadKey("T1", "C1", "1700000000.000100")
NOW = 1_800_000_000.0  # the tests' clock: later than KEY's thread


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def open_store(store_url: str, clock: Clock) -> AsyncIterator[Callable[..., Store]]:
    """``open_store(**options)``: a store on the back-end under test (emptied first)."""
    opened: list[Store] = []

    def open_(**options: object) -> Store:
        values: dict[str, object] = {"history_ttl_s": 3600, "history_max_turns": 4, "clock": clock}
        values.update(options)
        store = Store.open(connect_redis(store_url), **values)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_
    for store in opened:
        await store.aclose()


@pytest.fixture
def store(open_store: Callable[..., Store]) -> Store:
    return open_store()


# -- thread memory -----------------------------------------------------------------------------


async def test_history_round_trip_keeps_order_author_and_interruption(store: Store) -> None:
    assert await store.history.history(KEY) == []
    turns = [Turn("user", "hi", "U1", "1.1"), Turn("assistant", "hello", None, "1.2", True)]
    assert await store.history.append(KEY, turns)
    assert await store.history.history(KEY) == turns
    assert await store.history.participation(KEY) is Participation.YES


async def test_history_keeps_the_newest_turns_cut_to_what_a_prompt_holds(
    open_store: Callable[..., Store], store_url: str
) -> None:
    store = open_store(turn_tokens=1000)
    for i in range(6):
        await store.history.append(KEY, [Turn("user", f"m{i}", "U1")])
    assert [t.text for t in await store.history.history(KEY)] == ["m2", "m3", "m4", "m5"]
    await store.history.append(KEY, [Turn("user", "newest", "U1")], keep=2)
    assert [t.text for t in await store.history.history(KEY)] == ["m5", "newest"]

    await store.history.append(KEY, [Turn("user", "x" * 40_000, "U1")])
    stored = (await store.history.history(KEY))[-1]
    assert stored.text.endswith(TRUNCATED_MARK) and len(stored.text) < 4100
    raw = sync_client(store_url)
    try:
        assert raw.memory_usage("slackbot:{T1}:thread:C1:1700000000.000100") < 12_000
        assert 0 < raw.ttl("slackbot:{T1}:thread:C1:1700000000.000100") <= 3600
    finally:
        raw.close()


async def test_participation_is_only_denied_where_the_store_would_know(
    store: Store, clock: Clock, store_url: str
) -> None:
    # A new store begins remembering now: a thread that began earlier may be the bot's.
    assert await store.history.participation(KEY) is Participation.UNKNOWN
    newer = ThreadKey("T1", "C1", f"{NOW + 10:.6f}")
    clock.now += 20
    assert await store.history.participation(newer) is Participation.NO
    await store.history.engage(newer)
    assert await store.history.participation(newer) is Participation.YES

    # Slack said the bot is not in KEY: cached.
    await store.history.not_mine(KEY)
    assert await store.history.participation(KEY) is Participation.NO

    # Past the history TTL the store may have forgotten a thread that began after its epoch.
    stale = ThreadKey("T1", "C2", f"{NOW + 15:.6f}")
    assert await store.history.participation(stale) is Participation.NO
    clock.now += 7200
    assert await store.history.participation(stale) is Participation.UNKNOWN

    # Emptied: nothing it said "no" to before can be denied any more.
    later = ThreadKey("T1", "C3", f"{clock.now - 5:.6f}")
    assert await store.history.participation(later) is Participation.NO
    raw = sync_client(store_url)
    try:
        raw.flushall()
    finally:
        raw.close()
    clock.now += 1
    assert await store.history.participation(later) is Participation.UNKNOWN


async def test_a_thread_the_process_answered_in_is_known_while_the_store_is_down(
    own_redis: RedisServer,
) -> None:
    store = Store.open(connect_redis(own_redis.url))
    try:
        await store.history.engage(KEY)
        own_redis.stop()
        other = ThreadKey("T1", "C1", "1700000001.000100")
        assert await store.history.participation(KEY) is Participation.YES  # this process's
        assert await store.history.participation(other) is Participation.UNKNOWN
        assert await store.history.history(KEY) is None  # cannot say, rather than "nothing"
        assert await store.history.append(KEY, [Turn("user", "lost", "U1")]) is False
    finally:
        await store.aclose()


async def test_threads_engaged_during_an_outage_are_known_to_every_replica_after_it(
    own_redis: RedisServer,
) -> None:
    a, b = Store.open(connect_redis(own_redis.url)), Store.open(connect_redis(own_redis.url))
    try:
        now_key = ThreadKey("T1", "C1", f"{time.time():.6f}")
        own_redis.stop()
        await a.history.engage(now_key)  # answered there while Redis was down
        own_redis.start()
        assert await a.ping()
        await a.guard.settle()
        assert await b.history.participation(now_key) is Participation.YES
    finally:
        await a.aclose()
        await b.aclose()


# -- dedupe ------------------------------------------------------------------------------------


async def test_first_sighting_once_per_message_and_per_event(store: Store) -> None:
    dedupe = store.dedupe
    assert await dedupe.first_sighting("T1", "C1", "1.1", "Ev1") is Sighting.FIRST
    assert await dedupe.first_sighting("T1", "C1", "1.1", "Ev1") is Sighting.REPEAT  # retry
    assert await dedupe.first_sighting("T1", "C1", "1.1", "Ev2") is Sighting.REPEAT  # twin
    assert await dedupe.first_sighting("T1", "C1", "1.2", "Ev3") is Sighting.FIRST


async def test_first_sighting_is_shared_between_clients(open_store: Callable[..., Store]) -> None:
    a, b = open_store(), open_store()
    results = await asyncio.gather(
        *(s.dedupe.first_sighting("T1", "C1", "9.9", "Ev9") for s in (a, b, a, b))
    )
    assert sorted(r.value for r in results) == ["first", "repeat", "repeat", "repeat"]


async def test_a_redelivery_is_vouched_for_only_by_a_store_older_than_the_message(
    store: Store, store_url: str
) -> None:
    await store.history.begin_epoch()  # at NOW
    before, after = f"{NOW - 60:.6f}", f"{NOW + 60:.6f}"
    assert await store.dedupe.first_sighting("T1", "C1", after, "E1", retry=True) is (
        Sighting.FIRST
    )  # its first delivery would have left a marker: it never came
    assert await store.dedupe.first_sighting("T1", "C1", before, "E2", retry=True) is (
        Sighting.UNVOUCHED
    )
    assert await store.dedupe.first_sighting("T1", "C1", before, "E2", retry=True) is (
        Sighting.REPEAT
    )
    raw = sync_client(store_url)
    try:
        raw.delete("slackbot:epoch")  # an emptied store
    finally:
        raw.close()
    late = f"{NOW + 120:.6f}"
    assert await store.dedupe.first_sighting("T1", "C1", late, "E3", retry=True) is (
        Sighting.UNVOUCHED
    )
    # A first delivery needs no vouching.
    assert await store.dedupe.first_sighting("T1", "C1", f"{NOW + 130:.6f}", "E4") is (
        Sighting.FIRST
    )


async def test_dedupe_during_an_outage_is_remembered_and_written_back(
    own_redis: RedisServer,
) -> None:
    a, b = Store.open(connect_redis(own_redis.url)), Store.open(connect_redis(own_redis.url))
    try:
        own_redis.stop()
        assert await a.dedupe.first_sighting("T1", "C1", "5.5", "E5") is Sighting.FIRST
        assert await a.dedupe.first_sighting("T1", "C1", "5.5", "E5") is Sighting.REPEAT
        # A fresh process cannot vouch for a redelivery while the store is down.
        assert await b.dedupe.first_sighting("T1", "C1", "5.5", "E5", retry=True) is (
            Sighting.UNVOUCHED
        )
        own_redis.start()
        assert await a.ping()  # back: what ``a`` marked meanwhile is written to the store
        await a.guard.settle()
        assert await b.dedupe.first_sighting("T1", "C1", "5.5", "E6") is Sighting.REPEAT
    finally:
        await a.aclose()
        await b.aclose()


# -- thread locks ------------------------------------------------------------------------------


async def test_thread_lock_serialises_holders(store: Store) -> None:
    order: list[str] = []

    async def hold(name: str) -> None:
        async with store.locks.hold(KEY, poll_s=0.01):
            order.append(f"{name}+")
            await asyncio.sleep(0.05)
            order.append(f"{name}-")

    await asyncio.gather(hold("a"), hold("b"))
    assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])


async def test_thread_lock_of_a_dead_holder_expires(store: Store, store_url: str) -> None:
    raw = Store.open(connect_redis(store_url))
    await raw.guard.redis.set("slackbot:{T1}:lock:C1:1700000000.000100", "dead", px=200)
    await raw.aclose()
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with store.locks.hold(KEY, poll_s=0.02):
        waited = loop.time() - started
    assert 0.1 < waited < 2.0


# -- budgets -----------------------------------------------------------------------------------


async def test_token_bucket_allows_burst_then_paces(store: Store, clock: Clock) -> None:
    budgets = store.budgets

    async def take(team: str = "T1", reserve: int = 0) -> float | None:
        return await budgets.take(team, "chat.update", per_minute=60, burst=3, reserve=reserve)

    takes = [await take() for _ in range(4)]
    assert takes[:3] == [0.0, 0.0, 0.0] and takes[3] == pytest.approx(1.0, abs=0.01)
    clock.now += 1.0
    assert await take() == 0.0
    # A reserve keeps the last tokens for final edits.
    clock.now += 2.0
    assert await take(reserve=1) == 0.0
    assert (await take(reserve=1) or 0) > 0
    assert await take() == 0.0
    # A 429 pauses the whole workspace.
    clock.now += 10
    await budgets.pause("T1", "chat.update", 2.0)
    assert (await take() or 0) > 1.0
    assert await take("T2") == 0.0


async def test_a_streaming_replys_token_also_counts_the_workspaces_streaming_replies(
    store: Store, clock: Clock
) -> None:
    budgets = store.budgets

    async def take(reply: str, team: str = "T1") -> tuple[float, int] | None:
        return await budgets.take_streaming(
            team, "chat.appendStream", reply, per_minute=60, burst=2, lease_s=5.0
        )

    assert await take("r1") == (0.0, 1)
    assert await take("r2") == (0.0, 2)
    taken = await take("r1")  # the same bucket as take: empty now
    assert taken is not None and taken[0] == pytest.approx(1.0, abs=0.01) and taken[1] == 2
    assert await take("r3", team="T2") == (0.0, 1)
    # The same count as active_replies; a reply that stopped calling drops out.
    assert await budgets.active_replies("T1", "chat.appendStream", "r2", lease_s=5.0) == 2
    clock.now += 6.0
    assert await budgets.active_replies("T1", "chat.appendStream", "r1", lease_s=5.0) == 1
    await budgets.finished_reply("T1", "chat.appendStream", "r1")
    assert await budgets.active_replies("T1", "chat.appendStream", "r9", lease_s=5.0) == 1


# -- limits, usage, feedback -------------------------------------------------------------------


async def test_rate_limit_counts_within_a_window(store: Store, clock: Clock) -> None:
    clock.now = 3600 * 500_000.0  # the start of a window
    waits = [await store.usage.hit_rate("T1", "U1", limit=2, window_s=3600) for _ in range(3)]
    assert waits[:2] == [0.0, 0.0] and waits[2] == pytest.approx(3600)
    assert await store.usage.hit_rate("T1", "U2", limit=2, window_s=3600) == 0.0
    clock.now += 3600
    assert await store.usage.hit_rate("T1", "U1", limit=2, window_s=3600) == 0.0


async def test_the_keys_an_answer_writes_all_expire(
    store: Store, clock: Clock, store_url: str
) -> None:
    clock.now = 3600 * 500_000.0
    await store.usage.hit_rate("T1", "U1", limit=2, window_s=3600)
    await store.history.append(KEY, [Turn("user", "hi", "U1")])
    raw = sync_client(store_url)
    try:
        assert 0 < raw.ttl("slackbot:{T1}:rate:U1:500000") <= 3601
        assert 0 < raw.ttl("slackbot:{T1}:engaged:C1:1700000000.000100") <= 3600
    finally:
        raw.close()


async def test_usage_and_feedback_are_counted_per_day(store: Store) -> None:
    usage = store.usage
    await usage.record("T1", "C1", "U1", {"prompt_tokens": 10, "total_tokens": 15})
    await usage.record("T1", "C2", "U2", {"total_tokens": 5})
    assert await usage.tokens_today("T1", "U1") == (20, 15)
    assert await usage.tokens_today("T2", "U1") == (0, 0)
    assert await usage.record_feedback("T1", "C1", "9.1", "U1", "good") is None
    assert await usage.record_feedback("T1", "C1", "9.1", "U1", "bad") == "good"
    assert await usage.record_feedback("T1", "C1", "9.1", "U1", "bad") == "bad"


# -- the stop relay ----------------------------------------------------------------------------


async def test_a_stop_published_by_one_client_reaches_another(
    open_store: Callable[..., Store],
) -> None:
    listener, speaker = open_store(), open_store()
    received: asyncio.Queue[str] = asyncio.Queue()

    async def listen() -> None:
        async for reply_id in listener.stops.requests():
            await received.put(reply_id)

    task = asyncio.create_task(listen())
    try:
        for _ in range(100):  # until the subscription is up
            assert await speaker.stops.publish("r1")
            try:
                assert await asyncio.wait_for(received.get(), 0.05) == "r1"
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("the stop never arrived")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# -- replies in flight -------------------------------------------------------------------------


def _record(owner: str, ts: str = "1.2", **extra: object) -> dict[str, object]:
    return {"owner": owner, "team": "T1", "channel": "C1", "thread_ts": "1.1", "ts": ts, **extra}


async def test_orphans_are_the_replies_of_dead_owners_each_claimed_once(
    open_store: Callable[..., Store],
) -> None:
    a, b = open_store(), open_store()
    await a.inflight.heartbeat("alive", lease_s=30)
    await a.inflight.track("r1", _record("alive"))
    await a.inflight.track("r2", _record("dead", final=True))
    await a.inflight.track("r3", _record("dead", ts="1.3"))
    await a.inflight.track("r4", _record("alive", ts="1.4"))
    await a.inflight.untrack("r4")
    claimed = await asyncio.gather(a.inflight.orphans(), b.inflight.orphans())
    found = sorted((i, r["ts"], r.get("final")) for batch in claimed for i, r in batch)
    assert found == [("r2", "1.2", True), ("r3", "1.3", None)]
    assert await a.inflight.orphans() == []


async def test_records_expire_even_if_their_untrack_was_lost(
    store: Store, clock: Clock, store_url: str
) -> None:
    await store.inflight.track("r1", _record("dead"))
    raw = sync_client(store_url)
    try:
        assert 0 < raw.ttl("slackbot:reply:r1") <= RECORD_TTL_S
        clock.now += RECORD_TTL_S + 1
        raw.delete("slackbot:reply:r1")  # as the server's expiry would
        assert await store.inflight.orphans() == []
        assert raw.zcard("slackbot:replies") == 0  # the index does not grow either
    finally:
        raw.close()


async def test_records_left_by_an_older_version_are_still_finished(
    store: Store, store_url: str
) -> None:
    raw = sync_client(store_url)
    try:
        raw.hset("slackbot:inflight", "old", json.dumps(_record("gone-1")))
        raw.hset("slackbot:inflight", "broken", "{not json")
        assert [(i, r["owner"]) for i, r in await store.inflight.orphans()] == [("old", "gone-1")]
        assert raw.exists("slackbot:inflight") == 0
    finally:
        raw.close()


# -- the outage policy (one server of the test's own, stopped and started) ---------------------


async def test_outage_degrades_then_recovers_with_one_warning(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = Store.open(connect_redis(own_redis.url))
    try:
        await store.history.append(KEY, [Turn("user", "before", "U1")])
        own_redis.stop()
        caplog.set_level(logging.INFO, logger="bot.store")
        loop = asyncio.get_running_loop()
        started = loop.time()
        for _ in range(3):
            assert await store.history.history(KEY) is None
        assert loop.time() - started < 3.0  # fails fast, no multi-second stall per command
        assert not store.healthy
        assert await store.budgets.take("T1", "chat.update", per_minute=60, burst=3) is None
        assert await store.usage.hit_rate("T1", "U1", limit=1, window_s=60) == 0.0
        assert await store.inflight.orphans() == []
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "Redis unavailable" in warnings[0].getMessage()
        own_redis.start()
        await store.history.append(KEY, [Turn("user", "after", "U1")])
        assert [t.text for t in await store.history.history(KEY) or []] == ["after"]
        assert store.healthy
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        await store.aclose()


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


# -- schema and connections ----------------------------------------------------------------------


async def test_an_upgrade_renames_the_old_keys_and_keeps_their_ttls(
    store: Store, store_url: str
) -> None:
    raw = sync_client(store_url)
    try:
        raw.rpush("slackbot:thread:T1:C1:17.1", Turn("user", "kept", "U1").to_json())
        raw.expire("slackbot:thread:T1:C1:17.1", 500)
        raw.set("slackbot:engaged:T1:C1:17.1", "1", ex=500)
        raw.hset("slackbot:feedback:T1:C1:17.2", "U1", "good")
        raw.hset("slackbot:usage:T1:20261205", "team:total_tokens", 7)
        raw.set("slackbot:seen:msg:T1:C1:17.3", "1", ex=60)
        # Written by an upgraded replica meanwhile: merged, the older turns first.
        raw.rpush("slackbot:{T1}:thread:C1:17.4", Turn("user", "newer", "U1").to_json())
        raw.rpush("slackbot:thread:T1:C1:17.4", Turn("user", "older", "U1").to_json())
        raw.hset("slackbot:{T1}:usage:20261205", "team:total_tokens", 3)
        raw.hset("slackbot:{T1}:feedback:C1:17.2", "U1", "bad")  # the newer vote
        raw.set("slackbot:unrelated", "1")
        raw.delete("slackbot:schema")

        if store_url.startswith("redis+cluster"):
            # Schema 1 never ran on a cluster (it could not): nothing there is renamed.
            assert await migrate(store.guard, KeySchema(), cluster=True) == 0
            assert raw.get("slackbot:schema") == b"2"
            return
        assert await migrate(store.guard, KeySchema()) == 3  # renamed; the 3 merged not counted
        assert [
            t.text for t in await store.history.history(ThreadKey("T1", "C1", "17.1")) or []
        ] == ["kept"]
        assert 0 < raw.ttl("slackbot:{T1}:thread:C1:17.1") <= 500
        assert await store.history.participation(ThreadKey("T1", "C1", "17.1")) is Participation.YES
        assert raw.hget("slackbot:{T1}:usage:20261205", "team:total_tokens") == b"10"  # 7 + 3
        assert raw.hget("slackbot:{T1}:feedback:C1:17.2", "U1") == b"bad"
        assert await store.dedupe.first_sighting("T1", "C1", "17.3", None) is Sighting.REPEAT
        assert [
            t.text for t in await store.history.history(ThreadKey("T1", "C1", "17.4")) or []
        ] == ["older", "newer"]
        assert raw.exists("slackbot:thread:T1:C1:17.4", "slackbot:thread:T1:C1:17.1") == 0
        assert raw.get("slackbot:unrelated") == b"1"
        assert raw.get("slackbot:schema") == b"2"
        assert await migrate(store.guard, KeySchema()) == 0  # once
        # A replica of the old version still writing during a rolling upgrade: read there.
        raw.rpush("slackbot:thread:T1:C1:17.5", Turn("user", "from an old replica", "U1").to_json())
        raw.set("slackbot:engaged:T1:C1:17.6", "1")
        late = ThreadKey("T1", "C1", "17.5")
        assert [t.text for t in await store.history.history(late) or []] == ["from an old replica"]
        assert await store.history.participation(late) is Participation.YES
        assert await store.history.participation(ThreadKey("T1", "C1", "17.6")) is Participation.YES
    finally:
        raw.close()


async def test_a_message_delivered_twice_at_once_is_answered_exactly_once(
    open_store: Callable[..., Store],
) -> None:
    # The message marker and the event marker of each delivery, claimed concurrently by four
    # clients: exactly one may answer (not zero, as two markers set separately allowed).
    stores = [open_store() for _ in range(4)]
    for n in range(50):
        ts = f"{NOW + n:.6f}"
        results = await asyncio.gather(
            *(s.dedupe.first_sighting("T1", "C1", ts, f"Ev{n}") for s in stores)
        )
        assert [r for r in results if r is Sighting.FIRST] == [Sighting.FIRST], (n, results)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("memcached://localhost", "expected redis://"),
        ("redis://10.0.0.1:6379,10.0.0.2:6379/0", "use redis+cluster://"),
        ("redis+cluster://", "no host:port"),
        ("redis+cluster://10.0.0.1:port", "is not host:port"),
        ("redis+sentinel://10.0.0.1:26379", "names the master"),
        ("redis+sentinel://10.0.0.1:26379/mymaster/zero", "must be a number"),
    ],
)
def test_a_malformed_redis_url_is_refused_in_words(url: str, problem: str) -> None:
    message = redis_url_problem(url)
    assert message is not None and problem in message


def test_every_documented_redis_url_form_is_accepted() -> None:
    for url in (
        "redis://localhost:6379/0",
        "rediss://:pw@redis.example.com:6380/1",
        "unix:///run/redis.sock",
        "redis+cluster://10.0.0.1:6379,10.0.0.2:6379",
        "rediss+cluster://user:pw@10.0.0.1:6379/",
        "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster/0?sentinel_password=spw",
    ):
        assert redis_url_problem(url) is None, url


async def test_a_plain_url_to_one_cluster_node_stops_the_bot_with_a_clear_message(
    start_bot: Any, redis_cluster: Any
) -> None:
    with pytest.raises(ConfigError) as refused:
        async with start_bot(redis_url=redis_cluster.node_url(0)):
            pass
    assert "redis+cluster://" in refused.value.problems[0]


async def test_the_bot_answers_on_a_cluster_and_behind_sentinel(
    start_bot: Any, cluster_seeds: str, redis_cluster: Any, sentinel_set: Any, slack: Any, llm: Any
) -> None:
    from tests.fakes.openai import echo_last_user
    from tests.fakes.slack import mention_event, message_event
    from tests.test_e2e_rules import answered

    llm.default = echo_last_user
    for url in (redis_cluster.url, sentinel_set.url):
        async with start_bot(redis_url=url):
            first = mention_event(f"first on {url[:14]}")
            await slack.send_event(first)
            await answered(slack, first["text"].split("> ", 1)[-1])
            follow_up = message_event(f"then on {url[:14]}", thread_ts=first["ts"])
            await slack.send_event(follow_up)
            await answered(slack, follow_up["text"])
        assert [m["content"] for m in llm.requests[-1].messages[1:]][-3:] == [
            f"first on {url[:14]}",
            f"first on {url[:14]}",
            f"then on {url[:14]}",
        ]


# -- Sentinel failover -----------------------------------------------------------------------------


async def test_stops_still_arrive_after_sentinel_replaced_a_frozen_master(
    sentinel_set: Any,
) -> None:
    listener = Store.open(connect_redis(sentinel_set.url))
    received: asyncio.Queue[str] = asyncio.Queue()

    async def listen() -> None:
        async for reply_id in listener.stops.requests():
            await received.put(reply_id)

    task = asyncio.create_task(listen())
    speaker = Store.open(connect_redis(sentinel_set.url))
    try:
        for _ in range(100):  # until the subscription is up
            await speaker.stops.publish("before")
            try:
                assert await asyncio.wait_for(received.get(), 0.05) == "before"
                break
            except TimeoutError:
                continue
        sentinel_set.freeze_master()  # the subscriber's server goes silent; Sentinel fails over
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 25
        while loop.time() < deadline:  # the speaker reaches the new master once it is promoted
            await speaker.stops.publish("after")
            try:
                if await asyncio.wait_for(received.get(), 0.5) == "after":
                    break
            except TimeoutError:
                continue
        else:
            raise AssertionError("no Stop arrived after the failover")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sentinel_set.thaw()
        await listener.aclose()
        await speaker.aclose()


async def test_a_conversation_goes_on_through_a_sentinel_failover(
    start_bot: Any, sentinel_set: Any, slack: Any, llm: Any
) -> None:
    from tests.fakes.openai import echo_last_user
    from tests.fakes.slack import mention_event, message_event
    from tests.test_e2e_rules import answered
    from tests.views import working

    llm.default = echo_last_user
    async with start_bot(redis_url=sentinel_set.url):
        first = mention_event("before the failover")
        await slack.send_event(first)
        await answered(slack, "before the failover")
        sentinel_set.failover()
        await slack.send_event(message_event("after the failover", thread_ts=first["ts"]))
        await answered(slack, "after the failover", timeout=20)
        assert [m["content"] for m in llm.requests[-1].messages[1:]] == [
            "before the failover",
            "before the failover",
            "after the failover",
        ]
    assert not any(working(m) for m in slack.bot_messages())
