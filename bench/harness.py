"""The benchmark's world: a fake Slack with one rate-limit budget per workspace, the bot as a child
process (``python -m bot``, i.e. the real composition root ``bot.compose.open_bot``; with
``WORKERS`` > 1 a supervisor and its workers) and a meter that reads the CPU time and memory of
the bot's processes from ``/proc``.

    async with WorkspaceSlack(latency=0.1) as slack, FakeOpenAI() as llm:
        async with bot_process(bot_env(slack, llm, redis_url, {}), log_path) as proc:
            meter = ProcessMeter(proc.pid)   # the process and its workers
            meter.cpu_seconds(), meter.rss_kib(), meter.peak_rss_kib()

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.bot_process import bot_env as test_bot_env
from tests.bot_process import stop_bot
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack

ROOT = Path(__file__).resolve().parent.parent


class WorkspaceSlack(FakeSlack):
    """``FakeSlack`` for a bot with one token that serves several workspaces (an org-wide
    Enterprise Grid install): calls on a channel are budgeted and recorded under the workspace
    of the events delivered in that channel, not under the token's single workspace.

    The plain fake keys its rate-limit buckets by the token's team, while the bot keys its
    edit budget by the event's ``team_id``; with one token every "workspace" would share one
    Slack budget and a multi-workspace run would measure nothing but 429s. The proper fix is
    a few lines in ``tests/fakes/slack.py`` (see bench/README.md); until then this subclass
    does the same from the outside, through the fake's ``extra_tokens`` mechanism.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channel_teams: dict[str, str] = {}
        self.acked_at: dict[str, float] = {}  # envelope id -> when the bot's ack arrived
        self.arrivals: list[tuple[float, str, dict[str, Any]]] = []  # (at, method, args)

    def _on_socket_text(self, data: str) -> None:
        super()._on_socket_text(data)
        envelope_id = self.socket_messages[-1].get("envelope_id")
        if isinstance(envelope_id, str):
            self.acked_at.setdefault(envelope_id, self.clock())

    def _record_event_message(self, event: dict[str, Any], team_id: str) -> None:
        channel = event.get("channel")
        if isinstance(channel, str):
            self.channel_teams.setdefault(channel, team_id)
        super()._record_event_message(event, team_id)

    async def _read_args(self, request: Any) -> tuple[dict[str, Any], str | None]:
        arrived = self.clock()
        args, token = await super()._read_args(request)
        self.arrivals.append((arrived, request.match_info.get("method", ""), args))
        channel = args.get("channel", args.get("channel_id"))
        team = self.channel_teams.get(str(channel)) if channel is not None else None
        if token == self.bot_token and team is not None and team != self.team_id:
            token = f"{token}#{team}"  # a per-workspace alias of the one bot token
            self.bot_tokens.setdefault(token, team)
        return args, token


@contextlib.asynccontextmanager
async def on_own_thread(llm: FakeOpenAI) -> AsyncIterator[FakeOpenAI]:
    """Serve the fake model from an event loop of its own, in a thread of this process.

    With a thousand streams it writes ~50,000 SSE events a second; on the fake Slack's loop,
    every Slack call arriving meanwhile waited for a pass over all of them before it was
    stamped (this process's loop lag max ~220 ms at N = 1000 with 600-token answers). On its
    own loop it only competes for the interpreter, which changes hands every few
    milliseconds. Its records (``llm.requests``) are plain lists: read them from here (take a
    slice, then count what it held: the list grows meanwhile); of a request's ``finished``
    event only ``is_set()`` may be used here (waiting on it would bind it to this loop).
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-model", daemon=True)
    thread.start()
    try:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(llm.start(), loop))
        try:
            yield llm
        finally:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(llm.stop(), loop))
    finally:
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 5.0)
        if not thread.is_alive():  # else closing would raise and hide the real error
            loop.close()


def bot_env(
    slack: FakeSlack,
    llm: FakeOpenAI,
    redis_url: str | None,
    overrides: Mapping[str, str],
    bot_path: Path | None = None,
) -> dict[str, str]:
    """The child's environment with the bot's production defaults (see tests/bot_process.py).

    ``redis_url``: None for the embedded store (then ``overrides`` names its ``DATA_DIR``).

    ``bot_path``: a folder holding another ``bot`` package to run instead of this checkout's
    (a patched copy, to measure a proposed change before and after).
    """
    return test_bot_env(
        slack,
        llm,
        redis_url,
        production_defaults=True,
        PYTHONPATH=str(ROOT) if bot_path is None else f"{bot_path}{os.pathsep}{ROOT}",
        PYTHONUNBUFFERED="1",
        **overrides,
    )


@contextlib.asynccontextmanager
async def bot_process(
    env: Mapping[str, str], log_path: Path
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m bot`` with output to ``log_path``; SIGTERM (then SIGKILL) on exit."""
    with _open_log(log_path) as log:  # the child keeps its own descriptor
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            cwd=log_path.parent,  # no .env there: the environment above is the whole config
            env=dict(env),
            stdout=log,
            stderr=log,
        )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            try:
                await stop_bot(proc, signal.SIGTERM, timeout=30)
            except AssertionError:
                pass  # killed by stop_bot; the run's figures are already taken


