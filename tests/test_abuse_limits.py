"""Bounds a person or a model cannot push the bot past (issue 15, findings 1 and 3): an answer's
length, and how often the bot posts refusals and help notes — end to end through the real app,
a real Redis and the fake Slack / OpenAI servers."""

from __future__ import annotations

import itertools
from typing import Any

import redis.asyncio as aioredis

from tests.fakes.openai import Answer, FakeOpenAI
from tests.fakes.slack import FakeSlack, mention_event, message_event
from tests.views import bot_replies, notes, working

CHANNEL = "C0CHAN"


_sentinels = itertools.count()


async def settle(slack: FakeSlack, envelopes: list[str]) -> None:
    """Every envelope acked, then someone else's DM answered: the others had their chance."""
    for envelope in envelopes:
        await slack.wait_ack(envelope)
    channel = f"D0SENT{next(_sentinels)}"
    await slack.send_event(message_event("hi", user="U0OTHER", channel=channel, channel_type="im"))
    await slack.wait_for(
        lambda: any(not working(m) for m in slack.bot_messages(channel)), timeout=10
    )


async def long_answer(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, redis_client: aioredis.Redis, answer: Answer
) -> None:
    async with start_bot(max_answer_chars=6000, max_answer_tokens=1500):
        llm.script(answer)
        event = mention_event("write forever")
        await slack.send_event(event)

        def finished() -> bool:
            replies = bot_replies(slack, CHANNEL, event["ts"])
            return bool(replies) and any("interrupted" in note for note in notes(replies[-1]))

        await slack.wait_for(finished, timeout=20, what="the cut answer's last form")
        await slack.wait_for(lambda: llm.open_streams == 0, timeout=5, what="the stream closed")
        replies = bot_replies(slack, CHANNEL, event["ts"])
        shown = "".join(m.text for m in replies)
        # About MAX_ANSWER_CHARS in a few messages, not the whole flood; the last says it was cut.
        assert 5000 < len(shown) <= 6100
        assert len(replies) <= 4
        assert any("interrupted" in note for note in notes(replies[-1]))
        assert llm.requests[0].body["max_tokens"] == 1500  # OpenAI-compatible server: max_tokens
        stored = await redis_client.lrange(
            f"slackbot:{{T0001}}:thread:{CHANNEL}:{event['ts']}", 0, -1
        )
        assert sum(len(item) for item in stored) < 40_000


async def test_an_endless_answer_is_cut_at_its_cap_with_a_note(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, redis_client: aioredis.Redis
) -> None:
    text = "All work and no play makes the bot a dull bot. " * 7000  # ~330,000 characters
    await long_answer(start_bot, slack, llm, redis_client, Answer(text=text, chunk_size=400))


async def test_one_enormous_chunk_is_cut_too(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, redis_client: aioredis.Redis
) -> None:
    chunk = "word " * 400_000  # 2 MB in one SSE event
    await long_answer(start_bot, slack, llm, redis_client, Answer(chunks=[chunk]))


async def test_a_person_over_the_rate_limit_gets_one_refusal_per_window(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.default = lambda request: Answer(text="an answer")
    async with start_bot(user_rate_limit=3):
        envelopes = [await slack.send_event(mention_event(f"question {n}")) for n in range(10)]
        await settle(slack, envelopes)
        # Empty mentions count too: they would otherwise be a free channel for help notes.
        envelopes = [await slack.send_event(mention_event("")) for _ in range(10)]
        await settle(slack, envelopes)
    texts = [m.text for m in slack.bot_messages()]
    assert texts.count("an answer") == 3 + 2  # three questions, and the other person's DMs
    assert sum("questions in a short time" in t for t in texts) == 1
    assert not any("Ask me anything" in t for t in texts)  # the help notes were over the limit


async def test_help_notes_are_limited_like_questions(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.default = lambda request: Answer(text="an answer")
    async with start_bot(user_rate_limit=2):
        envelopes = [await slack.send_event(mention_event("")) for _ in range(10)]
        await settle(slack, envelopes)
    texts = [m.text for m in slack.bot_messages()]
    assert sum("Ask me anything" in t for t in texts) == 2
    assert sum("questions in a short time" in t for t in texts) == 1
