"""Connecting to the store: one ``REDIS_URL`` names a standalone server, a Cluster or a Sentinel
set, and the client made for it fails fast while Redis is down.

    connect_redis("redis://localhost:6379/0")                       # also rediss://, unix://
    connect_redis("redis+cluster://:pw@10.0.0.1:6379,10.0.0.2:6379")    # seed nodes
    connect_redis("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster/0"
                  "?sentinel_password=spw")                         # sentinels, master name, db

``rediss+cluster://`` and ``rediss+sentinel://`` use TLS. The password in the URL is the data
nodes'; a Sentinel set's own password, if it has one, is ``sentinel_password``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

from bot.errors import ConfigError

STANDALONE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")

# Fail fast while Redis is down (redis-py's defaults stall seconds per command), and let a
# burst of replies wait for a pooled connection rather than look like an outage.
_TIMEOUTS: dict[str, Any] = {"socket_connect_timeout": 1.0, "socket_timeout": 2.0}


def _retry() -> Retry:
    return Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=1)


@dataclass(frozen=True, slots=True)
class _Url:
    """The parts of a cluster or sentinel URL."""

    tls: bool
    nodes: list[tuple[str, int]]
    username: str | None
    password: str | None
    path: list[str]
    query: dict[str, str]


def redis_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a REDIS_URL, in words (None: nothing)."""
    try:
        _client(url, check_only=True)
    except ConfigError as exc:
        return exc.problems[0]
    return None


def connect_redis(url: str) -> aioredis.Redis:
    """The client for ``url`` (see the module docstring); ``ConfigError`` when it is malformed.
    A cluster client is not an ``aioredis.Redis``, but offers every command the store uses."""
    client: aioredis.Redis = _client(url, check_only=False)
    return client


def is_cluster(redis: object) -> bool:
    return isinstance(redis, RedisCluster)


async def close_redis(redis: aioredis.Redis) -> None:
    """Close a client made by ``connect_redis``, and for Sentinel the sentinels' connections
    too (the master's client does not own them)."""
    await redis.aclose()
    manager = getattr(getattr(redis, "connection_pool", None), "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()


def _client(url: str, *, check_only: bool) -> Any:
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in STANDALONE_SCHEMES:
        if "," in urlsplit(url).netloc.rpartition("@")[2]:  # hosts, not a password
            raise ConfigError(
                [
                    "REDIS_URL: several hosts in a redis:// URL; use redis+cluster://h1:p1,h2:p2 "
                    "for a Cluster or redis+sentinel://h1:p1,h2:p2/master for Sentinel"
                ]
            )
        if check_only:
            return None
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=1024,
            timeout=2.0,
            retry=_retry(),
            health_check_interval=15,
            **_TIMEOUTS,
            **_driver_info(),
        )
        return aioredis.Redis.from_pool(pool)
    if scheme in CLUSTER_SCHEMES:
        form = "redis+cluster://[user:password@]host:port[,host:port…][/0]"
        parts = _parse(url, form)
        if parts.path not in ([], ["0"]) or parts.query:
            raise ConfigError([f"REDIS_URL: a Cluster has only database 0 and no options: {form}"])
        if check_only:
            return None
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in parts.nodes],
            username=parts.username,
            password=parts.password,
            ssl=parts.tls,
            max_connections=1024,
            retry=_retry(),
            health_check_interval=15,
            **_TIMEOUTS,
            **_driver_info(),
        )
    if scheme in SENTINEL_SCHEMES:
        form = "redis+sentinel://[user:password@]host:port[,host:port…]/master_name[/db]"
        parts = _parse(url, form)
        if not parts.path or not parts.path[0]:
            raise ConfigError([f"REDIS_URL: a Sentinel URL names the master: {form}"])
        try:
            db = int(parts.path[1]) if len(parts.path) > 1 and parts.path[1] else 0
        except ValueError:
            raise ConfigError([f"REDIS_URL: the database must be a number: {form}"]) from None
        if check_only:
            return None
        sentinel_auth = {
            "username": parts.query.get("sentinel_username"),
            "password": parts.query.get("sentinel_password"),
        }
        sentinel = Sentinel(
            parts.nodes,
            sentinel_kwargs={**_TIMEOUTS, **{k: v for k, v in sentinel_auth.items() if v}},
            **_TIMEOUTS,
        )
        return sentinel.master_for(
            parts.path[0],
            db=db,
            username=parts.username,
            password=parts.password,
            ssl=parts.tls,
            max_connections=1024,
            retry=_retry(),
            health_check_interval=15,
            **_driver_info(),
        )
    raise ConfigError(
        [
            "REDIS_URL: expected redis://, rediss://, unix:// (one server), "
            "redis+cluster:// (Cluster seed nodes) or redis+sentinel:// (Sentinel), "
            f"not {scheme + '://' if scheme else 'this'}"
        ]
    )


def _parse(url: str, form: str) -> _Url:
    split = urlsplit(url)
    userinfo, _, hosts = split.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    nodes: list[tuple[str, int]] = []
    for node in filter(None, hosts.split(",")):
        host, _, port = node.rpartition(":")
        try:
            nodes.append((host.strip("[]") or "localhost", int(port)))
        except ValueError:
            raise ConfigError([f"REDIS_URL: '{node}' is not host:port; expected {form}"]) from None
    if not nodes:
        raise ConfigError([f"REDIS_URL: no host:port given; expected {form}"])
    query = {k: v[-1] for k, v in parse_qs(split.query).items()}
    return _Url(
        tls=split.scheme.lower().startswith("rediss"),
        nodes=nodes,
        username=unquote(username) or None,
        password=unquote(password) or None,
        path=[unquote(p) for p in split.path.strip("/").split("/")]
        if split.path.strip("/")
        else [],
        query=query,
    )


def _driver_info() -> dict[str, Any]:
    """What each connection tells Redis about its client (CLIENT SETINFO), worked out once.

    Left to redis-py 8, every new connection looks its own version up in the installed
    packages' metadata (``importlib.metadata``), and a burst of replies opens hundreds of
    connections (measured in bench/README.md). Older redis-py has no ``DriverInfo``.
    """
    try:
        from redis.driver_info import DriverInfo
    except ImportError:
        return {}
    return {"driver_info": DriverInfo()}
