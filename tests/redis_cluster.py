"""A private 3-master Redis Cluster on free loopback ports, for tests that need a real cluster.

cluster = RedisCluster3.start_new(tmp_path)
cluster.nodes          # [('127.0.0.1', p1), ('127.0.0.1', p2), ('127.0.0.1', p3)]
cluster.seeds          # '127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3'
cluster.url            # 'redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/0'
cluster.node_url(0)    # 'redis://127.0.0.1:p1/0': a plain URL to one node (the bot must refuse it)
cluster.flush()        # FLUSHALL on every master
cluster.stop()

Node i owns a third of the slots (0-5460, 5461-10922, 10923-16383). Everything is set up with
plain commands over a socket (``command``), so nothing beyond ``redis-server`` is needed; the
Sentinel set (tests/redis_sentinel.py) shares these helpers.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

from tests.redis_server import redis_binary

HOST = "127.0.0.1"
SLOT_COUNT = 16384

# -- plain RESP over a socket -------------------------------------------------------------------


class RespError(Exception):
    """An error reply (``-ERR …``, ``-READONLY …``) from the server."""


def _encode(args: Sequence[object]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(stream: BinaryIO) -> object:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed in the middle of a reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RespError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        return stream.read(size + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_read_reply(stream) for _ in range(size)]
    raise ConnectionError(f"unexpected reply {line!r}")


def command(port: int, *args: object, password: str | None = None, timeout: float = 2.0) -> object:
    """One command on a fresh connection to ``127.0.0.1:port`` (after AUTH when a password is
    given); returns the decoded reply, raises ``RespError`` on an error reply and ``OSError`` when
    the server does not answer."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        with sock.makefile("rb") as stream:
            if password is not None:
                sock.sendall(_encode(["AUTH", password]))
                _read_reply(stream)
            sock.sendall(_encode(args))
            return _read_reply(stream)


def info(port: int, section: str, password: str | None = None) -> dict[str, str]:
    """``INFO section`` as a dict of its ``key:value`` lines."""
    text = str(command(port, "INFO", section, password=password))
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


# -- processes ----------------------------------------------------------------------------------

_live: set[subprocess.Popen[bytes]] = set()


