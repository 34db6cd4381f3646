"""Two real bot processes (``python -m bot``) sharing one Redis: one answer per message, and one
answer at a time per thread, whichever process Slack hands each event to."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.bot_process import bot_env, running_bots
from tests.fakes.openai import Answer, FakeOpenAI, echo_last_user
from tests.fakes.slack import FakeSlack, mention_event, message_event
from tests.test_e2e_rules import answered


@pytest.fixture
async def bot_processes(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str, tmp_path: Path
) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    async with running_bots(bot_env(slack, llm, redis_url), tmp_path) as procs:
        yield procs


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
