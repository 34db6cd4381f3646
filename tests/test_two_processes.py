"""Two real bot processes (``python -m bot``) sharing one Redis: one answer per message, and one
answer at a time per thread, whichever process Slack hands each event to."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.fakes.openai import Answer, FakeOpenAI, echo_last_user
from tests.fakes.slack import FakeSlack, mention_event, message_event
from tests.test_e2e_rules import answered

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def bot_processes(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str, tmp_path: Path
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPENAI_", "REDIS_"))}
    env.update(
        SLACK_BOT_TOKEN="xoxb-test",
        SLACK_APP_TOKEN="xapp-test",
        SLACK_API_URL=slack.api_url,
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=llm.base_url,
        REDIS_URL=redis_url,
        EDIT_INTERVAL="0.1",
        HTTP_HOST="127.0.0.1",
        HTTP_PORT="0",
        PYTHONPATH=str(ROOT),
    )
    procs = []
    for n in range(2):
        with open(tmp_path / f"bot{n}.log", "wb") as log:  # the child keeps its own descriptor
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bot", cwd=tmp_path, env=env, stderr=log, stdout=log
                )
            )
    yield procs
    # Wait without blocking the loop: the fake Slack must answer the bots' websocket close.
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    for n in range(2):
        log_text = (tmp_path / f"bot{n}.log").read_text()
        assert "Traceback" not in log_text, log_text
    assert [p.returncode for p in procs] == [0, 0]


async def test_each_message_is_answered_once_by_two_processes(
    bot_processes: list[asyncio.subprocess.Process], slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.default = echo_last_user
    await slack.wait_connected(count=2, timeout=30)

    # Slack's retry reaching both processes with the same event_id.
    await slack.send_event_to_all(mention_event("retried"), event_id="Ev0SAME")
    await answered(slack, "retried")

    # The app_mention and message twins of one post, one to each process.
    twin = mention_event("twins")
    await slack.send_event(twin, socket=0)
    await slack.send_event(message_event(twin["text"], ts=twin["ts"]), socket=1, record=False)
    await answered(slack, "twins")

    # A DM answered by whichever process gets it, to prove both are alive and consuming.
    for n in range(2):
        await slack.send_event(
            message_event(f"dm {n}", channel="D0DM", channel_type="im"), socket=n
        )
        await answered(slack, f"dm {n}")

    texts = [m.text for m in slack.bot_messages()]
    assert texts.count("retried") == 1 and texts.count("twins") == 1
    assert len(slack.ok_calls("chat.postMessage")) == 4
    assert len(llm.requests) == 4


async def test_one_answer_at_a_time_per_thread_across_processes(
    bot_processes: list[asyncio.subprocess.Process], slack: FakeSlack, llm: FakeOpenAI
) -> None:
    await slack.wait_connected(count=2, timeout=30)
    llm.script(Answer(text="slow answer from one process", ttft=0.5, token_delay=0.05))
    llm.default = echo_last_user
    first = mention_event("first")
    await slack.send_event(first, socket=0)
    await llm.wait_requests(1)
    await slack.send_event(message_event("second", thread_ts=first["ts"]), socket=1)
    await answered(slack, "second", timeout=20)
    assert [m["content"] for m in llm.requests[1].messages[1:]] == [
        "first",
        "slow answer from one process",
        "second",
    ]
