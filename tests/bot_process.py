"""Run ``python -m bot`` as a real child process against the local fakes.

proc = await spawn_bot(tmp_path / "bot.log", bot_env(slack, llm, redis_url))
await stop_bot(proc)                  # SIGTERM, wait without blocking the event loop

async with running_bots(env, tmp_path, count=2) as procs: ...  # logs bot0.log, bot1.log
port = await ops_port(procs[0], tmp_path / "bot0.log")        # its /metrics, /healthz…
await outcomes(port, "slackbot_events")                       # {'answered': 1.0, …}
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack

ROOT = Path(__file__).resolve().parent.parent


_LEAKY_PREFIXES = ("SLACK_", "OPENAI_", "REDIS_")
_LEAKY_NAMES = {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SYSTEM_PROMPT"}


def bot_env(
    slack: FakeSlack,
    llm: FakeOpenAI,
    redis_url: str | None,
    *,
    production_defaults: bool = False,
    **extra: str,
) -> dict[str, str]:
    """The child's environment: nothing leaks in from ours, every remote is a local fake.

    Tests get fast edits (``EDIT_INTERVAL=0.1``); the benchmark asks for ``production_defaults``.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(_LEAKY_PREFIXES) and key.upper() not in _LEAKY_NAMES
    }
    env.update(
        SLACK_BOT_TOKEN=slack.bot_token,
        SLACK_APP_TOKEN=slack.app_token,
        SLACK_API_URL=slack.api_url,
        OPENAI_API_KEY=llm.api_key,
        OPENAI_BASE_URL=llm.base_url,
        HTTP_HOST="127.0.0.1",
        HTTP_PORT="0",
        OPS_PORT="0",  # the ops endpoints' own listener (named in the log)
        PYTHONPATH=str(ROOT),
        # These child processes exercise (and the benchmark measures) the edit renderer;
        # tests/test_native.py covers native streams. ``extra`` may ask for another mode.
        STREAM_MODE="edit",
    )
    if not production_defaults:
        env["EDIT_INTERVAL"] = "0.1"
    if redis_url:
        env["REDIS_URL"] = redis_url
    env.update(extra)
    return env


async def spawn_bot(log_path: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start the bot with stdout and stderr going to ``log_path``."""
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=log_path.parent, env=env, stdout=log, stderr=log
        )


async def stop_bot(
    proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM, timeout: float = 20
) -> int:
    """Signal the bot and wait for it to exit (asynchronously: the fakes share this loop)."""
    if proc.returncode is None:
        proc.send_signal(sig)
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"the bot did not exit within {timeout} s of signal {sig}") from None


@asynccontextmanager
async def running_bots(
    env: dict[str, str], folder: Path, count: int = 2
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """``count`` bot processes logging to ``folder/bot{n}.log``; on a clean exit of the block
    each must exit 0 on SIGTERM with no traceback in its log."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        for n in range(count):
            procs.append(await spawn_bot(folder / f"bot{n}.log", env))
        yield procs
    finally:
        codes = [await stop_bot(proc) for proc in procs]
    for n in range(count):
        log_text = (folder / f"bot{n}.log").read_text()
        assert "Traceback" not in log_text, log_text
    assert codes == [0] * count


_OPS_LINE = re.compile(r"ops endpoints \(/healthz, /readyz, /metrics\) on \S+ port (\d+)")


async def ops_port(proc: asyncio.subprocess.Process, log_path: Path, timeout: float = 30) -> int:
    """The port of the child's ops endpoints, once its log names it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        text = log_path.read_text()  # noqa: ASYNC240 (a small file on local disk)
        if found := _OPS_LINE.search(text):
            return int(found.group(1))
        assert proc.returncode is None, f"the bot exited:\n{text}"
        assert loop.time() < deadline, f"no ops port in the log within {timeout} s:\n{text}"
        await asyncio.sleep(0.05)


async def outcomes(port: int, counter: str) -> dict[str, float]:
    """A counter of the child's /metrics by its ``outcome`` label, e.g. ``slackbot_events``."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == counter
        for sample in family.samples
        if sample.name == f"{counter}_total"
    }
