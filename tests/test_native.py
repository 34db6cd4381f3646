"""End to end: answers through Slack's native streams (STREAM_MODE=native|auto) — text shows on a
timer, the stream ends with the feedback buttons, and every way a stream can end early (expiry,
a failed start, the person's stop, model errors) still leaves the exact answer and no status."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from bot.conversation import ThreadKey
from bot.render.feedback import FEEDBACK_ACTION_ID, FEEDBACK_BLOCK_ID
from bot.render.reply import EMPTY_TEXT, FAILED_TEXT
from bot.render.text import render_final
from tests.fakes.openai import Answer, FakeOpenAI
from tests.fakes.slack import (
    FakeSlack,
    Message,
    assistant_thread_started_event,
    block_actions_payload,
    mention_event,
    message_event,
)
from tests.views import bot_replies, notes, working

NATIVE = {"stream_mode": "native", "native_flush_interval": 0.1}


def has_feedback(message: Message) -> bool:
    return any(
        element.get("action_id") == FEEDBACK_ACTION_ID
        for block in message.blocks or []
        for element in block.get("elements") or []
    )


async def only_reply(slack: FakeSlack, channel: str, thread_ts: str) -> Message:
    await slack.wait_for(
        lambda: bool(bot_replies(slack, channel, thread_ts)), timeout=10, what="a reply"
    )
    return bot_replies(slack, channel, thread_ts)[0]


async def settled(slack: FakeSlack, channel: str, ts: str, what: str) -> Message:
    """The message once nothing streams into it and it shows no working indicator."""

    def done() -> bool:
        message = slack.message(channel, ts)
        return message is not None and not message.streaming and not working(message)

    await slack.wait_for(done, timeout=20, what=what)
    message = slack.message(channel, ts)
    assert message is not None
    return message


async def test_a_native_stream_shows_text_early_and_ends_with_feedback_buttons(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, redis_client: Any
) -> None:
    answer = "Native streaming, **bold** and `code`: " + "streamed words " * 30
    llm.script(Answer(text=answer, ttft=0.1, chunk_size=4, token_delay=0.02))
    async with start_bot(**NATIVE) as running:
        event = mention_event("stream it")
        await slack.send_event(event)
        start = await slack.wait_call("chat.startStream", ok=True)
        # Outside a DM Slack must be told who reads the stream; it goes in the mention's thread.
        assert start.args["thread_ts"] == event["ts"]
        assert (start.args["recipient_user_id"], start.args["recipient_team_id"]) == (
            "U0USER",
            "T0001",
        )
        ts = start.response["ts"]
        # Text shows long before 256 characters have piled up (the SDK helper's only trigger).
        await slack.wait_for(
            lambda: 0 < len(slack.message("C0CHAN", ts).text) < 256, timeout=5, what="early text"
        )
        assert llm.requests[0].outcome == "open"  # the model was still writing
        final = await settled(slack, "C0CHAN", ts, "the stream to stop")

        # A 👍 on the streamed answer is stored for that message and counted.
        ack = await slack.send_interactive(
            block_actions_payload(
                FEEDBACK_ACTION_ID,
                value="good",
                action_type="feedback_buttons",
                message_ts=ts,
                thread_ts=event["ts"],
                block_id=FEEDBACK_BLOCK_ID,
            )
        )
        await slack.wait_ack(ack)
        votes_key = f"slackbot:{{T0001}}:feedback:C0CHAN:{ts}"
        await slack.wait_for(lambda: bool(slack.ephemerals_for("U0USER")), timeout=5)
        votes = await redis_client.hgetall(votes_key)
        counted = running.metrics.registry.get_sample_value(
            "slackbot_feedback_total", {"vote": "good"}
        )

    assert final.text == answer  # exactly the model's Markdown, nothing twice
    assert has_feedback(final) and not notes(final)
    assert votes == {b"U0USER": b"good"} and counted == 1
    assert [m.ts for m in bot_replies(slack, "C0CHAN", event["ts"])] == [ts]
    assert not slack.calls_to("chat.update") and not slack.calls_to("chat.postMessage")
    appends = slack.ok_calls("chat.appendStream")
    assert len(appends) >= 2  # it grew while the model wrote
    gaps = [b.at - a.at for a, b in itertools.pairwise(appends)]
    assert min(gaps) >= 0.05  # paced by the flush interval, not one call per token


async def test_a_stream_slack_expires_mid_answer_is_finished_by_editing_the_same_message(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    slack.stream_lifetime = 0.8
    answer = "First part of a long answer. " * 8 + "\n\nSecond part, after Slack closed it."
    llm.script(Answer(text=answer, ttft=0.1, chunk_size=6, token_delay=0.05))
    async with start_bot(**NATIVE):
        event = mention_event("long one")
        await slack.send_event(event)
        start = await slack.wait_call("chat.startStream", ok=True)
        ts = start.response["ts"]
        await slack.wait_call("chat.update", ok=True, timeout=15)
        final = await settled(slack, "C0CHAN", ts, "the edited final text")

    refused = [c for c in slack.calls_to("chat.appendStream") if not c.ok]
    assert refused and refused[0].error == "message_not_in_streaming_state"
    assert final.text == render_final(answer)  # the whole answer, exactly, in the same message
    assert has_feedback(final) and not notes(final)
    assert [m.ts for m in bot_replies(slack, "C0CHAN", event["ts"])] == [ts]


async def test_when_slack_refuses_the_stream_the_answer_comes_by_edits(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    answer = "Answered the classic way."
    llm.script(Answer(text=answer, ttft=0.3), Answer(text="Second answer.", ttft=0.1))
    slack.fail_next("chat.startStream", "messages_tab_disabled")
    async with start_bot(stream_mode="auto", native_flush_interval=0.1):
        first = mention_event("one")
        await slack.send_event(first)
        reply = await only_reply(slack, "C0CHAN", first["ts"])
        final = await settled(slack, "C0CHAN", reply.ts, "the edited answer")
        assert final.text == answer and has_feedback(final)
        # The placeholder went up at once, before the model's first token.
        post = slack.ok_calls("chat.postMessage")[0]
        assert post.response["ts"] == reply.ts and post.at < llm.requests[0].emitted[0][0]

        # ``auto`` remembers the refusal for this channel: the next answer edits at once.
        second = mention_event("two")
        await slack.send_event(second)
        again = await only_reply(slack, "C0CHAN", second["ts"])
        await settled(slack, "C0CHAN", again.ts, "the second answer")
    assert len(slack.calls_to("chat.startStream")) == 1


async def test_a_top_level_dm_has_no_thread_to_stream_into_and_uses_edits(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(Answer(text="Top-level answer.", ttft=0.1))
    async with start_bot(**NATIVE):
        await slack.send_event(message_event("hi", channel="D0DM", channel_type="im"))
        post = await slack.wait_call("chat.postMessage", ok=True)
        await settled(slack, "D0DM", post.response["ts"], "the DM answer")
    assert slack.message("D0DM", post.response["ts"]).text == "Top-level answer."
    assert not slack.calls_to("chat.startStream")


async def test_the_persons_stop_ends_the_answer_and_the_model_stream(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(Answer(text="word " * 400, chunk_size=5, token_delay=0.05))
    async with start_bot(**NATIVE) as running:
        event = mention_event("write a lot")
        await slack.send_event(event)
        start = await slack.wait_call("chat.startStream", ok=True)
        ts = start.response["ts"]
        await slack.wait_for(lambda: len(slack.message("C0CHAN", ts).text) > 20, timeout=5)
        slack.press_stop("C0CHAN", ts)
        final = await settled(slack, "C0CHAN", ts, "the stopped answer")
        await slack.wait_for(lambda: llm.open_streams == 0, timeout=3, what="model closed")
        await slack.wait_for(lambda: running.turns.inflight == 0, timeout=5)
        turns = await running.store.history.history(ThreadKey("T0001", "C0CHAN", event["ts"]))

    assert any(c.error == "stopped_by_user" for c in slack.calls_to("chat.appendStream"))
    assert final.text.startswith("word") and len(final.text) < len("word " * 400)
    assert any("Stopped" in note for note in notes(final))
    assert not has_feedback(final)
    # Remembered as the cut-short answer it is.
    assert turns[-1].role == "assistant" and turns[-1].interrupted
    assert final.text.startswith(render_final(turns[-1].text)[:20])


async def test_status_is_kept_fresh_while_the_model_thinks_and_cleared_after(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    slack.status_ttl = 1.6  # Slack drops a status after ~2 min; the bot refreshes before that
    llm.script(Answer(text="Thought it through.", ttft=4.0))
    async with start_bot(**NATIVE, status_refresh=1.0):
        thread = "1699999999.000100"
        await slack.send_event(
            message_event("think hard", channel="D0DM", channel_type="im", thread_ts=thread)
        )
        await slack.wait_for(lambda: bool(slack.status("D0DM", thread)), timeout=5)
        seen = []
        while not slack.calls_to("chat.startStream"):
            seen.append(slack.status("D0DM", thread))
            await asyncio.sleep(0.1)
        reply = await only_reply(slack, "D0DM", thread)
        final = await settled(slack, "D0DM", reply.ts, "the answer")

    assert len(seen) > 25 and all(s == "is thinking…" for s in seen[:-2])
    assert len([c for c in slack.calls_to("assistant.threads.setStatus") if c.args["status"]]) >= 3
    start = slack.ok_calls("chat.startStream")[0]
    assert "recipient_user_id" not in start.args  # a DM needs no recipient
    assert final.text == "Thought it through." and has_feedback(final)
    assert slack.status("D0DM", thread) == ""
    assert slack.calls_to("assistant.threads.setStatus")[-1].args["status"] == ""
    assert slack.titles[("D0DM", thread)] == "think hard"  # named after its first question


async def test_status_is_cleared_and_the_failure_explained_when_the_model_fails(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.default = Answer(status=500)  # every retry fails too
    async with start_bot(**NATIVE):
        thread = "1699999999.000200"
        await slack.send_event(
            message_event("hello", channel="D0DM", channel_type="im", thread_ts=thread)
        )
        reply = await only_reply(slack, "D0DM", thread)
        final = await settled(slack, "D0DM", reply.ts, "the failure note")
        await slack.wait_for(
            lambda: slack.calls_to("assistant.threads.setStatus")[-1].args["status"] == "",
            timeout=5,
        )
    assert final.text == FAILED_TEXT and not has_feedback(final)
    assert slack.status("D0DM", thread) == ""
    assert not slack.calls_to("chat.startStream")  # no empty stream was opened for nothing


async def test_an_empty_stream_opened_in_a_channel_still_ends_with_a_note(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(Answer(text="", ttft=0.2))
    async with start_bot(**NATIVE):
        event = mention_event("say nothing")
        await slack.send_event(event)
        start = await slack.wait_call("chat.startStream", ok=True)
        final = await settled(slack, "C0CHAN", start.response["ts"], "the empty-answer note")
    assert final.text == EMPTY_TEXT


async def test_mentions_and_broadcasts_the_model_writes_stay_plain_text(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(Answer(text="Ping <!here> and <@U0BOSS> in <#C0GEN>", chunks=None, chunk_size=7))
    async with start_bot(**NATIVE):
        event = mention_event("be loud")
        await slack.send_event(event)
        start = await slack.wait_call("chat.startStream", ok=True)
        final = await settled(slack, "C0CHAN", start.response["ts"], "the answer")
    for token in ("<!here>", "<@U0BOSS>", "<#C0GEN>"):
        assert token not in final.text
    assert final.text.replace("\u2060", "") == "Ping <!here> and <@U0BOSS> in <#C0GEN>"


async def test_with_no_start_budget_left_auto_answers_by_edits_without_a_429(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.default = Answer(text="Many at once.", ttft=0.3)
    async with start_bot(stream_mode="auto", native_start_budget_per_minute=1):
        events = [mention_event(f"q{i}") for i in range(6)]
        for event in events:
            await slack.send_event(event)
        for event in events:
            reply = await only_reply(slack, "C0CHAN", event["ts"])
            final = await settled(slack, "C0CHAN", reply.ts, "each answer")
            assert final.text == "Many at once."
    starts = slack.calls_to("chat.startStream")
    assert 1 <= len(starts) <= 3  # the budget's burst; the rest were edited
    assert all(c.ok for c in starts)


async def test_an_append_that_may_have_landed_is_not_retried_but_edited_to_the_exact_text(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    answer = "One sentence after another, streamed slowly. " * 6
    llm.script(Answer(text=answer, ttft=0.1, chunk_size=5, token_delay=0.03))
    async with start_bot(**NATIVE):
        event = mention_event("careful")
        await slack.send_event(event)
        start = await slack.wait_call("chat.startStream", ok=True)
        ts = start.response["ts"]
        await slack.wait_call("chat.appendStream", ok=True)
        slack.fail_next("chat.appendStream", "500")
        await slack.wait_call("chat.appendStream", lambda c: c.status == 500)
        final = await settled(slack, "C0CHAN", ts, "the edited answer")
        await slack.wait_for(lambda: final.text == render_final(answer), timeout=10)

    failed = next(i for i, c in enumerate(slack.calls) if c.status == 500)
    # Never sent again as an append: the stream was closed and the message edited instead.
    assert next(c.method for c in slack.calls[failed + 1 :] if c.method.startswith("chat.")) == (
        "chat.stopStream"
    )
    assert not [c for c in slack.calls[failed + 1 :] if c.method == "chat.appendStream"]
    assert has_feedback(final)
    assert [m.ts for m in bot_replies(slack, "C0CHAN", event["ts"])] == [ts]


async def test_an_orphaned_native_stream_is_closed_and_keeps_its_text(
    start_bot: Any, slack: FakeSlack, redis_client: Any
) -> None:
    async with start_bot(**NATIVE) as running:
        ts = slack.add_message("C0CHAN", "A **partial** answer", user="U0BOT", bot_id="B0BOT")
        message = slack.message("C0CHAN", ts)
        message.streaming = True  # what a process killed mid-stream leaves behind
        record = json.dumps(
            {
                "owner": "gone-1",
                "native": True,
                "team": "T0001",
                "channel": "C0CHAN",
                "thread_ts": "1699999999.000300",
                "ts": ts,
                "text": "A **partial** answer",
            }
        )
        await redis_client.hset("slackbot:inflight", "r1", record)
        inflight = running.inflight
        await inflight.sweep()
        await slack.wait_for(lambda: "please ask again" in str(message.blocks), timeout=5)
    assert not message.streaming
    assert message.text == "A *partial* answer"  # what the user saw, as an edited message


async def test_an_assistant_thread_is_named_after_its_first_question_not_the_greeting(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.default = Answer(text="Sure.", ttft=0.1)
    async with start_bot(stream_mode="auto") as running:
        started = assistant_thread_started_event(channel="D0ASSIST")
        thread = started["assistant_thread"]["thread_ts"]
        await slack.send_event(started)
        await only_reply(slack, "D0ASSIST", thread)  # the greeting
        question = "@here How do I rotate my API keys safely?\nWe use Vault."
        await slack.send_event(
            message_event(question, channel="D0ASSIST", channel_type="im", thread_ts=thread)
        )
        await slack.wait_for(lambda: ("D0ASSIST", thread) in slack.titles, timeout=10)
        await slack.wait_for(lambda: running.turns.inflight == 0, timeout=10)
        follow_up = "And for database passwords?"
        await slack.send_event(
            message_event(follow_up, channel="D0ASSIST", channel_type="im", thread_ts=thread)
        )
        await slack.wait_for(lambda: len(llm.requests) == 2, timeout=10)
        await slack.wait_for(lambda: running.turns.inflight == 0, timeout=10)
    # Named after its first line, with the mention that would ping a channel defused.
    assert slack.titles[("D0ASSIST", thread)] == "@\u2060here How do I rotate my API keys safely?"
    assert len(slack.calls_to("assistant.threads.setTitle")) == 1  # the follow-up keeps it
    streamed = [m for m in bot_replies(slack, "D0ASSIST", thread) if m.text == "Sure."]
    assert len(streamed) == 2 and all(has_feedback(m) for m in streamed)


async def test_an_answer_too_long_for_one_native_message_continues_in_the_thread(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    paragraphs = [f"Paragraph {n}: " + "plain words " * 30 for n in range(40)]
    answer = "\n\n".join(paragraphs)  # ~15,000 characters
    llm.script(Answer(text=answer, ttft=0.1, chunk_size=400, token_delay=0.01))
    async with start_bot(**NATIVE):
        event = mention_event("write a book")
        await slack.send_event(event)
        await slack.wait_call("chat.startStream", ok=True)
        await slack.wait_for(
            lambda: (
                " ".join(m.text for m in bot_replies(slack, "C0CHAN", event["ts"])).count(
                    "Paragraph"
                )
                == 40
                and not any(
                    m.streaming or working(m) for m in bot_replies(slack, "C0CHAN", event["ts"])
                )
            ),
            timeout=30,
            what="the whole answer, finished",
        )
    replies = bot_replies(slack, "C0CHAN", event["ts"])
    assert len(replies) >= 4 and all(len(m.text) <= 4000 for m in replies)
    shown = [p for m in replies for p in m.text.split("\n\n")]
    assert [p.strip() for p in shown] == [p.strip() for p in paragraphs]  # each once, in order
    assert has_feedback(replies[-1]) and not any(has_feedback(m) for m in replies[:-1])


async def test_the_first_text_shows_right_after_the_first_token_even_with_a_long_interval(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    # Appends are paced 30 s apart; the model sends one word, then nothing until the idle
    # timeout ends the answer 4 s later. The word must show while the model is still silent,
    # not one append interval after the stream opened (nor only when the answer ends).
    llm.script(Answer(text="Hello there", chunk_size=6, ttft=0.3, stall_after=1))
    async with start_bot(stream_mode="native", native_flush_interval=30.0, model_idle_timeout=4):
        event = mention_event("one word please")
        await slack.send_event(event)
        start = await slack.wait_call("chat.startStream", ok=True)
        assert start.args.get("markdown_text", "") == ""  # a channel's stream opens empty
        ts = start.response["ts"]
        await slack.wait_for(
            lambda: slack.message("C0CHAN", ts).text == "Hello ", timeout=10, what="first text"
        )
        still_writing = llm.requests[0].outcome == "open"
        final = await settled(slack, "C0CHAN", ts, "the interrupted answer")

    assert still_writing  # shown before the model's silence ended the answer
    assert slack.ok_calls("chat.appendStream")[0].args["markdown_text"] == "Hello "
    assert final.text == "Hello " and any("interrupted" in note for note in notes(final))
