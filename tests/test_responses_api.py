"""``OPENAI_API_MODE=responses``: the Responses API stream feeds the same renderer as Chat
Completions — same answer, usage recorded, failures noted."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.render.text import render_final
from tests.fakes.openai import Answer, FakeOpenAI
from tests.fakes.slack import FakeSlack, mention_event
from tests.views import bot_replies, notes, working

ANSWER = "Two **APIs**, one answer:\n\n- chat\n- responses\n\n```python\nprint('same')\n```"


async def ask(slack: FakeSlack, question: str) -> Any:
    event = mention_event(question)
    await slack.send_event(event)
    await slack.wait_for(
        lambda: any(not working(m) for m in bot_replies(slack, "C0CHAN", event["ts"])), timeout=10
    )
    (reply,) = bot_replies(slack, "C0CHAN", event["ts"])
    return reply


@pytest.mark.parametrize("mode", ["chat", "responses"])
async def test_both_model_apis_give_the_same_answer_and_usage(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, redis_client: aioredis.Redis, mode: str
) -> None:
    llm.script(
        Answer(text=ANSWER, usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    )
    async with start_bot(openai_api_mode=mode):
        reply = await ask(slack, "compare")
    assert reply.text == render_final(ANSWER)
    request = llm.requests[0]
    assert request.path.endswith("/responses" if mode == "responses" else "/chat/completions")
    prompt = request.body["input" if mode == "responses" else "messages"]
    assert prompt[-1] == {"role": "user", "content": "compare"}
    (key,) = await redis_client.keys("slackbot:{T0001}:usage:*")
    counters = {k.decode(): int(v) for k, v in (await redis_client.hgetall(key)).items()}
    assert counters["user:U0USER:total_tokens"] > 0
    assert counters["team:completion_tokens"] > 0


async def test_a_failed_response_keeps_the_text_with_a_note(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(Answer(chunks=["Half an ", "answer", " and more"], error_after=2))
    async with start_bot(openai_api_mode="responses"):
        reply = await ask(slack, "fail midway")
    assert reply.text == "Half an answer"
    assert any("interrupted" in note for note in notes(reply))
    assert llm.open_streams == 0


async def test_a_truncated_response_stream_is_an_interruption(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(Answer(chunks=["Cut ", "short", " here"], truncate_after=2))
    async with start_bot(openai_api_mode="responses"):
        reply = await ask(slack, "truncate")
    assert reply.text == "Cut short"
    assert any("interrupted" in note for note in notes(reply))
