"""Run ``python -m bot`` as a real child process against the local fakes.

proc = await spawn_bot(tmp_path / "bot.log", slack=slack, llm=llm, redis_url=url)
await stop_bot(proc)                  # SIGTERM, wait without blocking the event loop
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

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
