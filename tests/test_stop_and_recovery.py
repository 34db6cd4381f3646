"""Stop (one process and across replicas) and crash recovery (``kill -9`` mid-answer): no
message is left "writing…", and what the user saw stays."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from bot.compose import RunningBot
from bot.render.reply import INDICATOR_BLOCK_ID, PLACEHOLDER, STOP_ACTION_ID
from tests.bot_process import bot_env, spawn_bot, stop_bot
from tests.fakes.openai import Answer, FakeOpenAI
from tests.fakes.slack import FakeSlack, Message, block_actions_payload, mention_event
from tests.views import working

SLOW = Answer(text="word " * 400, chunk_size=5, token_delay=0.05)  # ~20 s unless stopped


def stop_value(message: Message) -> str | None:
    for block in message.blocks or ():
        for element in block.get("elements") or ():
            if element.get("action_id") == STOP_ACTION_ID:
                return str(element["value"])
    return None


async def streaming_reply(slack: FakeSlack) -> Message:
    """The bot's message once it shows text and its Stop button."""
    await slack.wait_for(
        lambda: any(m.text.startswith("word") and stop_value(m) for m in slack.bot_messages()),
        timeout=15,
        what="a streaming reply with a Stop button",
    )
    return next(m for m in slack.bot_messages() if m.text.startswith("word"))


async def test_stop_ends_the_answer_within_a_second_and_keeps_the_text(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(SLOW)
    event = mention_event("write a lot")
    await slack.send_event(event)
    reply = await streaming_reply(slack)
    value = stop_value(reply)
    assert value is not None

    ack = await slack.send_interactive(
        block_actions_payload(
            STOP_ACTION_ID, value=value, message_ts=reply.ts, thread_ts=event["ts"]
        )
    )
    await slack.wait_ack(ack)
    await slack.wait_for(
        lambda: "Stopped" in str(slack.message("C0CHAN", reply.ts).blocks), timeout=1.5
    )
    final = slack.message("C0CHAN", reply.ts)
    assert not working(final) and stop_value(final) is None  # the button went away
    assert final.text.startswith("word") and len(final.text) < len(SLOW.text.strip())
    await slack.wait_for(lambda: llm.open_streams == 0, timeout=2)


async def test_stop_reaches_the_replica_that_streams(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str, tmp_path: Path
) -> None:
    llm.script(SLOW)
    env = bot_env(slack, llm, redis_url)
    procs = [await spawn_bot(tmp_path / f"bot{n}.log", env) for n in range(2)]
    try:
        await slack.wait_connected(count=2, timeout=30)
        event = mention_event("write a lot")
        await slack.send_event(event, socket=0)
        reply = await streaming_reply(slack)
        value = stop_value(reply)
        assert value is not None
        await slack.send_interactive(
            block_actions_payload(STOP_ACTION_ID, value=value, message_ts=reply.ts), socket=1
        )
        await slack.wait_for(
            lambda: "Stopped" in str(slack.message("C0CHAN", reply.ts).blocks), timeout=1.5
        )
        assert not working(slack.message("C0CHAN", reply.ts))
    finally:
        codes = [await stop_bot(p) for p in procs]
    assert codes == [0, 0]


async def test_a_killed_process_leaves_no_message_writing(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str, tmp_path: Path
) -> None:
    llm.script(SLOW)
    env = bot_env(slack, llm, redis_url, REPLY_LEASE="2")
    doomed = await spawn_bot(tmp_path / "doomed.log", env)
    await slack.wait_connected(timeout=30)
    await slack.send_event(mention_event("write a lot"))
    reply = await streaming_reply(slack)
    await stop_bot(doomed, signal.SIGKILL)
    shown = slack.message("C0CHAN", reply.ts).text
    assert working(slack.message("C0CHAN", reply.ts))  # what kill -9 leaves behind

    survivor = await spawn_bot(tmp_path / "survivor.log", env)
    try:
        await slack.wait_for(lambda: not working(slack.message("C0CHAN", reply.ts)), timeout=15)
    finally:
        assert await stop_bot(survivor) == 0
    final = slack.message("C0CHAN", reply.ts)
    # The text the user saw stays (or the edit the dead process was sending, which extends it)…
    assert final.text.startswith(shown)
    assert "please ask again" in str(final.blocks)  # …with a note under it


async def test_an_orphaned_placeholder_becomes_the_note(
    bot: RunningBot, slack: FakeSlack, redis_client: Any
) -> None:
    ts = slack.add_message(
        "C0CHAN",
        PLACEHOLDER,
        user="U0BOT",
        bot_id="B0BOT",
        # What a placeholder shows: the working indicator.
        blocks=[{"type": "context", "block_id": INDICATOR_BLOCK_ID, "elements": []}],
    )
    record = '{"owner": "gone-1", "team": "T0001", "channel": "C0CHAN", "thread_ts": null, "ts": "%s", "text": ""}'
    await redis_client.hset("slackbot:inflight", "r1", record % ts)
    inflight = bot.inflight  # the same object the composition root wired
    # This sweep, or the bot's own periodic one if it came first, finishes it exactly once.
    await inflight.sweep()
    await slack.wait_for(lambda: "please ask again" in slack.message("C0CHAN", ts).text)
    assert len([c for c in slack.ok_calls("chat.update") if c.args["ts"] == ts]) == 1
    assert await redis_client.hlen("slackbot:inflight") == 0


# -- who may stop (issue 15, finding 6) ----------------------------------------------------------


async def test_only_the_person_who_asked_can_stop_the_answer(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(SLOW)
    slack.users["U0ADMIN"] = "An Admin"
    slack.admins.add("U0ADMIN")
    async with start_bot():
        event = mention_event("write a lot", user="U0ASKER")
        await slack.send_event(event)
        reply = await streaming_reply(slack)
        value = stop_value(reply)
        assert value is not None

        async def press(user: str) -> None:
            payload = block_actions_payload(
                STOP_ACTION_ID, value=value, user=user, message_ts=reply.ts, thread_ts=event["ts"]
            )
            await slack.wait_ack(await slack.send_interactive(payload))

        for someone in ("U0NOSY", "U0ADMIN"):  # admins only with STOP_BY_ADMINS
            await press(someone)
            await slack.wait_for(lambda who=someone: bool(slack.ephemerals_for(who)), timeout=3)
            (told,) = slack.ephemerals_for(someone)
            assert told.text == "Only the person who asked can stop this answer."
            assert working(slack.message("C0CHAN", reply.ts))  # still writing
        await press("U0ASKER")
        await slack.wait_for(
            lambda: "Stopped" in str(slack.message("C0CHAN", reply.ts).blocks), timeout=1.5
        )


async def test_admins_may_stop_any_answer_when_allowed(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(SLOW)
    slack.users["U0ADMIN"] = "An Admin"
    slack.admins.add("U0ADMIN")
    async with start_bot(stop_by_admins=True):
        event = mention_event("write a lot", user="U0ASKER")
        await slack.send_event(event)
        reply = await streaming_reply(slack)
        payload = block_actions_payload(
            STOP_ACTION_ID, value=stop_value(reply) or "", user="U0ADMIN", message_ts=reply.ts
        )
        await slack.send_interactive(payload)
        await slack.wait_for(
            lambda: "Stopped" in str(slack.message("C0CHAN", reply.ts).blocks), timeout=3
        )
    assert not slack.ephemerals_for("U0ADMIN")
