"""A private Sentinel set on free loopback ports: a master, one replica and one sentinel watching
them as ``mymaster`` (quorum 1), for tests of failover.

sset = SentinelSet.start_new(tmp_path)                 # data nodes require a password by default
sset.sentinels           # [('127.0.0.1', ps)]
sset.master_name         # 'mymaster'
sset.password            # the data nodes' password (None: none); sset.sentinel_password likewise
sset.url                 # 'redis+sentinel://:password@127.0.0.1:ps/mymaster/0'
sset.master_address()    # ('127.0.0.1', port), as the sentinel reports it
sset.replica_address()   # the other one of sset.data_nodes (both data nodes, fixed order)
sset.flush()             # FLUSHALL on the master, once the replica is attached and has caught up
sset.failover()          # SENTINEL FAILOVER; returns the new master's address once it takes writes
sset.freeze_master(); sset.thaw()                      # SIGSTOP / SIGCONT of the master's process
sset.wait_settled()      # one master, its replica in sync, the sentinel agreeing, no failover on
sset.stop()

After a failover the sentinel turns the old master into a replica of the new one, but only about
9 s later (it waits 4 publish periods, 8 s, before reconfiguring a node that still claims to be
master, then acts on its next INFO):
meanwhile both nodes accept writes, which is what the bot's failover tests are about.
``wait_settled()`` waits for that; with ``nudge=True`` (what the per-test fixture does, through
``flush(nudge=True)``) it sends that ``REPLICAOF`` itself instead of waiting.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote

from tests.redis_cluster import (
    HOST,
    RespError,
    check_alive,
    command,
    free_ports,
    info,
    redis_binary,
    server_args,
    spawn,
    start_retrying,
    terminate,
    wait_until,
)

DEFAULT_PASSWORD = "sentinel-set-pw"
_PROBE_KEY = "__sentinel_set_probe__"  # only ever DELeted: a write a replica refuses


class SentinelSet:
    """A master, a replica and a sentinel; data nodes and sentinel each optionally protected by
    a password."""

    master_name = "mymaster"

    def __init__(
        self,
        workdir: Path,
        *,
        password: str | None = DEFAULT_PASSWORD,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.workdir = workdir
        self.password = password
        self.sentinel_password = sentinel_password
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self._data: dict[int, subprocess.Popen[bytes]] = {}  # port -> process
        self._logs: dict[int, Path] = {}
        self._sentinel_port = 0
        self._sentinel: subprocess.Popen[bytes] | None = None
        self._frozen: set[int] = set()
        self.startup_seconds: float | None = None

    @classmethod
    def start_new(cls, workdir: Path, **options: object) -> SentinelSet:
        sset = cls(workdir, **options)  # type: ignore[arg-type]
        sset.start()
        return sset

    # -- addresses --------------------------------------------------------------------------

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [(HOST, self._sentinel_port)]

    @property
    def data_nodes(self) -> list[tuple[str, int]]:
        """Both data nodes (master and replica, in start order: roles change with failovers)."""
        return [(HOST, port) for port in self._data]

    @property
    def url(self) -> str:
        """The bot's Sentinel URL form (issue 14); the sentinel's own password is not in it."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"redis+sentinel://{auth}{hosts}/{self.master_name}/0"

    def master_address(self) -> tuple[str, int]:
        """Where the sentinel says the master is (``SENTINEL get-master-addr-by-name``)."""
        reply = self._sentinel_command("SENTINEL", "get-master-addr-by-name", self.master_name)
        if not isinstance(reply, list):
            raise RuntimeError(f"the sentinel does not know {self.master_name!r}: {reply!r}")
        return (str(reply[0]), int(reply[1]))

    def replica_address(self) -> tuple[str, int]:
        """The data node that is not the master (as the sentinel sees it)."""
        master = self.master_address()
        (other,) = [node for node in self.data_nodes if node != master]
        return other

    # -- life cycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        procs = [*self._data.values(), self._sentinel]
        return bool(self._data) and all(p is not None and p.poll() is None for p in procs)

    def start(self) -> None:
        if self.running:
            return
        self.stop()  # whatever is left of a set that lost a process
        self.startup_seconds = start_retrying(self._start_once, self.stop)

    def _data_args(self, port: int, node_dir: Path, *extra: str) -> list[str]:
        auth = ["--requirepass", self.password, "--masterauth", self.password]
        return server_args(
            port,
            node_dir,
            *(auth if self.password else []),
            # A (re)attaching replica syncs at once, not after the default 5 s of waiting for
            # more replicas to share a diskless transfer.
            "--repl-diskless-sync-delay",
            "0",
            # SIGTERM stops a master at once instead of waiting (up to 10 s) for its replica.
            "--shutdown-timeout",
            "0",
            *extra,
        )

    def _start_once(self) -> None:
        master_port, replica_port, self._sentinel_port = free_ports(3)
        for name, port in (("master", master_port), ("replica", replica_port)):
            node_dir = self.workdir / name
            node_dir.mkdir(parents=True, exist_ok=True)
            (node_dir / "redis.log").unlink(missing_ok=True)
            self._logs[port] = node_dir / "redis.log"
            extra = ["--replicaof", HOST, str(master_port)] if name == "replica" else []
            self._data[port] = spawn(self._data_args(port, node_dir, *extra))
        wait_until(
            lambda: (
                "state=online" in info(master_port, "replication", self.password).get("slave0", "")
            ),
            "the replica attached to the master",
            alive=self._check_alive,
        )
        # The sentinel starts after the replica attached: its first INFO of the master then lists
        # the replica (a later one would come only 10 s on).
        sentinel_dir = self.workdir / "sentinel"
        sentinel_dir.mkdir(parents=True, exist_ok=True)
        (sentinel_dir / "sentinel.log").unlink(missing_ok=True)
        conf = sentinel_dir / "sentinel.conf"  # writable: the sentinel rewrites it
        lines = [
            f"port {self._sentinel_port}",
            f"bind {HOST}",
            f"dir {sentinel_dir}",
            "loglevel warning",
            f"logfile {sentinel_dir / 'sentinel.log'}",
            f"sentinel monitor {self.master_name} {HOST} {master_port} 1",
            f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}",
            f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {self.master_name} 1",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {self.master_name} {self.password}")
        if self.sentinel_password:
            lines.append(f"requirepass {self.sentinel_password}")
        conf.write_text("\n".join(lines) + "\n")
        self._logs[self._sentinel_port] = sentinel_dir / "sentinel.log"
        self._sentinel = spawn([redis_binary(), str(conf), "--sentinel"])
        wait_until(
            lambda: self._sentinel_command("PING") == "PONG", "sentinel up", alive=self._check_alive
        )
        # The sentinel re-reads each node's INFO every second instead of every 10 s, so it
        # learns promptly that a replica (re)attached. (The publish period, which sets when it
        # demotes a stale master after a failover, keeps its default: the real ~9 s window.)
        self._sentinel_command("SENTINEL", "DEBUG", "INFO-PERIOD", 1000)
        self.wait_settled()

    def _check_alive(self) -> None:
        procs = [(proc, self._logs[port]) for port, proc in self._data.items()]
        if self._sentinel is not None:
            procs.append((self._sentinel, self._logs[self._sentinel_port]))
        check_alive(procs)

    def stop(self) -> None:
        procs = [self._sentinel, *self._data.values()]  # the sentinel first: no failover
        self._data, self._sentinel, self._frozen = {}, None, set()
        for proc in procs:
            if proc is not None:
                terminate(proc)

    # -- state -------------------------------------------------------------------------------

    def _sentinel_command(self, *args: object) -> object:
        return command(self._sentinel_port, *args, password=self.sentinel_password)

    def _sentinel_fields(self, *args: object) -> list[dict[str, str]]:
        """A SENTINEL reply of flat [name, value, …] lists as dicts."""
        reply = self._sentinel_command(*args)
        assert isinstance(reply, list)
        return [dict(zip(item[::2], item[1::2], strict=True)) for item in reply]

    def _master_entry(self) -> dict[str, str]:
        """The sentinel's record of the master (``SENTINEL MASTERS``): its address changes only
        once a failover has ended, while ``get-master-addr-by-name`` names the promoted
        replica as soon as it is promoted."""
        (master,) = [
            m for m in self._sentinel_fields("SENTINEL", "masters") if m["name"] == self.master_name
        ]
        return master

    def master_flags(self) -> set[str]:
        """The sentinel's flags for the master: {'master'}, or with 's_down', 'o_down',
        'failover_in_progress' … while it is failing."""
        return set(self._master_entry()["flags"].split(","))

    def accepts_writes(self, address: tuple[str, int]) -> bool:
        try:
            command(address[1], "DEL", _PROBE_KEY, password=self.password, timeout=0.5)
        except RespError as exc:
            if str(exc).startswith("READONLY"):
                return False
            raise
        return True

    def _unsettled(self, nudge: bool) -> str | None:
        """Why the set is not settled yet (None: it is)."""
        if self._frozen:
            return "a node is frozen"
        flags = self.master_flags()
        if flags != {"master"}:
            return f"the sentinel's master flags are {sorted(flags)}"
        master = self.master_address()
        if master not in self.data_nodes:
            return f"the sentinel names {master} as master"
        (replica,) = [node for node in self.data_nodes if node != master]
        if info(master[1], "replication", self.password)["role"] != "master":
            return f"{master} is not master yet"
        replication = info(replica[1], "replication", self.password)
        if replication["role"] != "slave" or int(replication["master_port"]) != master[1]:
            if nudge and replication["role"] == "master":
                # What the sentinel does to a stale master ~9 s after a failover, done now.
                command(replica[1], "REPLICAOF", *master, password=self.password)
            return f"{replica} is not a replica of {master} yet"
        if replication["master_link_status"] != "up":
            return f"{replica} is still syncing"
        known = self._sentinel_fields("SENTINEL", "replicas", self.master_name)
        if not any(
            (r["ip"], int(r["port"])) == replica
            and r["flags"] == "slave"
            and r["master-link-status"] == "ok"
            for r in known
        ):
            return f"the sentinel does not know {replica} as a healthy replica yet"
        return None

    def wait_settled(self, timeout: float = 20.0, *, nudge: bool = False) -> None:
        """Wait until the sentinel reports a healthy master, that node is master, the other one
        its replica with the link up, and the sentinel knows that replica as healthy.

        After a failover that takes the sentinel ~9 s (it demotes the old master only then);
        ``nudge=True`` sends that ``REPLICAOF`` at once: how the per-test fixture restores a
        clean set quickly."""
        why: list[str | None] = [None]

        def settled() -> bool:
            why[0] = self._unsettled(nudge)
            return why[0] is None

        try:
            wait_until(settled, "the sentinel set settled", timeout, self._check_alive, 0.05)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; last seen: {why[0]}") from None

    def flush(self, *, nudge: bool = False) -> None:
        """FLUSHALL on the current master, once the set is settled and the replica caught up."""
        self.wait_settled(nudge=nudge)
        master = self.master_address()
        command(master[1], "FLUSHALL", password=self.password)
        acked = command(master[1], "WAIT", 1, 1000, password=self.password)
        if acked != 1:
            raise RuntimeError(f"the replica did not acknowledge FLUSHALL within 1 s ({acked})")

    # -- faults ------------------------------------------------------------------------------

    def failover(self, timeout: float = 15.0) -> tuple[str, int]:
        """``SENTINEL FAILOVER`` (once the set is settled); returns the new master's address as
        soon as the sentinel reports it and it accepts writes. The old master is still a
        master then: the sentinel makes it a replica about 9 s later."""
        self.wait_settled()
        old = self.master_address()

        def requested() -> bool:
            return self._sentinel_command("SENTINEL", "FAILOVER", self.master_name) == "OK"

        wait_until(requested, "SENTINEL FAILOVER accepted", timeout, self._check_alive)
        new: list[tuple[str, int]] = []

        def switched() -> bool:
            address = self.master_address()
            if address == old or not self.accepts_writes(address):
                return False
            entry = self._master_entry()  # the failover has ended: every view names it
            ended = "failover_in_progress" not in entry["flags"].split(",")
            if not ended or (entry["ip"], int(entry["port"])) != address:
                return False
            new.append(address)
            return True

        wait_until(switched, "a new master that accepts writes", timeout, self._check_alive)
        return new[-1]

    def freeze_master(self) -> tuple[str, int]:
        """SIGSTOP the master's process (it keeps its connections but answers nothing) and
        return its address; ``thaw()`` resumes it."""
        host, port = self.master_address()
        os.kill(self._data[port].pid, signal.SIGSTOP)
        self._frozen.add(port)
        return (host, port)

    def thaw(self) -> None:
        """SIGCONT every node ``freeze_master`` stopped."""
        for port in sorted(self._frozen):
            proc = self._data.get(port)
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
        self._frozen.clear()
