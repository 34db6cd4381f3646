"""``WORKERS=N``: a supervisor (``python -m bot``) runs N bot processes that share the store; each
opens its own Socket Mode connection, or accepts on the one Events API port; SIGTERM drains them
all; a worker that dies is replaced, one that keeps dying stops the bot."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import load_settings, usable_cores
from bot.errors import ConfigError
from bot.workers import RestartPolicy, Supervisor
from tests.bot_process import ROOT, bot_env, spawn_bot, stop_bot
from tests.conftest import bot_settings
from tests.fakes.openai import Answer, FakeOpenAI, echo_last_user
from tests.fakes.slack import FakeSlack, mention_event
from tests.test_e2e_rules import answered
from tests.test_http_mode import SECRET, callback, get, post_event
from tests.test_ops_endpoints import _run_healthcheck
from tests.test_process_lifecycle import SLOW, _shows_writing

_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


async def _until_logged(log: Path, pattern: str, proc: asyncio.subprocess.Process) -> re.Match[str]:
    """The first match of ``pattern`` in the log, waiting up to 30 s for it."""
    text = ""
    for _ in range(300):
        text = log.read_text()  # noqa: ASYNC240 (a small file on local disk)
        found = re.search(pattern, text)
        if found:
            return found
        assert proc.returncode is None, text
        await asyncio.sleep(0.1)
    raise AssertionError(f"{pattern!r} not logged within 30 s:\n{text}")


def _worker_pids(log: Path) -> dict[int, int]:
    """Each worker's newest pid, from the supervisor's lines."""
    return {int(w): int(pid) for w, pid in _STARTED.findall(log.read_text())}


def _json_lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


async def test_two_workers_each_connect_answer_and_are_replaced_when_killed(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str, tmp_path: Path
) -> None:
    llm.default = echo_last_user
    log = tmp_path / "bot.log"
    proc = await spawn_bot(log, bot_env(slack, llm, redis_url, WORKERS="2", LOG_FORMAT="json"))
    try:
        await slack.wait_connected(count=2, timeout=30)
        assert len(slack.ok_calls("apps.connections.open")) == 2
        assert sorted(_worker_pids(log)) == [0, 1]

        # Each connection belongs to a worker: what is sent to either is answered, once.
        for n in range(2):
            await slack.send_event(mention_event(f"to connection {n}"), socket=n)
            await answered(slack, f"to connection {n}")
        # Slack's retry reaching both workers with the same event_id: one answer.
        await slack.send_event_to_all(mention_event("retried"), event_id="Ev0SAME")
        await answered(slack, "retried")

        # A worker killed outright is started again: a third connection, and it answers.
        os.kill(_worker_pids(log)[1], signal.SIGKILL)
        await slack.wait_for(
            lambda: len(slack.ok_calls("apps.connections.open")) == 3 and slack.connected == 2,
            timeout=20,
            what="the killed worker's replacement connected",
        )
        for n in range(2):
            await slack.send_event(mention_event(f"after the restart {n}"), socket=n)
            await answered(slack, f"after the restart {n}")
        ops = re.search(r"of 2 workers on 127\.0\.0\.1 port (\d+)", log.read_text())
        assert ops, log.read_text()
        assert (await get(int(ops[1]), "/readyz"))[0] == 200
        _, metrics = await get(int(ops[1]), "/metrics")
        assert 'slackbot_worker_restarts_total{worker="1"} 1.0' in metrics
        assert 'slackbot_worker_restarts_total{worker="0"} 0.0' in metrics

        # Every line of a worker says which one, and a token in an error is still redacted.
        error = f"invalid_auth: token {slack.bot_token} revoked"
        slack.fail_next("chat.update", error, times=100)
        await slack.send_event(mention_event("the edits fail"), socket=1)
        await slack.wait_for(lambda: "final edit" in log.read_text(), timeout=15)
    finally:
        code = await stop_bot(proc)
    assert code == 0

    texts = [m.text for m in slack.bot_messages()]
    for text in ("to connection 0", "to connection 1", "retried", "after the restart 1"):
        assert texts.count(text) == 1, texts
    assert llm.requests and sum("retried" in str(r.messages) for r in llm.requests) == 1
    lines = _json_lines(log)
    connected = [line for line in lines if line["msg"] == "connected to Slack over Socket Mode"]
    assert sorted(line["worker"] for line in connected) == [0, 1, 1]  # 1 twice: replaced
    restarted = [line for line in lines if "was killed by SIGKILL" in str(line["msg"])]
    assert len(restarted) == 1 and "worker" not in restarted[0]  # the supervisor's line
    final = [line for line in lines if "final edit" in str(line["msg"])]
    assert final and {line["worker"] for line in final} == {1}  # connection 1's worker
    assert slack.bot_token not in log.read_text() and "[redacted]" in str(final)


async def test_sigterm_drains_every_worker_on_the_shared_embedded_store(
    slack: FakeSlack, llm: FakeOpenAI, tmp_path: Path
) -> None:
    """Two workers without REDIS_URL share the one embedded server; SIGTERM to the supervisor
    lets the short answer finish and cuts the long one with its note, then the server stops."""
    llm.script(SLOW, Answer(text="quick answer", ttft=0.5))
    data = tmp_path / "data"
    env = bot_env(slack, llm, None, WORKERS="2", SHUTDOWN_GRACE="1.5", DATA_DIR=str(data))
    log = tmp_path / "bot.log"
    proc = await spawn_bot(log, env)
    try:
        await slack.wait_connected(count=2, timeout=30)
        await slack.send_event(mention_event("long one"), socket=0)
        await slack.wait_for(
            lambda: any(m.text.startswith("word") for m in slack.bot_messages()), timeout=10
        )
        await slack.send_event(mention_event("short one"), socket=1)
        await llm.wait_requests(2)
    finally:
        code = await stop_bot(proc)
    assert code == 0
    assert not _shows_writing(slack)
    await answered(slack, "quick answer", timeout=1)
    long_reply = next(m for m in slack.bot_messages() if m.text.startswith("word"))
    assert "please ask again" in str(long_reply.blocks)
    assert llm.open_streams == 0
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("embedded store: started the server") == 1  # the supervisor's
    assert len(re.findall(r"\[worker \d\] .*embedded store: joined the server", text)) == 2
    assert not (data / "server.pid").exists()  # the last to leave stopped it


async def test_http_mode_workers_share_one_port(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str, tmp_path: Path
) -> None:
    llm.default = echo_last_user
    env = bot_env(
        slack,
        llm,
        redis_url,
        WORKERS="2",
        SLACK_MODE="http",
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_APP_TOKEN="",
    )
    log = tmp_path / "bot.log"
    proc = await spawn_bot(log, env)
    try:
        port = int((await _until_logged(log, r"serving Slack events on port (\d+)", proc))[1])
        ops_port = int(
            (await _until_logged(log, r"of 2 workers on 127\.0\.0\.1 port (\d+)", proc))[1]
        )
        for _ in range(300):
            if (await get(ops_port, "/readyz"))[0] == 200:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the workers were not ready within 30 s:\n{log.read_text()}")
        # Both workers serve the supervisor's port (HTTP_PORT=0 was resolved once).
        serving = re.findall(
            r"\[worker (\d)\] .*serving Slack events on port (\d+)", log.read_text()
        )
        assert sorted(serving) == [("0", str(port)), ("1", str(port))]
        for n in range(4):
            status, _ = await post_event(
                port, callback(mention_event(f"over http {n}"), event_id=f"Ev0HTTP{n}")
            )
            assert status == 200
            await answered(slack, f"over http {n}")

        # The supervisor's ops listener: the Docker HEALTHCHECK passes, /metrics covers both.
        child_env = {k: v for k, v in env.items() if k not in ("OPS_PORT", "OPS_HOST")}
        assert (
            await asyncio.to_thread(_run_healthcheck, {**child_env, "OPS_PORT": str(ops_port)}) == 0
        )
        status, metrics = await get(ops_port, "/metrics")
        assert status == 200
        for worker in ("0", "1"):
            assert f'slackbot_worker_up{{worker="{worker}"}} 1.0' in metrics
            assert f'process_cpu_seconds_total{{worker="{worker}"}}' in metrics
        received = re.findall(
            r'slackbot_events_total\{outcome="received",worker="\d"\} ([0-9.]+)', metrics
        )
        assert sum(float(n) for n in received) == 4
    finally:
        code = await stop_bot(proc)
    assert code == 0
    assert "Traceback" not in log.read_text()


def test_workers_auto_is_the_cores_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"slack_bot_token": "xoxb-x", "slack_app_token": "xapp-x", "openai_api_key": "k"}
    assert load_settings(base, env_file=None).workers == 1  # one process, as before
    monkeypatch.setenv("WORKERS", "auto")
    assert load_settings(base, env_file=None).workers == len(os.sched_getaffinity(0))
    assert usable_cores() == len(os.sched_getaffinity(0))
    for bad in ("0", "many", "-2"):
        monkeypatch.setenv("WORKERS", bad)
        with pytest.raises(ConfigError) as refused:
            load_settings(base, env_file=None)
        assert [p.split(":")[0] for p in refused.value.problems] == ["WORKERS"]
    monkeypatch.setenv("WORKERS", "11")  # Slack allows an app 10 Socket Mode connections
    with pytest.raises(ConfigError):
        load_settings(base, env_file=None)
    http = {**base, "slack_mode": "http", "slack_signing_secret": "s"}
    assert load_settings(http, env_file=None).workers == 11


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"OPENAI_API_KEY": ""}, "OPENAI_API_KEY"),
        ({"WORKERS": "two"}, "WORKERS"),
        ({"CHANNELS_FILE": "channels.toml"}, "CHANNELS_FILE"),
        (
            {"SLACK_MODE": "http", "SLACK_SIGNING_SECRET": "s", "HTTP_PORT": "taken"},
            "HTTP_HOST / HTTP_PORT: cannot listen",
        ),
    ],
)
def test_a_settings_problem_is_reported_once_before_any_worker_starts(
    tmp_path: Path, extra: dict[str, str], problem: str
) -> None:
    (tmp_path / "channels.toml").write_text("[access]\nallow_channels = 3\n")
    with socket.create_server(("127.0.0.1", 0)) as taken:  # a port in use
        result = _run_supervisor(tmp_path, extra, taken.getsockname()[1])
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("The bot cannot start") == 1, result.stderr
    assert result.stderr.count(problem) == 1, result.stderr
    assert "worker 0 started" not in result.stderr
    assert "Traceback" not in result.stderr


def _run_supervisor(
    cwd: Path, extra: dict[str, str], taken_port: int
) -> subprocess.CompletedProcess[str]:
    extra = {k: str(taken_port) if v == "taken" else v for k, v in extra.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPENAI_", "REDIS_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        WORKERS="2",
        SLACK_BOT_TOKEN="xoxb-x",
        SLACK_APP_TOKEN="xapp-x",
        OPENAI_API_KEY="k",
        REDIS_URL="redis://127.0.0.1:1/0",
        OPS_PORT="0",
    )
    env.update(extra)
    if not env["OPENAI_API_KEY"]:
        del env["OPENAI_API_KEY"]
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- the supervisor in this process, with stand-in workers -----------------------------------


def _supervisor(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str, worker: str, **policy: float
) -> Supervisor:
    return Supervisor(
        bot_settings(slack, llm, redis_url, workers=2),
        policy=RestartPolicy(**policy),  # type: ignore[arg-type]
        program=[sys.executable, "-c", worker],
    )


async def test_a_worker_that_keeps_dying_quickly_stops_the_supervisor(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    supervisor = _supervisor(
        slack, llm, redis_url, "raise SystemExit(1)", first_delay_s=0.01, give_up_after=4
    )
    assert await asyncio.wait_for(supervisor.run(), 30) == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "bot.workers"]
    assert any("keeps dying: 4 times in a row" in m for m in messages), messages
    # Three restarts (with a backoff), then the fourth death stopped everything.
    assert sum("starting it again" in m for m in messages) in range(3, 7)
    assert sum(m.startswith("worker 0 started") for m in messages) <= 4


async def test_a_worker_refusing_its_settings_stops_the_supervisor_at_once(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    supervisor = _supervisor(slack, llm, redis_url, "raise SystemExit(2)", first_delay_s=0.01)
    assert await asyncio.wait_for(supervisor.run(), 30) == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "bot.workers"]
    assert not any("starting it again" in m for m in messages)
    assert any("could not start (exit code 2" in m for m in messages)


async def test_a_worker_that_ran_a_while_is_always_restarted(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    supervisor = _supervisor(
        slack,
        llm,
        redis_url,
        "import time; time.sleep(0.2)",
        first_delay_s=0.01,
        stable_after_s=0.1,
        give_up_after=2,
    )
    running = asyncio.create_task(supervisor.run())

    def restarts() -> int:
        return sum("starting it again" in r.getMessage() for r in caplog.records)

    for _ in range(200):
        if restarts() >= 4:
            break
        assert not running.done()
        await asyncio.sleep(0.05)
    supervisor.stop()
    assert await asyncio.wait_for(running, 10) == 0
    assert restarts() >= 4


def test_restart_delays_double_up_to_a_limit() -> None:
    policy = RestartPolicy(first_delay_s=0.5, max_delay_s=3)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
