"""The benchmark's world: a fake Slack with one rate-limit budget per workspace, the bot as a child
process (``python -m bot``, i.e. the real composition root ``bot.compose.open_bot``) and a meter
that reads the child's CPU time and memory from ``/proc``.

    async with WorkspaceSlack(latency=0.1) as slack, FakeOpenAI() as llm:
        async with bot_process(bot_env(slack, llm, redis_url, {}), log_path) as proc:
            meter = ProcessMeter(proc.pid)
            meter.cpu_seconds(), meter.rss_kib(), meter.peak_rss_kib()

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

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
    redis_url: str,
    overrides: Mapping[str, str],
    bot_path: Path | None = None,
) -> dict[str, str]:
    """The child's environment with the bot's production defaults (see tests/bot_process.py).

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


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("wb")


class ProcessMeter:
    """CPU seconds and memory of one process, read from ``/proc`` (Linux)."""

    _TICKS = os.sysconf("SC_CLK_TCK")

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        """User + system CPU time so far."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / self._TICKS  # utime, stime

    def rss_kib(self) -> int:
        return self._status_kib("VmRSS")

    def peak_rss_kib(self) -> int:
        """The high-water mark of the resident set since the process started (VmHWM)."""
        return self._status_kib("VmHWM")

    def _status_kib(self, name: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"{name} missing from /proc/{self.pid}/status")


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
