"""Who gets an answer, where, and with what context — real event bodies through the real app
(Socket Mode), a real redis-server, and the fake Slack / OpenAI servers."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from bot.compose import RunningBot
from bot.conversation import INTERRUPTED_MARK
from bot.turn import HELP_TEXT
from tests.fakes.openai import Answer, FakeOpenAI, echo_last_user
from tests.fakes.slack import FakeSlack, mention_event, message_event
from tests.redis_server import RedisServer


@pytest.fixture(autouse=True)
def echo(llm: FakeOpenAI) -> None:
    llm.default = echo_last_user  # each answer repeats the question: easy to tell apart


def _finished(message: Any, text: str) -> bool:
    return message.text == text and "writing" not in str(message.blocks)


async def answered(slack: FakeSlack, text: str, timeout: float = 10) -> Any:
    """Wait until a bot message shows exactly ``text`` as a finished answer and return it."""
    await slack.wait_for(
        lambda: any(_finished(m, text) for m in slack.bot_messages()), timeout=timeout, what=text
    )
    return next(m for m in slack.bot_messages() if _finished(m, text))


async def settle(slack: FakeSlack, llm: FakeOpenAI, envelopes: list[str]) -> None:
    """Every envelope acked, then a sentinel DM answered: earlier ignored events had their chance."""
    for envelope in envelopes:
        await slack.wait_ack(envelope)
    await slack.send_event(message_event("sentinel", channel="D0SENT", channel_type="im"))
    await answered(slack, "sentinel")


def said(user: str, text: str) -> str:
    """A person's message as the model sees it where several people talk (see
    bot.conversation.prompt_window)."""
    return json.dumps({"from": user, "text": text}, ensure_ascii=False)


def bot_texts(slack: FakeSlack) -> list[str]:
    return [m.text for m in slack.bot_messages()]


# -- 1, 3: channels and threads ----------------------------------------------------------------


async def test_follow_up_in_an_engaged_thread_needs_no_mention(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    first = mention_event("first question")
    await slack.send_event(first)
    await answered(slack, "first question")
    await slack.send_event(message_event("second question", thread_ts=first["ts"]))
    reply = await answered(slack, "second question")
    assert reply.thread_ts == first["ts"]
    assert [m["content"] for m in llm.requests[1].messages[1:]] == [
        "first question",
        "first question",
        "second question",
    ]


async def test_messages_in_threads_the_bot_is_not_part_of_are_ignored(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    parent = slack.add_message("C0CHAN", "people talking")
    envelopes = [
        await slack.send_event(message_event("not for the bot", thread_ts=parent)),
        await slack.send_event(message_event("top level chatter")),
    ]
    await settle(slack, llm, envelopes)
    assert bot_texts(slack) == ["sentinel"]


async def test_mention_in_an_engaged_thread_is_answered_once(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    first = mention_event("hello")
    await slack.send_event(first)
    await answered(slack, "hello")
    twin = mention_event("again", thread_ts=first["ts"])
    as_message = message_event(twin["text"], thread_ts=first["ts"], ts=twin["ts"])
    envelopes = [await slack.send_event(twin), await slack.send_event(as_message, record=False)]
    await answered(slack, "again")
    await settle(slack, llm, envelopes)
    assert bot_texts(slack).count("again") == 1
    assert len(slack.ok_calls("chat.postMessage")) == 3  # hello, again, sentinel


# -- 2, 10: backfill -----------------------------------------------------------------------------


async def test_summoned_into_a_thread_reads_it_once_then_uses_redis(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    parent = slack.add_message("C0CHAN", "Deploy failed on prod", user="U0ALICE")
    slack.add_message("C0CHAN", "Looks like the DB migration", user="U0BOB", thread_ts=parent)
    await slack.send_event(mention_event("what went wrong?", thread_ts=parent))
    await answered(slack, said("U0USER", "what went wrong?"))
    prompt = [m["content"] for m in llm.requests[0].messages[1:]]
    assert prompt == [
        said("U0ALICE", "Deploy failed on prod"),
        said("U0BOB", "Looks like the DB migration"),
        said("U0USER", "what went wrong?"),
    ]
    assert len(slack.calls_to("conversations.replies")) == 1

    await slack.send_event(message_event("and now?", thread_ts=parent, user="U0BOB"))
    await answered(slack, said("U0BOB", "and now?"))
    assert len(slack.calls_to("conversations.replies")) == 1  # Redis is the source now
    assert [m["content"] for m in llm.requests[1].messages[1:]][-3:] == [
        said("U0USER", "what went wrong?"),
        said("U0USER", "what went wrong?"),  # the bot's answer (an echo)
        said("U0BOB", "and now?"),
    ]


async def test_thread_lost_by_redis_is_rebuilt_from_slack(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI, redis_server: RedisServer
) -> None:
    first = mention_event("remember the word banana")
    await slack.send_event(first)
    await answered(slack, "remember the word banana")
    redis_server.flush()  # expired, evicted, flushed…
    await slack.send_event(mention_event("which word?", thread_ts=first["ts"]))
    await answered(slack, "which word?")
    prompt = [m["content"] for m in llm.requests[1].messages[1:]]
    assert prompt == ["remember the word banana", "remember the word banana", "which word?"]
    roles = [m["role"] for m in llm.requests[1].messages[1:]]
    assert roles == ["user", "assistant", "user"]


# -- 4: DMs --------------------------------------------------------------------------------------


async def test_top_level_dms_are_answered_at_the_top_level_with_recent_context(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    await slack.send_event(message_event("one", channel="D0DM", channel_type="im"))
    first = await answered(slack, "one")
    await slack.send_event(message_event("two", channel="D0DM", channel_type="im"))
    second = await answered(slack, "two")
    assert first.thread_ts is None and second.thread_ts is None
    assert [m["content"] for m in llm.requests[1].messages[1:]] == ["one", "one", "two"]


async def test_replies_in_a_dm_thread_continue_that_thread(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    parent = slack.add_message("D0DM", "a DM topic", user="U0USER")
    await slack.send_event(
        message_event("in the thread", channel="D0DM", channel_type="im", thread_ts=parent)
    )
    reply = await answered(slack, "in the thread")
    assert reply.thread_ts == parent
    assert [m["content"] for m in llm.requests[0].messages[1:]] == ["a DM topic", "in the thread"]


async def test_dm_thread_mode_answers_each_top_level_dm_in_its_own_thread(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    async with start_bot(dm_reply_mode="thread"):
        event = message_event("threaded please", channel="D0DM", channel_type="im")
        await slack.send_event(event)
        reply = await answered(slack, "threaded please")
        assert reply.thread_ts == event["ts"]


async def test_group_dms_behave_like_channels(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    ignored = await slack.send_event(
        message_event("chatting", channel="G0MPIM", channel_type="mpim")
    )
    await settle(slack, llm, [ignored])
    await slack.send_event(mention_event("bot, help", channel="G0MPIM", channel_type="mpim"))
    reply = await answered(slack, "bot, help")
    assert reply.thread_ts is not None
    assert "chatting" not in bot_texts(slack)


# -- 5, 6: never answered, always acknowledged -----------------------------------------------------


async def test_bots_edits_deletions_and_joins_are_ignored_but_acknowledged(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    first = mention_event("engage")
    await slack.send_event(first)
    await answered(slack, "engage")
    thread = first["ts"]
    ignored = [
        message_event("my own post", thread_ts=thread, user="U0BOT", bot_id="B0BOT"),
        message_event("another bot", thread_ts=thread, user="U0OTHER", bot_id="B0OTHER"),
        message_event("bot message", thread_ts=thread, subtype="bot_message", bot_id="B0OTHER"),
        message_event("", thread_ts=thread, subtype="message_changed"),
        message_event("", thread_ts=thread, subtype="message_deleted"),
        message_event("joined", subtype="channel_join"),
        message_event("topic", subtype="channel_topic"),
        message_event("*waves*", thread_ts=thread, subtype="me_message"),
        mention_event("hey bot, says another bot", user="U0OTHER", bot_id="B0OTHER"),
    ]
    envelopes = [await slack.send_event(e, record=False) for e in ignored]
    await settle(slack, llm, envelopes)
    assert bot_texts(slack) == ["engage", "sentinel"]
    assert all(slack.acks[e] is not None for e in envelopes)


async def test_file_shares_and_broadcasts_are_people_talking(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    first = mention_event("engage")
    await slack.send_event(first)
    await answered(slack, "engage")
    await slack.send_event(message_event("see file", thread_ts=first["ts"], subtype="file_share"))
    await answered(slack, "see file")
    await slack.send_event(
        message_event("to all", thread_ts=first["ts"], subtype="thread_broadcast")
    )
    await answered(slack, "to all")


async def test_an_empty_mention_gets_help_without_a_model_call(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    event = mention_event("   ")
    await slack.send_event(event)
    reply = await answered(slack, HELP_TEXT)
    assert reply.thread_ts == event["ts"]
    assert llm.requests == []


# -- 9: what is stored is what was shown --------------------------------------------------------


async def test_an_interrupted_answer_is_remembered_as_shown_and_marked(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(Answer(chunks=["The first", " half", " and the rest"], disconnect_after=2))
    first = mention_event("tell me")
    await slack.send_event(first)
    await slack.wait_for(
        lambda: any(m.text == "The first half" for m in slack.bot_messages()), timeout=10
    )
    await slack.send_event(message_event("go on", thread_ts=first["ts"]))
    await answered(slack, "go on")
    assistant = llm.requests[1].messages[2]
    assert assistant == {"role": "assistant", "content": f"The first half\n{INTERRUPTED_MARK}"}


# -- 11, 12: duplicates and one answer at a time -------------------------------------------------


async def test_slack_retries_of_an_event_get_one_answer(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    event = mention_event("only once")
    envelopes = [
        await slack.send_event(
            event, event_id="Ev0RETRY", retry_attempt=n, retry_reason="timeout" if n else ""
        )
        for n in range(3)
    ]
    await answered(slack, "only once")
    await settle(slack, llm, envelopes)
    assert bot_texts(slack).count("only once") == 1
    assert len(llm.requests) == 2  # the answer and the sentinel


async def test_a_message_during_an_answer_waits_and_sees_it(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(Answer(text="a slow first answer", ttft=0.3, token_delay=0.05))
    first = mention_event("first")
    await slack.send_event(first)
    await llm.wait_requests(1)
    await slack.send_event(message_event("second", thread_ts=first["ts"]))
    await answered(slack, "second")
    first_answer = await answered(slack, "a slow first answer")
    second_answer = await answered(slack, "second")
    # The second placeholder went up at once, but its model call waited for the first answer.
    assert float(first_answer.ts) < float(second_answer.ts)
    assert llm.requests[1].at >= llm.requests[0].at
    assert [m["content"] for m in llm.requests[1].messages[1:]] == [
        "first",
        "a slow first answer",
        "second",
    ]


# -- 13: Redis outage ---------------------------------------------------------------------------


async def test_bot_answers_through_a_redis_outage_and_recovers(
    start_bot: Any,
    slack: FakeSlack,
    llm: FakeOpenAI,
    own_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with start_bot(redis_url=own_redis.url):
        first = mention_event("before the outage")
        await slack.send_event(first)
        await answered(slack, "before the outage")

        own_redis.stop()
        during = mention_event("during the outage", thread_ts=first["ts"])
        await slack.send_event(during)
        await answered(slack, "during the outage")
        retry = await slack.send_event(during, retry_attempt=1)  # still deduplicated in memory
        await slack.send_event(message_event("another", channel="D0DM", channel_type="im"))
        await answered(slack, "another")
        await slack.wait_ack(retry)
        assert bot_texts(slack).count("during the outage") == 1

        own_redis.start()
        await slack.send_event(mention_event("after", thread_ts=first["ts"]))
        await answered(slack, "after")
        await slack.send_event(message_event("still here?", thread_ts=first["ts"]))
        await answered(slack, "still here?")  # the thread is known again: no mention needed

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "bot.store"]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert not any(r.exc_info for r in caplog.records if r.name.startswith("bot"))
