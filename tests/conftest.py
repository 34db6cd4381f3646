"""Shared fixtures: a clean environment, a private redis-server, the fake Slack and OpenAI servers,
and a bot started through the same composition root as ``python -m bot``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from bot.store.embedded import EmbeddedServer
from tests.redis_server import RedisServer

_LEAKY_PREFIXES = ("SLACK_", "OPENAI_", "REDIS_")
_LEAKY_NAMES = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SYSTEM_PROMPT"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the developer's or CI's environment leaks into a test."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith(_LEAKY_PREFIXES) or upper in _LEAKY_NAMES:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer.start_new(Path(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared private server, emptied for this test."""
    redis_server.start()  # a fault test may have left it stopped
    redis_server.flush()
    return redis_server.url


@pytest.fixture(scope="session")
def embedded_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded store's server (what the bot runs without REDIS_URL), for the session."""
    server = EmbeddedServer(tmp_path_factory.mktemp("embedded"))
    asyncio.run(server.__aenter__())
    yield server.url
    asyncio.run(server.__aexit__(None, None, None))


@pytest.fixture(params=["redis-server", "embedded", "cluster", "sentinel"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each back-end the store runs on, emptied for this test: contract tests run on all."""
    if request.param == "cluster":
        request.getfixturevalue("cluster_seeds")  # emptied for this test
        return str(request.getfixturevalue("redis_cluster").url)
    if request.param == "sentinel":
        return str(request.getfixturevalue("sentinel_set").url)
    if request.param == "embedded":
        url = str(request.getfixturevalue("embedded_url"))
    else:
        url = str(request.getfixturevalue("redis_url"))
    client = redis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()
    return url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, for stopping and restarting it."""
    server = RedisServer.start_new(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


# -- the fakes and a bot wired to them ------------------------------------------------------

from contextlib import asynccontextmanager  # noqa: E402
from typing import Any  # noqa: E402

from bot.compose import RunningBot, open_bot  # noqa: E402
from bot.config import Settings, load_settings  # noqa: E402
from tests.fakes.openai import FakeOpenAI  # noqa: E402
from tests.fakes.slack import FakeSlack  # noqa: E402


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


def bot_settings(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str | None, **overrides: Any
) -> Settings:
    """Settings pointing every remote at the local fakes (fast intervals for tests)."""
    values: dict[str, Any] = {
        "slack_bot_token": "xoxb-test",
        "slack_app_token": "xapp-test",
        "slack_api_url": slack.api_url,
        "openai_api_key": "sk-test",
        "openai_base_url": llm.base_url,
        "openai_model": "test-model",
        "redis_url": redis_url,
        "edit_interval": 0.1,
        "stream_mode": "edit",  # the edit renderer unless a test asks for native streams
        "edit_budget_per_minute": 600,
        "edit_budget_burst": 10,
        "final_edit_deadline": 20,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "ops_port": 0,
        "shutdown_grace": 5,
    }
    values.update(overrides)
    return load_settings(values, env_file=None)


@pytest.fixture
def start_bot(slack: FakeSlack, llm: FakeOpenAI, redis_url: str) -> Any:
    """``async with start_bot(**overrides) as running:`` — a bot connected over Socket Mode."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[RunningBot]:
        settings = bot_settings(slack, llm, overrides.pop("redis_url", redis_url), **overrides)
        connected = slack.connected
        async with open_bot(settings) as running:
            if settings.slack_mode == "socket":
                await slack.wait_connected(count=connected + 1)
            yield running

    return start


@pytest.fixture
async def bot(start_bot: Any) -> AsyncIterator[RunningBot]:
    async with start_bot() as running:
        yield running


# -- a real Redis Cluster and a Sentinel set (issue 14) -----------------------------------------

from tests.redis_cluster import RedisCluster3  # noqa: E402
from tests.redis_sentinel import SentinelSet  # noqa: E402


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster3]:
    """A 3-master Redis Cluster for the session (started on first use: about 2 s)."""
    cluster = RedisCluster3.start_new(Path(tmp_path_factory.mktemp("cluster")))
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_seeds(redis_cluster: RedisCluster3) -> str:
    """The session's cluster, emptied for this test: its seeds '127.0.0.1:p1,…,127.0.0.1:p3'."""
    redis_cluster.flush()
    return redis_cluster.seeds


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A master, a replica and a sentinel watching them as 'mymaster', for the session; the data
    nodes require ``password``, the sentinel none."""
    sset = SentinelSet.start_new(Path(tmp_path_factory.mktemp("sentinel")))
    yield sset
    sset.stop()


@pytest.fixture
def sentinel_set(redis_sentinel: SentinelSet) -> Iterator[SentinelSet]:
    """The session's Sentinel set, whole and emptied for this test: a frozen node is thawed, a
    stale master left by a failover rejoins as the replica, then FLUSHALL reaches both nodes.
    Which node is master depends on earlier tests: ask ``master_address()``."""
    redis_sentinel.thaw()
    redis_sentinel.flush(nudge=True)
    yield redis_sentinel
    redis_sentinel.thaw()  # a test that froze the master never leaves it frozen


def sync_client(url: str) -> Any:
    """A plain (synchronous) redis-py client for any REDIS_URL form the bot accepts, for tests
    that look at keys directly."""
    from urllib.parse import unquote, urlsplit

    from redis.cluster import ClusterNode, RedisCluster
    from redis.sentinel import Sentinel

    split = urlsplit(url)
    if split.scheme not in ("redis+cluster", "redis+sentinel"):
        return redis.Redis.from_url(url)
    hosts = split.netloc.rpartition("@")[2].split(",")
    nodes = [(host, int(port)) for host, _, port in (n.rpartition(":") for n in hosts)]
    password = unquote(split.password) if split.password else None
    if split.scheme == "redis+cluster":
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], password=password)
    master = split.path.strip("/").split("/")[0]
    sentinel = Sentinel(nodes)
    _sentinels.append(sentinel)  # its own connections are closed at the session's end
    return sentinel.master_for(master, password=password)


_sentinels: list[Any] = []


@pytest.fixture(scope="session", autouse=True)
def _close_sentinels() -> Iterator[None]:
    yield
    for sentinel in _sentinels:
        for client in sentinel.sentinels:
            client.close()


# -- a real MCP server for the tool tests (issue 16) -----------------------------------------------

from tests.mcp_servers import McpHttpServer  # noqa: E402


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[McpHttpServer]:
    """The MCP test server (tests/mcp_servers.py) over streamable HTTP, one per test module: its
    tools record events (``slow:cancelled`` …) a test may count."""
    server = McpHttpServer.start_new()
    yield server
    server.stop()
