"""Start-up time of the bot: from launching ``python -m bot`` (what ./scripts/run execs once its
venv is installed) to its log line "connected to Slack over Socket Mode", against the local fake
Slack and fake model.

    .venv/bin/python -m bench.startup                   # 5 runs of each way to start
    .venv/bin/python -m bench.startup --runs 3 --preload 0 --bot-path /tmp/other

Ways to start, taken in turn within each round (each round begins with the next one), so that
the machine's noise falls on all alike:

    fresh      no REDIS_URL, a new empty DATA_DIR: the embedded server starts on nothing
    warm       no REDIS_URL, the DATA_DIR of the first fresh run: the server loads its data
    preloaded  no REDIS_URL, a DATA_DIR holding what ``--preload`` answered messages leave
               (bench/store_memory.py, the bot's real TTLs): the server loads that first
    REDIS_URL  a separate redis-server (tests/redis_server.py), started once before the runs

One launch before the runs is not counted (it compiles bytecode and warms the page cache). Each
run is stopped with SIGTERM; the time to exit is reported too (it includes the embedded
server's shutdown). Figures are in bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shlex
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.store_memory import Load, write_messages
from bot.store import Store, connect_redis
from bot.store.embedded import EmbeddedServer
from tests.bot_process import ROOT, bot_env
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.redis_server import RedisServer

READY = "connected to Slack over Socket Mode"
STORE = re.compile(r"embedded store: (started|joined) the server|REDIS_URL is not set")
LOADED = re.compile(r"(?:DB loaded from|Done loading).*?([\d.]+) seconds")


@dataclass
class Launch:
    """One start and stop of the bot (seconds since the launch)."""

    ready_s: float
    cpu_s: float  # the bot's CPU time (user + system) when it connected
    store_s: float | None  # the embedded server answered (its log line)
    stop_s: float
    loaded_s: float | None  # the server's own "DB loaded" time, from its log


@dataclass
class Way:
    name: str
    redis_url: str | None
    data_dir: Path | None  # None: a new one per run
    launches: list[Launch] = field(default_factory=list)


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        root = Path(tmp)
        redis = RedisServer.start_new(root / "redis")
        try:
            async with FakeSlack() as slack, FakeOpenAI() as llm:
                await _compare(args, root, slack, llm, redis.url)
        finally:
            redis.stop()


async def _compare(
    args: argparse.Namespace, root: Path, slack: FakeSlack, llm: FakeOpenAI, redis_url: str
) -> None:
    def env(redis: str | None, data_dir: Path) -> dict[str, str]:
        path = str(ROOT) if args.bot_path is None else f"{args.bot_path}{os.pathsep}{ROOT}"
        # STREAM_MODE as in production (bot_env defaults to the edit renderer for tests).
        child = bot_env(
            slack, llm, redis, production_defaults=True, STREAM_MODE="auto", PYTHONPATH=path
        )
        # A deployed bot finds its modules compiled (pip compiles them at install); the
        # warm-up launch compiles them here, unless our environment forbids writing bytecode.
        child.pop("PYTHONDONTWRITEBYTECODE", None)
        return child | {"DATA_DIR": str(data_dir)}

    ways = [Way("fresh DATA_DIR", None, None), Way("warm DATA_DIR", None, root / "fresh-0")]
    if args.preload:
        preloaded = root / "preloaded"
        seconds = await _preload(preloaded, args.preload)
        print(f"preloaded {args.preload:,} messages in {seconds:.1f} s: {_aof_mib(preloaded)}")
        ways.append(Way(f"DATA_DIR with {args.preload:,} messages", None, preloaded))
    ways.append(Way("REDIS_URL (redis-server)", redis_url, None))

    # The parts, each on its own: the interpreter with the bot's imports, and the embedded
    # server started and stopped by this process (no bot).
    parts: dict[str, list[tuple[float, float, float]]] = {
        "imports (python -c 'import bot.compose')": []
    }
    alone: list[tuple[str, Path | None]] = [("server alone, fresh DATA_DIR", None)]
    if args.preload:
        alone.append((f"server alone, {args.preload:,} messages", root / "preloaded"))
    await _launch(root / "warm-up", env(None, root / "warm-up"))
    for run in range(args.runs):
        for way in ways[run % len(ways) :] + ways[: run % len(ways)]:  # each first in turn
            data_dir = way.data_dir or root / f"fresh-{run}"
            if way.redis_url is not None:
                data_dir = root / f"unused-{run}"
            way.launches.append(await _launch(root / f"log-{run}", env(way.redis_url, data_dir)))
            print(f"run {run + 1} {way.name}: {way.launches[-1].ready_s * 1000:.0f} ms", flush=True)
        imports, cpu = await _imports(root, env(None, root / "unused"))
        parts[next(iter(parts))].append((imports, 0.0, cpu))
        for name, where in alone:
            start, stop = await _server_alone(where or root / f"alone-{run}")
            parts.setdefault(name, []).append((start, stop, 0.0))

    print(f"\n{shlex.join(['.venv/bin/python', '-m', 'bench.startup', *sys.argv[1:]])}")
    print(f"{args.runs} runs each, ms: median (min–max)")
    rows = [
        [
            "start",
            "to connected",
            "bot CPU then",
            "to store ready",
            "stop (SIGTERM → exit)",
            "server load",
        ]
    ]
    for way in ways:
        rows.append(
            [
                way.name,
                _stats([x.ready_s for x in way.launches]),
                _stats([x.cpu_s for x in way.launches]),
                _stats([x.store_s for x in way.launches if x.store_s is not None]),
                _stats([x.stop_s for x in way.launches]),
                _stats([x.loaded_s for x in way.launches if x.loaded_s is not None]),
            ]
        )
    _print_table(rows)
    print("\nThe parts on their own, ms: median (min–max)")
    rows = [["part", "start", "its CPU", "stop"]]
    for name, timings in parts.items():
        rows.append(
            [
                name,
                _stats([start for start, _, _ in timings]),
                _stats([cpu for _, _, cpu in timings if cpu]),
                _stats([stop for _, stop, _ in timings if stop]),
            ]
        )
    _print_table(rows)


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


async def _imports(workdir: Path, env: dict[str, str]) -> tuple[float, float]:
    """Seconds for the interpreter to start and import what the bot imports, and its CPU."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import bot.__main__, bot.compose", cwd=workdir, env=env
    )
    if await proc.wait() != 0:
        raise RuntimeError("importing the bot failed")
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


