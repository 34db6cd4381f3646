"""The embedded store's server: real Valkey processes on a test's data directory, joined by this
process and by other bot-like processes; restarts, crashes and leftovers as they happen."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.store import connect_redis
from bot.store.embedded import EmbeddedServer, embedded_server, find_server_binary

ROOT = Path(__file__).resolve().parent.parent

# Another bot process, reduced to what matters here: join, maybe write a key, print the
# server's pid, stay until its stdin closes, leave.
_MEMBER = """
import asyncio, sys
from pathlib import Path
from bot.store import connect_redis
from bot.store.embedded import EmbeddedServer

async def main():
    async with EmbeddedServer(Path(sys.argv[1])) as server:
        if len(sys.argv) > 2:
            redis = connect_redis(server.url)
            await redis.set(sys.argv[2], sys.argv[3])
            await redis.aclose()
        print(server.pid, flush=True)
        await asyncio.to_thread(sys.stdin.read)

asyncio.run(main())
"""


@asynccontextmanager
async def member(data_dir: Path, *key_value: str) -> AsyncIterator[tuple[int, int]]:
    """A joined child process; yields (its pid, the server's pid); leaves when the block ends."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _MEMBER,
        str(data_dir),
        *key_value,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        yield proc.pid, int(line)
    finally:
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie only waits for its parent to reap it)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def pid_of(data_dir: Path) -> int:
    return int((data_dir / "server.pid").read_text())


def in_aof(data_dir: Path, value: bytes) -> bool:
    """Written to the append-only file: a killed server's successor reads it back."""
    return any(value in f.read_bytes() for f in (data_dir / "appendonlydir").glob("*.incr.aof"))


async def get(url: str, key: str) -> bytes | None:
    redis = connect_redis(url)
    try:
        return await redis.get(key)
    finally:
        await redis.aclose()


async def put(url: str, key: str, value: str) -> None:
    redis = connect_redis(url)
    try:
        await redis.set(key, value)
    finally:
        await redis.aclose()


async def test_the_data_outlives_the_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert os.access(find_server_binary(), os.X_OK)

    async with embedded_server(data) as url:
        assert url == f"unix://{data}/redis.sock"
        assert (data.stat().st_mode & 0o777) == 0o700
        assert ((data / "redis.sock").stat().st_mode & 0o777) == 0o700
        pid = pid_of(data)
        await put(url, "thread", "hello")
        assert await get(url, "thread") == b"hello"

    assert not running(pid)
    assert not (data / "redis.sock").exists()
    assert not (data / "server.pid").exists()

    async with embedded_server(data) as url:
        assert pid_of(data) != pid
        assert await get(url, "thread") == b"hello"
    assert not (data / "redis.sock").exists()


async def test_processes_on_one_data_dir_share_one_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with member(data) as (_, pid):  # another process starts it
        first, second = EmbeddedServer(data), EmbeddedServer(data)
        await first.__aenter__()
        await second.__aenter__()
        assert first.pid == second.pid == pid
        await put(first.url, "k", "v")

        await first.__aexit__(None, None, None)
        assert running(pid)
        assert await get(second.url, "k") == b"v"
    # The process that started the server has left, and it keeps serving who remains.
    assert running(pid)
    assert await get(second.url, "k") == b"v"

    await second.__aexit__(None, None, None)
    await until(lambda: not running(pid))
    assert not second.socket_path.exists()
    assert list((data / "clients").iterdir()) == []


async def test_a_crashed_server_and_bot_leave_nothing_that_stops_a_new_start(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    async with member(data, "thread", "kept") as (member_pid, old_pid):
        await until(lambda: in_aof(data, b"kept"))
        os.kill(old_pid, signal.SIGKILL)
        os.kill(member_pid, signal.SIGKILL)
    await until(lambda: not running(old_pid))
    assert (data / "redis.sock").exists() and (data / "server.pid").exists()
    assert len(list((data / "clients").iterdir())) == 1

    async with EmbeddedServer(data) as server:
        assert server.pid != old_pid
        assert await get(server.url, "thread") == b"kept"
        new_pid = server.pid
        assert new_pid is not None
    # The dead member's registration did not keep the server running.
    assert not running(new_pid)
    assert list((data / "clients").iterdir()) == []


async def test_a_pid_file_naming_an_unrelated_live_process_is_stale(tmp_path: Path) -> None:
    """After a reboot the pid in a stale pid file may belong to another program."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "server.pid").write_text(f"{os.getpid()}\n")
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(data / "redis.sock"))  # a socket file that nothing listens on

    async with EmbeddedServer(data) as server:
        assert server.pid != os.getpid()
        await put(server.url, "k", "v")
    assert not (data / "redis.sock").exists()


async def test_a_live_server_that_does_not_answer_is_not_replaced(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with EmbeddedServer(data) as server:
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(ConfigError, match=f"pid {pid}.*has not answered"):
                async with EmbeddedServer(data, ready_timeout_s=0.3):
                    pass
        finally:
            os.kill(pid, signal.SIGCONT)
        assert server.pid == pid
        await put(server.url, "k", "v")
    assert not running(pid)


async def test_a_server_that_fails_to_start_shows_its_log(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "appendonlydir").mkdir(parents=True)
    (data / "appendonlydir" / "appendonly.aof.manifest").write_text("not a manifest\n")

    with pytest.raises(ConfigError, match="exited at start-up") as raised:
        async with EmbeddedServer(data):
            pass
    assert "manifest" in str(raised.value).lower()
    assert not (data / "server.pid").exists()
    assert not (data / "redis.sock").exists()


async def test_a_data_dir_too_long_for_a_socket_path(tmp_path: Path) -> None:
    data = tmp_path / ("d" * 100) / "data"
    async with EmbeddedServer(data) as server:
        assert len(os.fsencode(server.socket_path)) <= 103
        assert server.socket_path.parent != data
        assert EmbeddedServer(data).socket_path == server.socket_path  # every process finds it
        await put(server.url, "k", "v")
        assert await get(server.url, "k") == b"v"
    assert not server.socket_path.exists()


async def test_the_watchdog_restarts_a_killed_server_on_the_same_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with EmbeddedServer(data) as server:
        watchdog = asyncio.create_task(server.watch(interval_s=0.05))
        try:
            await put(server.url, "thread", "kept")
            await until(lambda: in_aof(data, b"kept"))
            old_pid = server.pid
            assert old_pid is not None
            os.kill(old_pid, signal.SIGKILL)

            await until(lambda: server.pid not in (None, old_pid))
            assert await get(server.url, "thread") == b"kept"
        finally:
            watchdog.cancel()
            await asyncio.wait([watchdog])
        new_pid = server.pid
        assert new_pid is not None
    assert not running(new_pid)
