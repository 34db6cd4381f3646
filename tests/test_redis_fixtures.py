"""The Cluster and Sentinel fixtures are what they claim, seen through plain redis-py clients: a
3-master cluster that spreads keys over all three masters and refuses cross-slot transactions, and
a Sentinel set whose master moves on a failover and whose sentinel reports a frozen master down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot
from redis.exceptions import (
    AuthenticationError,
    ClusterCrossSlotError,
    CrossSlotTransactionError,
    MovedError,
)

from tests.redis_cluster import RedisCluster3, slot_ranges
from tests.redis_sentinel import SentinelSet

# -- Redis Cluster ------------------------------------------------------------------------------


@asynccontextmanager
async def cluster_client(cluster: RedisCluster3) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in cluster.nodes],
        decode_responses=True,
    )
    try:
        await client.initialize()
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def node_clients(cluster: RedisCluster3) -> AsyncIterator[list[aioredis.Redis]]:
    """A plain client per node, through ``node_url``: the URL the bot must refuse."""
    clients = [
        aioredis.Redis.from_url(cluster.node_url(i), decode_responses=True) for i in range(3)
    ]
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()


def owner(key: str) -> int:
    """The index of the node owning ``key``'s slot (node i holds the i-th third)."""
    slot = key_slot(key.encode())
    (index,) = [i for i, (first, last) in enumerate(slot_ranges()) if first <= slot <= last]
    return index


def one_key_per_node() -> list[str]:
    """Keys with different hash tags, the i-th landing on node i."""
    keys: dict[int, str] = {}
    for n in range(100):
        keys.setdefault(owner(f"{{T{n}}}:budget"), f"{{T{n}}}:budget")
    return [keys[i] for i in range(3)]


async def test_cluster_spreads_keys_over_all_three_masters(
    cluster_seeds: str, redis_cluster: RedisCluster3
) -> None:
    ports = [port for _, port in redis_cluster.nodes]
    assert cluster_seeds == ",".join(f"127.0.0.1:{port}" for port in ports)
    assert len(set(ports)) == 3
    keys = one_key_per_node()
    async with cluster_client(redis_cluster) as client, node_clients(redis_cluster) as nodes:
        assert {node.port for node in client.get_primaries()} == set(ports)
        for key in keys:
            assert await client.set(key, f"value of {key}")
        assert [await client.get(key) for key in keys] == [f"value of {key}" for key in keys]
        for i, key in enumerate(keys):
            assert client.get_node_from_key(key).port == ports[i]
            # Each key lives on its own node; another node answers MOVED (what a plain URL meets).
            assert await nodes[i].get(key) == f"value of {key}"
            with pytest.raises(MovedError):
                await nodes[(i + 1) % 3].get(key)
            assert await nodes[i].dbsize() == 1
        # What lets the bot refuse a plain URL to a cluster node.
        assert (await nodes[0].info("cluster"))["cluster_enabled"] == 1


async def test_cluster_refuses_a_cross_slot_transaction(
    cluster_seeds: str, redis_cluster: RedisCluster3
) -> None:
    async with cluster_client(redis_cluster) as client, node_clients(redis_cluster) as nodes:
        async with client.pipeline(transaction=True) as same_slot:
            same_slot.set("{W1}:a", "1").set("{W1}:b", "2")
            assert await same_slot.execute() == [True, True]
        async with client.pipeline(transaction=True) as cross_slot:
            cross_slot.set("{W1}:a", "3").set("{W2}:b", "4")
            with pytest.raises(CrossSlotTransactionError):
                await cross_slot.execute()
        # The server refuses it too: MULTI on one node, two keys of two slots that node owns.
        first, second = [f"{{T{n}}}" for n in range(100) if owner(f"{{T{n}}}") == 0][:2]
        assert key_slot(first.encode()) != key_slot(second.encode())
        async with nodes[0].pipeline(transaction=True) as multi:
            multi.set(first, "1").set(second, "2")
            with pytest.raises(ClusterCrossSlotError):
                await multi.execute()
        assert await client.get("{W1}:a") == "1"
        assert [await nodes[0].exists(key) for key in (first, second)] == [0, 0]


async def test_cluster_flush_empties_every_master(
    cluster_seeds: str, redis_cluster: RedisCluster3
) -> None:
    async with cluster_client(redis_cluster) as client, node_clients(redis_cluster) as nodes:
        for key in one_key_per_node():
            await client.set(key, "x")
        assert [await node.dbsize() for node in nodes] == [1, 1, 1]
        redis_cluster.flush()
        assert [await node.dbsize() for node in nodes] == [0, 0, 0]


# -- Sentinel -----------------------------------------------------------------------------------


@asynccontextmanager
async def sentinel_client(sset: SentinelSet) -> AsyncIterator[Sentinel]:
    sentinel = Sentinel(
        sset.sentinels,
        sentinel_kwargs={"password": sset.sentinel_password, "socket_timeout": 2},
        socket_timeout=2,
        decode_responses=True,
    )
    try:
        yield sentinel
    finally:
        for client in sentinel.sentinels:
            await client.aclose()


