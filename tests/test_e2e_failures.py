"""End to end through the real app (Socket Mode, real Redis, fake Slack and OpenAI): however
the model or Slack fails, and under load, every reply ends in its final form — the exact text
or a fixed note — and no message is left showing the working indicator."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.render.contract import Outcome
from bot.render.reply import FAILED_TEXT
from bot.render.text import render_final
from tests.fakes.openai import Answer, FakeOpenAI
from tests.fakes.slack import FakeSlack, Message, mention_event
from tests.views import bot_replies, notes, working

CHANNEL = "C0CHAN"
# Plain words: the formatted text equals the model's text, whatever the Markdown converter does.
ANSWER = "Paris is the capital of France and it sits on the river Seine in the north"


async def final_reply(slack: FakeSlack, thread_ts: str, timeout: float = 10) -> Message:
    """The bot's one reply in the thread, once it no longer shows the working indicator."""

    def done() -> bool:
        found = bot_replies(slack, CHANNEL, thread_ts)
        return len(found) == 1 and not working(found[0])

    await slack.wait_for(done, timeout, what=f"a finished reply in thread {thread_ts}")
    return bot_replies(slack, CHANNEL, thread_ts)[0]


async def ask(slack: FakeSlack, text: str = "What is the capital of France?") -> str:
    event = mention_event(text)
    await slack.send_event(event)
    return str(event["ts"])


async def streams_closed(slack: FakeSlack, llm: FakeOpenAI) -> None:
    await slack.wait_for(lambda: llm.open_streams == 0, 5, what="every model stream closed")


# -- the model fails --------------------------------------------------------------------------


async def test_a_model_error_before_the_first_token_shows_a_fixed_message(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.default = Answer(status=500, error_message="upstream exploded: stack trace here")
    async with start_bot():
        message = await final_reply(slack, await ask(slack))
        await streams_closed(slack, llm)
    assert message.text == FAILED_TEXT
    assert "exploded" not in str(message.blocks) and "500" not in message.text


async def test_silence_before_the_first_token_shows_the_fixed_message(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(Answer(text=ANSWER, stall_after=0))
    async with start_bot(model_idle_timeout=0.5):
        message = await final_reply(slack, await ask(slack))
        await streams_closed(slack, llm)
    assert message.text == FAILED_TEXT


@pytest.mark.parametrize(
    "fault",
    [
        {"error_after": 3},
        {"disconnect_after": 3},
        {"disconnect_after": 3, "reset": True},
        {"truncate_after": 3},
        {"stall_after": 3},
    ],
    ids=["error", "disconnect", "reset", "truncated", "idle"],
)
async def test_a_stream_broken_mid_answer_keeps_the_text_with_a_note(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, fault: dict[str, Any]
) -> None:
    llm.script(Answer(text=ANSWER, chunk_size=4, token_delay=0.02, **fault))
    async with start_bot(model_idle_timeout=0.5):
        message = await final_reply(slack, await ask(slack))
        await streams_closed(slack, llm)
    assert message.text == ANSWER[:12]  # the three chunks that arrived
    assert notes(message) == [Outcome.INTERRUPTED.note]


async def test_a_healthy_slow_stream_has_no_total_time_limit(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    # Longer in total than the idle timeout, never silent for that long.
    llm.script(Answer(text=ANSWER, chunk_size=4, token_delay=0.1))
    async with start_bot(model_idle_timeout=0.5):
        message = await final_reply(slack, await ask(slack))
    assert message.text == ANSWER and notes(message) == []


# -- Slack fails ------------------------------------------------------------------------------


async def test_slack_failures_during_the_answer_still_end_in_the_exact_text(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(Answer(text=ANSWER, chunk_size=3, token_delay=0.03))
    slack.fail_next("chat.postMessage", "500")  # the placeholder, retried
    for kind in ("ratelimited", "500", "reset", "hang", "503"):
        slack.fail_next("chat.update", kind)
    async with start_bot():
        message = await final_reply(slack, await ask(slack), timeout=20)
    assert message.text == ANSWER and notes(message) == []
    assert sum(1 for c in slack.calls_to("chat.update") if not c.ok) == 5


async def test_an_exception_in_the_turn_leaves_no_writing_message(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, redis_client: aioredis.Redis
) -> None:
    parent = slack.add_message(CHANNEL, "an earlier question")
    # A corrupt history entry makes reading the thread's context fail after the placeholder.
    await redis_client.rpush(f"slackbot:{{T0001}}:thread:{CHANNEL}:{parent}", "{not json")
    async with start_bot():
        await slack.send_event(mention_event("and now?", thread_ts=parent))
        message = await final_reply(slack, parent)
    assert message.text == FAILED_TEXT


async def test_shutting_down_mid_answer_leaves_the_text_with_a_note(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(Answer(text=ANSWER, chunk_size=4, stall_after=3))
    async with start_bot(model_idle_timeout=60, shutdown_grace=0.2):
        thread = await ask(slack)
        await slack.wait_call("chat.update", lambda c: c.args["text"] == ANSWER[:12])
    # Leaving the block stopped the bot: the answer it was writing got its last form first.
    message = await final_reply(slack, thread, timeout=1)
    assert message.text == ANSWER[:12]
    assert notes(message) == [Outcome.SHUTDOWN.note]
    await streams_closed(slack, llm)


# -- timing and the shared budget -------------------------------------------------------------


async def test_the_first_text_replaces_the_placeholder_right_after_the_first_token(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(Answer(chunks=["Paris", " is", " the capital."], ttft=0.3, token_delay=1.0))
    async with start_bot(edit_interval=5.0):
        thread = await ask(slack)
        first = await slack.wait_call("chat.update", ok=True)
        message = await final_reply(slack, thread)
    placeholder = slack.ok_calls("chat.postMessage")[0]
    first_token_at = llm.requests[0].emitted[0][0]  # both fakes read time.monotonic
    assert placeholder.at < first_token_at
    assert first.args["text"] == "Paris"
    assert first.at - first_token_at < 0.3
    # A 5 s interval: after the first text, only the final edit.
    assert [c.args["text"] for c in slack.calls_to("chat.update")] == [
        "Paris",
        "Paris is the capital.",
    ]
    assert message.text == "Paris is the capital."


async def test_twenty_concurrent_answers_share_the_budget_without_a_429(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    # The default budgets (Slack 50/min burst 5, the bot 45/min burst 3), both scaled up six
    # times so the test takes seconds: the ratio and the bursts are what matter.
    slack.budgets["chat.update"] = (300, 5)

    def answer(body: dict[str, Any]) -> Answer:
        question = body["messages"][-1]["content"]
        return Answer(text=f"{question} is answered here " * 8, chunk_size=6, token_delay=0.05)

    llm.default = answer
    async with start_bot(edit_budget_per_minute=270, edit_budget_burst=3, edit_interval=1.0):
        threads = [await ask(slack, f"question {n}") for n in range(20)]
        finals = [await final_reply(slack, t, timeout=30) for t in threads]
        await streams_closed(slack, llm)

    assert [c for c in slack.calls_to("chat.update") if c.status == 429] == []
    for n, message in enumerate(finals):
        assert message.text == render_final(f"question {n} is answered here " * 8)
        edits = [c for c in slack.calls_to("chat.update") if c.args["ts"] == message.ts]
        duration = edits[-1].at - edits[0].at
        assert len(edits) <= duration / 1.0 + 2
