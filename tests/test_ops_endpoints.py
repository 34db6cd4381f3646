"""The ops endpoints (/healthz, /readyz, /metrics) have a listener of their own, on loopback unless
OPS_HOST says otherwise; Slack's public port (HTTP mode) serves /slack/events and nothing else, and
Socket Mode opens no public listener at all."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.config import load_settings
from bot.errors import ConfigError
from tests.bot_process import ROOT, bot_env, spawn_bot, stop_bot
from tests.fakes.openai import FakeOpenAI
from tests.fakes.slack import FakeSlack
from tests.test_http_mode import SECRET, get

OPS_PATHS = ("/healthz", "/readyz", "/metrics")


async def request(method: str, port: int, path: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status


def test_the_ops_listener_is_on_loopback_by_default() -> None:
    settings = load_settings(
        {"slack_bot_token": "xoxb-x", "slack_app_token": "xapp-x", "openai_api_key": "k"},
        env_file=None,
    )
    assert (settings.ops_host, settings.ops_port) == ("127.0.0.1", 9090)
    assert settings.http_host == "0.0.0.0"  # Slack's events: public by design (HTTP mode)


async def test_http_mode_public_port_serves_slack_events_only(start_bot: Any) -> None:
    async with start_bot(
        slack_mode="http", slack_signing_secret=SECRET, slack_app_token=None
    ) as bot:
        assert bot.http_port is not None and bot.http_port != bot.ops_port
        for path in OPS_PATHS:
            assert await request("GET", bot.http_port, path) == 404, path
            assert await request("GET", bot.ops_port, path) == 200, path
        # /slack/events is only on the public port (an unsigned POST: refused, not missing).
        assert await request("POST", bot.http_port, "/slack/events") == 400
        assert await request("POST", bot.ops_port, "/slack/events") == 404


async def test_socket_mode_opens_no_public_listener(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str
) -> None:
    from bot.compose import open_bot
    from tests.conftest import bot_settings

    with socket.socket() as probe:  # a port that was free: nothing of the bot listens there
        probe.bind(("127.0.0.1", 0))
        http_port = probe.getsockname()[1]
    settings = bot_settings(slack, llm, redis_url, http_port=http_port)
    async with open_bot(settings) as bot:
        await slack.wait_connected()
        assert bot.http_port is None
        for path in OPS_PATHS:
            assert (await get(bot.ops_port, path))[0] == 200
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(http_port, "/healthz")


async def test_a_port_in_use_is_named_as_a_settings_problem(start_bot: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as refused:
            async with start_bot(ops_port=port):
                pass
    [problem] = refused.value.problems
    assert problem.startswith(f"OPS_HOST / OPS_PORT: cannot listen on 127.0.0.1 port {port} (")
    assert "in use" in problem


async def test_an_ops_listener_off_loopback_is_warned_about(
    start_bot: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    async with start_bot(ops_host="0.0.0.0") as bot:
        assert (await get(bot.ops_port, "/healthz"))[0] == 200
    assert any(
        r.levelno == logging.WARNING and "OPS_HOST=0.0.0.0" in r.getMessage()
        for r in caplog.records
    )


def _healthcheck_command() -> str:
    """The shell command of the Dockerfile's HEALTHCHECK."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = re.search(r"^HEALTHCHECK .*?\bCMD (.+)$", text, re.MULTILINE)
    assert found, "the Dockerfile has no HEALTHCHECK … CMD"
    return found.group(1).strip()


def _run_healthcheck(env: dict[str, str]) -> int:
    """Run it as Docker would (``/bin/sh -c``), with this interpreter as ``python``."""
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        ["/bin/sh", "-c", _healthcheck_command()], env=env, capture_output=True, timeout=10
    ).returncode


async def test_the_bot_process_serves_the_ops_endpoints_where_the_docker_healthcheck_looks(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str, tmp_path: Path
) -> None:
    """``python -m bot`` in HTTP mode: the ops listener's port is named in the log, the
    Dockerfile's HEALTHCHECK command passes against it, and the public port has no ops endpoint."""
    env = bot_env(
        slack, llm, redis_url, SLACK_MODE="http", SLACK_SIGNING_SECRET=SECRET, SLACK_APP_TOKEN=""
    )
    log = tmp_path / "bot.log"
    proc = await spawn_bot(log, env)
    try:
        for _ in range(300):  # up to 30 s for the child to start serving
            text = log.read_text()
            ops = re.search(r"ops endpoints \(.*\) on 127\.0\.0\.1 port (\d+)", text)
            events = re.search(r"serving Slack events on port (\d+)", text)
            if ops and events:
                break
            assert proc.returncode is None, text
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the bot did not start serving within 30 s:\n{log.read_text()}")
        ops_port, events_port = int(ops.group(1)), int(events.group(1))
        for path in OPS_PATHS:
            assert await request("GET", ops_port, path) == 200
            assert await request("GET", events_port, path) == 404
        child_env = {k: v for k, v in env.items() if k not in ("OPS_PORT", "OPS_HOST")}
        healthy = await asyncio.to_thread(
            _run_healthcheck, {**child_env, "OPS_PORT": str(ops_port)}
        )
        assert healthy == 0
        # Pointed at the public port, the check fails: it really checks the ops listener.
        wrong = await asyncio.to_thread(
            _run_healthcheck, {**child_env, "OPS_PORT": str(events_port)}
        )
        assert wrong != 0
    finally:
        code = await stop_bot(proc)
    assert code == 0
    assert "Traceback" not in log.read_text()