@asynccontextmanager
async def master_client(sset: SentinelSet, sentinel: Sentinel) -> AsyncIterator[aioredis.Redis]:
    client = sentinel.master_for(sset.master_name, password=sset.password)
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def plain_client(
    sset: SentinelSet, address: tuple[str, int]
) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(
        host=address[0], port=address[1], password=sset.password, decode_responses=True
    )
    try:
        yield client
    finally:
        await client.aclose()


async def test_sentinel_master_takes_password_protected_writes_the_replica_follows(
    sentinel_set: SentinelSet,
) -> None:
    assert sentinel_set.master_name == "mymaster"
    assert sentinel_set.password  # the default set exercises password handling
    url = urlsplit(sentinel_set.url)
    assert (url.scheme, unquote(url.password or ""), url.path) == (
        "redis+sentinel",
        sentinel_set.password,
        "/mymaster/0",
    )
    assert [(url.hostname, url.port)] == sentinel_set.sentinels
    async with sentinel_client(sentinel_set) as sentinel:
        assert await sentinel.discover_master("mymaster") == sentinel_set.master_address()
        async with master_client(sentinel_set, sentinel) as master:
            assert await master.set("k", "v")
            assert await master.execute_command("WAIT", 1, 1000) == 1
        replica_address = sentinel_set.replica_address()
        assert await sentinel.discover_slaves("mymaster") == [replica_address]
        async with plain_client(sentinel_set, replica_address) as replica:
            assert await replica.get("k") == "v"
        no_password = sentinel.master_for("mymaster")
        try:
            with pytest.raises(AuthenticationError):
                await no_password.ping()
        finally:
            await no_password.aclose()


async def test_sentinel_failover_moves_the_master(sentinel_set: SentinelSet) -> None:
    old = sentinel_set.master_address()
    async with sentinel_client(sentinel_set) as sentinel:
        async with master_client(sentinel_set, sentinel) as master:
            assert await master.set("before", "1")
            assert await master.execute_command("WAIT", 1, 1000) == 1
        new = await asyncio.to_thread(sentinel_set.failover)
        assert new != old
        assert set(sentinel_set.data_nodes) == {old, new}
        assert await sentinel.discover_master("mymaster") == new
        async with master_client(sentinel_set, sentinel) as master:
            assert await master.set("after", "2")
            assert await master.get("before") == "1"  # replicated before the switch
        async with plain_client(sentinel_set, new) as node:
            assert (await node.info("replication"))["role"] == "master"
            assert await node.get("after") == "2"


async def test_sentinel_reports_a_frozen_master_down_and_fails_over(
    sentinel_set: SentinelSet,
) -> None:
    (host, port) = sentinel_set.sentinels[0]
    events = aioredis.Redis(
        host=host, port=port, password=sentinel_set.sentinel_password, decode_responses=True
    )
    pubsub = events.pubsub()
    try:
        await pubsub.subscribe("+sdown", "+switch-master")
        assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"  # type: ignore[index]
        assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"  # type: ignore[index]
        replica = sentinel_set.replica_address()
        frozen = sentinel_set.freeze_master()
        began = time.monotonic()
        seen: dict[str, tuple[str, float]] = {}  # channel -> (first message, seconds after)
        try:
            while "+switch-master" not in seen and time.monotonic() - began < 10:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message is not None:
                    elapsed = time.monotonic() - began
                    seen.setdefault(message["channel"], (message["data"], elapsed))
        finally:
            sentinel_set.thaw()
        (old_host, old_port), (new_host, new_port) = frozen, replica
        sdown, sdown_after = seen["+sdown"]
        assert sdown == f"master mymaster {old_host} {old_port}"
        assert sdown_after < 5  # down-after-milliseconds is 1000
        switch, _ = seen["+switch-master"]
        assert switch == f"mymaster {old_host} {old_port} {new_host} {new_port}"
        assert sentinel_set.master_address() == replica
    finally:
        await pubsub.aclose()
        await events.aclose()


async def test_a_sentinel_with_a_password_over_data_nodes_without_one(tmp_path: Path) -> None:
    sset = SentinelSet.start_new(tmp_path, password=None, sentinel_password="sentinel-only-pw")
    try:
        assert sset.url == f"redis+sentinel://127.0.0.1:{sset.sentinels[0][1]}/mymaster/0"
        async with sentinel_client(sset) as sentinel:
            async with master_client(sset, sentinel) as master:
                assert await master.set("k", "v")
                assert await master.get("k") == "v"
        sset.sentinel_password = None
        async with sentinel_client(sset) as sentinel:
            with pytest.raises(AuthenticationError):
                await sentinel.sentinels[0].ping()
    finally:
        sset.stop()
