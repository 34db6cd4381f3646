"""Shared fixtures: a clean environment, a private redis-server, the fake Slack and OpenAI servers,
and a bot started through the same composition root as ``python -m bot``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

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