_OPS_LINE = re.compile(
    r"ops endpoints \(/healthz, /readyz, /metrics\)(?: of \d+ workers)? on \S+ port (\d+)"
)


async def replies_by_worker(log_path: Path) -> dict[str, dict[str, float]]:
    """The bot's ``slackbot_replies_total`` so far by worker, then outcome, from its /metrics
    (the port its log names; with ``WORKERS`` > 1 the supervisor's, whose series carry a
    ``worker`` label; a single process is worker "0").

        await replies_by_worker(log)   # {'0': {'started': 501.0, 'complete': 501.0}, '1': …}
    """
    found = _OPS_LINE.search(log_path.read_text(errors="replace"))  # noqa: ASYNC240 (small, local)
    if found is None:
        raise RuntimeError(f"the bot's log names no ops port; see {log_path}")
    url = f"http://127.0.0.1:{found.group(1)}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        response.raise_for_status()
        text = await response.text()
    counts: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "slackbot_replies_total":
                worker = counts.setdefault(sample.labels.get("worker", "0"), {})
                outcome = sample.labels.get("outcome", "")
                worker[outcome] = worker.get(outcome, 0.0) + sample.value
    return counts


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")


_TICKS = os.sysconf("SC_CLK_TCK")


class ProcessMeter:
    """CPU seconds and memory of a process and of its descendants that run the same program,
    read from ``/proc`` (Linux).

    With ``WORKERS`` > 1 the bot is a supervisor and its workers (``python -m bot --worker I``),
    all counted together; the embedded store's server, a child too, runs another program and is
    not (the benchmark meters the store's servers apart: ``cpu_seconds_of``). A process that
    has exited counts no more, so a worker restarted during a run lowers the sum: ``pids()``
    tells.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._program = _program(pid)

    def pids(self) -> list[int]:
        """The root and every live descendant running its program."""
        children: defaultdict[int, list[int]] = defaultdict(list)
        for pid, ppid in _parents().items():
            children[ppid].append(pid)
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            if pid == self.pid or _program(pid) == self._program:
                found.append(pid)
                todo += children.get(pid, [])
        return sorted(found)

    def cpu_seconds(self) -> float:
        """User + system CPU time so far, summed over ``pids()``."""
        return cpu_seconds_of(self.pids())

    def rss_kib(self) -> int:
        return sum(_status_kib(pid, "VmRSS") for pid in self.pids())

    def peak_rss_kib(self) -> int:
        """The high-water mark of each process's resident set since it started (VmHWM),
        summed: an upper bound of the processes' peak together."""
        return sum(_status_kib(pid, "VmHWM") for pid in self.pids())


def cpu_seconds_of(pids: Iterable[int]) -> float:
    """User + system CPU time so far of these processes (0 for one that is gone)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICKS


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy (not idle or waiting for I/O) since
    boot (``/proc/stat``): what other work on a shared machine took is this minus ours."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def _stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name (state first); [] if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat[stat.rindex(")") + 2 :].split()


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    parents = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                parents[int(entry.name)] = int(fields[1])
    return parents


def _program(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _status_kib(pid: int, name: str) -> int:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0  # gone
    for line in lines:
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


class LoopLag:
    """How late this process's event loop wakes up (the fakes share it): if it lags, every
    time the fakes stamp is late by as much, so a run reports it next to its figures."""

    def __init__(self, every: float = 0.02) -> None:
        self.every = every
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.every
            await asyncio.sleep(self.every)
            self.lags.append(max(0.0, loop.time() - due))
