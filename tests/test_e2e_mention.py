"""End to end: a mention delivered over Socket Mode streams an answer into one Slack message."""

from __future__ import annotations

from bot.compose import RunningBot
from tests.fakes.openai import Answer, FakeOpenAI
from tests.fakes.slack import FakeSlack, mention_event


def _final_updates(slack: FakeSlack, ts: str) -> list[str]:
    return [
        c.args["text"]
        for c in slack.ok_calls("chat.update")
        if c.args.get("ts") == ts and not _is_interim(c.args.get("blocks") or [])
    ]


def _is_interim(blocks: list[dict[str, object]]) -> bool:
    return any(b.get("type") in ("context", "actions") and "writing" in str(b) for b in blocks)


async def test_mention_streams_into_one_message_in_the_mentions_thread(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    answer = (
        "Paris is the capital of France. It sits on the Seine and has about two million people."
    )
    llm.script(Answer(text=answer, ttft=0.2, chunk_size=3, token_delay=0.02))
    event = mention_event("What is the capital of France?")
    envelope = await slack.send_event(event)
    await slack.wait_ack(envelope)

    post = await slack.wait_call("chat.postMessage", ok=True)
    assert post.args["thread_ts"] == event["ts"]
    ts = post.response["ts"]
    await slack.wait_for(lambda: slack.message("C0CHAN", ts).text == answer, timeout=10)
    await slack.wait_for(lambda: bool(_final_updates(slack, ts)), timeout=10)

    # The placeholder was visible before the model's first token.
    first_token_at = llm.requests[0].emitted[0][0]
    assert post.at < first_token_at
    interim = [c for c in slack.ok_calls("chat.update") if _is_interim(c.args.get("blocks") or [])]
    assert interim, "no interim edit while the answer streamed"
    assert all(answer.startswith(c.args["text"]) for c in interim)
    assert _final_updates(slack, ts) == [answer]
    # One reply message, in the thread: the question and the answer.
    assert [m.text for m in slack.thread("C0CHAN", event["ts"])] == [event["text"], answer]
    # The model was asked the question, with the bot's mention removed.
    assert llm.last_messages()[-1] == {"role": "user", "content": "What is the capital of France?"}


async def test_second_mention_in_the_thread_sends_the_first_exchange(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(Answer(text="It is Paris."), Answer(text="About two million."))
    first = mention_event("Capital of France?")
    await slack.send_event(first)
    await slack.wait_for(
        lambda: any(m.text == "It is Paris." for m in slack.bot_messages()), timeout=10
    )

    second = mention_event("How many people live there?", thread_ts=first["ts"])
    await slack.send_event(second)
    await slack.wait_for(
        lambda: any(m.text == "About two million." for m in slack.bot_messages()), timeout=10
    )

    messages = llm.requests[1].body["messages"]
    assert messages[0]["role"] == "system"
    assert messages[1:] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "It is Paris."},
        {"role": "user", "content": "How many people live there?"},
    ]
    # Both answers went into the first mention's thread.
    assert all(m.thread_ts == first["ts"] for m in slack.bot_messages())
