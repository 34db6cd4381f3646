"""The store the benchmarked bot runs on (``--redis``): a private ``redis-server``, a private
3-master Redis Cluster, or the bot's own embedded server — and what the benchmark reads from it.

    with open_store("cluster", workdir) as store:     # started here, stopped on leaving
        env = store.bot_settings(point_dir)           # {'REDIS_URL': 'redis+cluster://…'}
        ...the bot runs...
        store.command_counts(), store.server_pids()   # INFO commandstats, summed over nodes

The servers are the test fixtures' (tests/redis_server.py, tests/redis_cluster.py): the same
binaries and settings the test suite runs the bot against. ``embedded`` sets no ``REDIS_URL``:
the bot (the supervisor, with ``WORKERS`` > 1) starts its embedded server in a fresh
``DATA_DIR`` for each point and stops it when it exits, as in production.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Protocol, get_args

import redis as redis_sync

from bot.store.embedded import EmbeddedServer
from tests.redis_cluster import RedisCluster3
from tests.redis_server import RedisServer

StoreKind = Literal["standalone", "cluster", "embedded"]
STORE_KINDS: tuple[str, ...] = get_args(StoreKind)


class BenchStore(Protocol):
    """One store for a whole run; every point starts on an empty one."""

    kind: StoreKind

    def bot_settings(self, point_dir: Path) -> dict[str, str]:
        """Empty the store and return the bot's settings for it (``REDIS_URL`` or
        ``DATA_DIR``); ``point_dir`` is this point's own folder."""
        ...

    def node_urls(self) -> list[str]:
        """A plain URL to each server of the store (valid while the bot runs, for
        ``embedded``)."""
        ...


class ServerStore:
    """A private ``redis-server``."""

    kind: StoreKind = "standalone"

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def bot_settings(self, point_dir: Path) -> dict[str, str]:
        self.server.flush()
        return {"REDIS_URL": self.server.url}

    def node_urls(self) -> list[str]:
        return [self.server.url]


class ClusterStore:
    """A private 3-master Redis Cluster (``RedisCluster3``): the bot gets its
    ``redis+cluster://`` URL with every node as a seed."""

    kind: StoreKind = "cluster"

    def __init__(self, cluster: RedisCluster3) -> None:
        self.cluster = cluster

    def bot_settings(self, point_dir: Path) -> dict[str, str]:
        self.cluster.flush()
        return {"REDIS_URL": self.cluster.url}

    def node_urls(self) -> list[str]:
        return [self.cluster.node_url(i) for i in range(self.cluster.MASTERS)]


class EmbeddedStore:
    """No ``REDIS_URL``: the bot runs its embedded server in ``point_dir/data``."""

    kind: StoreKind = "embedded"

    def __init__(self) -> None:
        self._data_dir: Path | None = None

    def bot_settings(self, point_dir: Path) -> dict[str, str]:
        self._data_dir = point_dir / "data"  # new for every point: nothing to empty
        return {"DATA_DIR": str(self._data_dir)}

    def node_urls(self) -> list[str]:
        if self._data_dir is None:
            return []
        # The socket the bot's server listens on (constructing this object starts nothing).
        return [EmbeddedServer(self._data_dir).url]


@contextlib.contextmanager
def open_store(
    kind: StoreKind, workdir: Path, *, cluster: RedisCluster3 | None = None
) -> Iterator[BenchStore]:
    """The store of ``kind``, its servers started under ``workdir`` and stopped on leaving;
    ``cluster``: a running cluster to use instead of starting one (the tests' fixture)."""
    if kind == "embedded":
        yield EmbeddedStore()
    elif kind == "cluster" and cluster is not None:
        yield ClusterStore(cluster)
    elif kind == "cluster":
        own = RedisCluster3.start_new(workdir / "cluster")
        try:
            yield ClusterStore(own)
        finally:
            own.stop()
    elif kind == "standalone":
        server = RedisServer.start_new(workdir / "redis")
        try:
            yield ServerStore(server)
        finally:
            server.stop()
    else:
        raise ValueError(f"store must be one of {', '.join(STORE_KINDS)}, not {kind!r}")


def command_counts(store: BenchStore) -> dict[str, int]:
    """Redis's own count of each command run so far (INFO commandstats), summed over the
    store's servers."""
    counts: dict[str, int] = {}
    for url in store.node_urls():
        for name, value in _info(url, "commandstats").items():
            if isinstance(value, dict):
                key = name.removeprefix("cmdstat_")
                counts[key] = counts.get(key, 0) + int(value["calls"])
    return counts


def server_pids(store: BenchStore) -> list[int]:
    """The process id of each of the store's servers (INFO server), to meter their CPU."""
    return [int(str(_info(url, "server")["process_id"])) for url in store.node_urls()]


def _info(url: str, section: str) -> dict[str, object]:
    client = redis_sync.Redis.from_url(url)
    try:
        return dict(client.info(section))
    finally:
        client.close()