async def _server_alone(data_dir: Path) -> tuple[float, float]:
    """Seconds until the embedded server of ``data_dir`` answers, and until it has stopped."""
    started = time.monotonic()
    server = EmbeddedServer(data_dir)
    await server.__aenter__()
    ready = time.monotonic()
    await server.__aexit__(None, None, None)
    return ready - started, time.monotonic() - ready


async def _launch(workdir: Path, env: dict[str, str]) -> Launch:
    """Start the bot in ``workdir`` (no .env there), wait for Socket Mode, stop it."""
    server_log = Path(env["DATA_DIR"]) / "server.log"
    log_start = _prepare(workdir, server_log)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        cwd=workdir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    store_s: float | None = None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while True:
                line = (await proc.stdout.readline()).decode(errors="replace")
                if not line:
                    raise RuntimeError("the bot exited:\n" + "".join(lines[-20:]))
                lines.append(line)
                if store_s is None and STORE.search(line):
                    store_s = time.monotonic() - started
                if READY in line:
                    ready_s = time.monotonic() - started
                    cpu_s = _cpu_s(proc.pid)
                    break
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    # The bot handles SIGTERM only from a moment after that line; a SIGTERM before would end
    # it at once, leaving its embedded server running (in a session of its own).
    for _ in range(2000):
        if _handles_sigterm(proc.pid):
            break
        await asyncio.sleep(0.005)
    else:
        raise RuntimeError("the bot did not take SIGTERM within 10 s of connecting")
    stopping = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    await proc.stdout.read()  # until the bot (and so its stdout) is gone
    if await proc.wait() != 0:
        raise RuntimeError(f"the bot exited with {proc.returncode}:\n" + "".join(lines[-20:]))
    stop_s = time.monotonic() - stopping
    return Launch(ready_s, cpu_s, store_s, stop_s, _loaded_s(server_log, log_start))


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _handles_sigterm(pid: int) -> bool:
    """Whether ``pid`` has a handler for SIGTERM (Linux: the caught-signals mask)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


def _prepare(workdir: Path, server_log: Path) -> int:
    """Make ``workdir``; returns where this start's lines will begin in the server's log."""
    workdir.mkdir(parents=True, exist_ok=True)
    return server_log.stat().st_size if server_log.exists() else 0


def _loaded_s(server_log: Path, start: int) -> float | None:
    """How long the server said it took to load its data in this start (None: no data)."""
    if not server_log.exists():
        return None
    with server_log.open("rb") as file:
        file.seek(start)
        found = LOADED.findall(file.read().decode(errors="replace"))
    return float(found[-1]) if found else None


async def _preload(data_dir: Path, messages: int) -> float:
    """A data directory holding what ``messages`` answered messages leave (the bot's TTLs)."""
    started = time.monotonic()
    async with EmbeddedServer(data_dir) as server:
        store = Store.open(connect_redis(server.url))
        try:
            await store.history.begin_epoch()
            load = Load(messages, max(1, messages // 10), 20, 200, 200, 1500, 3600.0, 100, 0.0)
            await write_messages(store, store.dedupe, load)
        finally:
            await store.aclose()
    return time.monotonic() - started


def _aof_mib(data_dir: Path) -> str:
    size = sum(f.stat().st_size for f in (data_dir / "appendonlydir").iterdir())
    return f"AOF {size / 2**20:.1f} MiB"


def _stats(values: list[float]) -> str:
    if not values:
        return "–"
    ms = [v * 1000 for v in values]
    return f"{statistics.median(ms):,.0f} ({min(ms):,.0f}–{max(ms):,.0f})"


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="starts of each way (5)")
    parser.add_argument(
        "--preload",
        type=int,
        default=20_000,
        help="answered messages in the preloaded DATA_DIR (0: no such way)",
    )
    parser.add_argument(
        "--bot-path",
        type=Path,
        default=None,
        help="folder with another `bot` package to run instead of ./bot (as bench.run's)",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(_parse()))