def spawn(args: Sequence[str]) -> subprocess.Popen[bytes]:
    """A child process that is stopped at interpreter exit at the latest (never leaked)."""
    proc = subprocess.Popen(
        list(args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _live.add(proc)
    return proc


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child (a frozen one too) and reap it."""
    _live.discard(proc)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # a SIGSTOPped process would never see SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@atexit.register
def _terminate_leftovers() -> None:
    for proc in list(_live):
        terminate(proc)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free loopback ports (all held open together while choosing)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            socks.append(sock)
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class PortTaken(RuntimeError):
    """A chosen port was taken by someone else before the server bound it: choose again."""


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def check_alive(procs: Iterable[tuple[subprocess.Popen[bytes], Path]]) -> None:
    """Raise (``PortTaken`` when that is why) if one of the processes has exited."""
    for proc, log in procs:
        if proc.poll() is not None:
            tail = log_tail(log)
            if "Address already in use" in tail:
                raise PortTaken(tail)
            raise RuntimeError(f"redis-server exited with {proc.returncode}; its log:\n{tail}")


def wait_until(
    condition: Callable[[], object],
    what: str,
    timeout: float = 10.0,
    alive: Callable[[], None] = lambda: None,
    interval: float = 0.02,
) -> None:
    """Poll ``condition`` (an ``OSError`` or ``RespError`` counts as not yet) until it is truthy;
    ``alive`` raises if a process it depends on has died."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        alive()
        try:
            if condition():
                return
        except (OSError, RespError, ConnectionError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s (last error: {last!r})")
        time.sleep(interval)


def server_args(port: int, workdir: Path, *extra: str) -> list[str]:
    """A data node's command line: loopback only, no persistence, warnings to a log file."""
    return [
        redis_binary(),
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        "--loglevel",
        "warning",
        "--logfile",
        str(workdir / "redis.log"),
        *extra,
    ]


# -- the cluster --------------------------------------------------------------------------------


def slot_ranges(masters: int = 3) -> list[tuple[int, int]]:
    """The shares ``redis-cli --cluster create`` assigns: [(0, 5460), (5461, 10922), (10923, 16383)]."""
    per_node = SLOT_COUNT / masters
    ranges, first = [], 0
    for i in range(masters):
        last = SLOT_COUNT - 1 if i == masters - 1 else round(per_node * (i + 1) - 1)
        ranges.append((first, last))
        first = last + 1
    return ranges


class RedisCluster3:
    """Three cluster-enabled masters (no replicas) sharing the slots in thirds."""

    MASTERS = 3

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self.startup_seconds: float | None = None

    @classmethod
    def start_new(cls, workdir: Path) -> RedisCluster3:
        cluster = cls(workdir)
        cluster.start()
        return cluster

    @property
    def nodes(self) -> list[tuple[str, int]]:
        return [(HOST, port) for port in self._ports]

    @property
    def seeds(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.nodes)

    @property
    def url(self) -> str:
        """The bot's cluster URL form (issue 14): every node as a seed, database 0."""
        return f"redis+cluster://{self.seeds}/0"

    def node_url(self, index: int) -> str:
        """A plain ``redis://`` URL to one node: what a misconfigured deployment would use."""
        return f"redis://{HOST}:{self._ports[index]}/0"

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(proc.poll() is None for proc in self._procs)

    def start(self) -> None:
        if self.running:
            return
        self.stop()  # whatever is left of a cluster that lost a node
        self.startup_seconds = start_retrying(self._start_once, self.stop)

    def _start_once(self) -> None:
        ports = free_ports(2 * self.MASTERS)
        self._ports, bus_ports = ports[: self.MASTERS], ports[self.MASTERS :]
        logs = []
        for i, (port, bus_port) in enumerate(zip(self._ports, bus_ports, strict=True)):
            node_dir = self.workdir / f"node-{i}"
            node_dir.mkdir(parents=True, exist_ok=True)
            for stale in ("nodes.conf", "redis.log"):  # a fresh cluster on every start
                (node_dir / stale).unlink(missing_ok=True)
            logs.append(node_dir / "redis.log")
            self._procs.append(
                spawn(
                    server_args(
                        port,
                        node_dir,
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-port",
                        str(bus_port),
                    )
                )
            )
        procs = list(zip(self._procs, logs, strict=True))

        def alive() -> None:
            check_alive(procs)

        for port in self._ports:
            wait_until(lambda p=port: command(p, "PING") == "PONG", "cluster node up", alive=alive)
        # Distinct config epochs up front (as redis-cli --cluster create does): no epoch
        # collisions to resolve before the slot map settles.
        for i, (port, (first, last)) in enumerate(zip(self._ports, slot_ranges(), strict=True)):
            command(port, "CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            command(port, "CLUSTER", "ADDSLOTSRANGE", first, last)
        # Every node meets every other one: no waiting for gossip to introduce the third node
        # (redis-cli's one-to-all MEET left a node alone for up to 6 s more).
        for port in self._ports:
            for other, bus_port in zip(self._ports, bus_ports, strict=True):
                if other != port:
                    command(port, "CLUSTER", "MEET", HOST, other, bus_port)
        # A master turns cluster_state:ok no sooner than 2 s after it started (Redis's
        # CLUSTER_WRITABLE_DELAY): that, not gossip, bounds the start-up time.
        wait_until(self._converged, "cluster_state:ok and one slot map on all nodes", alive=alive)

    def _slot_map(self, port: int) -> frozenset[tuple[str, str, tuple[str, ...]]] | None:
        """This node's view: (id, address, slots) of each master, or None while it is unsettled
        (a handshake, a failure flag, a disconnected link or an address not yet learnt)."""
        view = set()
        for line in str(command(port, "CLUSTER", "NODES")).splitlines():
            fields = line.split()
            node_id, address, flags, link = fields[0], fields[1].split("@")[0], fields[2], fields[7]
            flag_set = set(flags.split(","))
            if flag_set & {"handshake", "fail", "fail?", "noaddr"} or link != "connected":
                return None
            if "master" not in flag_set or not address.startswith(HOST):
                return None
            view.add((node_id, address, tuple(fields[8:])))
        return frozenset(view)

    def _converged(self) -> bool:
        views = []
        for port in self._ports:
            cluster_info = str(command(port, "CLUSTER", "INFO"))
            if "cluster_state:ok" not in cluster_info:
                return False
            views.append(self._slot_map(port))
        first = views[0]
        return (
            first is not None
            and len(first) == self.MASTERS
            and {address for _, address, _ in first} == {f"{h}:{p}" for h, p in self.nodes}
            and all(view == first for view in views)
        )

    def flush(self) -> None:
        for port in self._ports:
            command(port, "FLUSHALL")

    def stop(self) -> None:
        procs, self._procs = self._procs, []
        for proc in procs:
            terminate(proc)


def start_retrying(start_once: Callable[[], None], stop: Callable[[], None]) -> float:
    """``start_once()`` up to three times (free ports can be taken before the server binds
    them), ``stop()`` after each failure; the seconds it took."""
    began = time.monotonic()
    for attempt in range(3):
        try:
            start_once()
            break
        except PortTaken:
            stop()
            if attempt == 2:
                raise
        except BaseException:
            stop()
            raise
    return time.monotonic() - began
