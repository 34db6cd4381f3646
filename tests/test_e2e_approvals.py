"""End to end: a destructive tool of a real MCP server (tests/mcp_servers.py's
``delete_everything``, or ``run_sql``, which says nothing of itself) runs only after the person
who asked presses Approve on the bot's message — pressed, denied, unanswered, pressed by
someone else, pressed on another replica, cancelled by Stop — and the model hears what
happened. The message shows the call in full, secrets aside."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bot.approvals import (
    APPROVE_ACTION_ID,
    DENY_ACTION_ID,
    NOT_PASSED_ON_TEXT,
    ONLY_ASKER_TEXT,
    ApprovalClick,
)
from bot.render.reply import STOP_ACTION_ID
from bot.store import KeySchema, Store, connect_redis
from tests.fakes.openai import Answer, Call, FakeOpenAI
from tests.fakes.slack import FakeSlack, Message, block_actions_payload, mention_event
from tests.mcp_servers import McpHttpServer, lab_tools
from tests.redis_server import RedisServer
from tests.test_stop_and_recovery import stop_value
from tests.views import bot_replies, notes, working

REFUSED = "This tool runs only after a person approves it."
DELETE = Call("lab__delete_everything", {"confirm": True})


@pytest.fixture
def tools_file(tmp_path: Path, mcp_server: McpHttpServer) -> str:
    return lab_tools(tmp_path, mcp_server.url, timeout=5)


def button_value(message: Message, action_id: str) -> str | None:
    for block in message.blocks or ():
        for element in block.get("elements") or ():
            if element.get("action_id") == action_id:
                return str(element["value"])
    return None


async def approval_prompt(slack: FakeSlack, thread: str) -> Message:
    """The bot's message asking for approval, once it is posted."""

    def found() -> Message | None:
        return next(
            (m for m in bot_replies(slack, "C0CHAN", thread) if button_value(m, APPROVE_ACTION_ID)),
            None,
        )

    await slack.wait_for(lambda: found() is not None, timeout=15, what="the approval prompt")
    prompt = found()
    assert prompt is not None
    return prompt


async def press(
    slack: FakeSlack,
    prompt: Message,
    action_id: str,
    *,
    user: str = "U0USER",
    socket: int | None = None,
    value: str | None = None,
) -> None:
    value = value or button_value(prompt, action_id)
    assert value is not None
    ack = await slack.send_interactive(
        block_actions_payload(
            action_id, value=value, user=user, message_ts=prompt.ts, thread_ts=prompt.thread_ts
        ),
        socket=socket,
    )
    await slack.wait_ack(ack)


async def settled(slack: FakeSlack, thread: str) -> Message:
    """The answer (the bot's first message in the thread) once it is finished."""

    def done() -> bool:
        replies = bot_replies(slack, "C0CHAN", thread)
        return bool(replies) and not working(replies[0]) and not replies[0].streaming

    await slack.wait_for(done, timeout=30, what="the finished answer")
    return bot_replies(slack, "C0CHAN", thread)[0]


def section(message: Message) -> str:
    """The text of the message's first block: what Slack shows of a message with blocks."""
    assert message.blocks
    return str(message.blocks[0]["text"]["text"])


def shown(slack: FakeSlack, prompt: Message) -> Message:
    now = slack.message("C0CHAN", prompt.ts)
    assert now is not None
    return now


async def test_approved_the_tool_runs_and_the_prompt_says_who_approved(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(Answer(text="On it.", tool_calls=[DELETE]), Answer(text="All gone."))
    async with start_bot(mcp_servers_file=tools_file) as running:
        event = mention_event("delete everything")
        await slack.send_event(event)
        prompt = await approval_prompt(slack, event["ts"])
        asked, notified, waited = section(prompt), prompt.text, len(llm.requests)
        await press(slack, prompt, APPROVE_ACTION_ID)
        final = await settled(slack, event["ts"])
        approved = running.metrics.registry.get_sample_value(
            "slackbot_tool_approvals_total", {"decision": "approved"}
        )

    assert asked == (
        ":raised_hand: <@U0USER>, may I run this?\n"
        '```\nlab.delete_everything({\n  "confirm": true\n})\n```'
    )
    assert notified == (  # a notification's one line
        ":raised_hand: <@U0USER>, may I run `lab.delete_everything(confirm=true)`?"
    )
    assert waited == 1  # nothing ran before the answer
    ((call_id, _, _),) = llm.requests[1].tool_calls
    assert llm.requests[1].tool_results == [(call_id, "deleted")]  # the server ran it
    assert final.text == "On it.\n\nAll gone."
    after = shown(slack, prompt)
    assert section(after) == (  # the thread keeps what was approved, in full
        ":white_check_mark: Approved by <@U0USER>:\n"
        '```\nlab.delete_everything({\n  "confirm": true\n})\n```'
    )
    assert button_value(after, APPROVE_ACTION_ID) is None  # the buttons went away
    assert approved == 1


async def test_denied_the_model_is_told_it_was_refused(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(Answer(tool_calls=[DELETE]), Answer(text="Understood, nothing deleted."))
    async with start_bot(mcp_servers_file=tools_file):
        event = mention_event("delete everything")
        await slack.send_event(event)
        prompt = await approval_prompt(slack, event["ts"])
        await press(slack, prompt, DENY_ACTION_ID)
        final = await settled(slack, event["ts"])

    ((_, result),) = llm.requests[1].tool_results
    assert REFUSED in result and "deleted" not in result  # the server's answer would be
    assert final.text == "Understood, nothing deleted."
    after = shown(slack, prompt)
    assert "Denied by <@U0USER>" in after.text and button_value(after, DENY_ACTION_ID) is None


async def test_no_answer_in_time_is_a_refusal_and_a_late_press_is_told_so(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(Answer(tool_calls=[DELETE]), Answer(text="Nobody answered."))
    async with start_bot(mcp_servers_file=tools_file, approval_timeout=5):
        event = mention_event("delete everything")
        await slack.send_event(event)
        prompt = await approval_prompt(slack, event["ts"])
        old_copy = button_value(prompt, APPROVE_ACTION_ID)
        final = await settled(slack, event["ts"])
        # A press on an old copy of the message, after the wait ended: not run, and said so.
        await press(slack, prompt, APPROVE_ACTION_ID, value=old_copy)
        await slack.wait_for(lambda: bool(slack.ephemerals_for("U0USER")), timeout=5)

    ((_, result),) = llm.requests[1].tool_results
    assert REFUSED in result and final.text == "Nobody answered."
    assert "No answer in time — not run" in shown(slack, prompt).text
    assert "already ended" in slack.ephemerals_for("U0USER")[0].text
    assert len(llm.requests) == 2  # the late press ran nothing


async def test_someone_else_pressing_is_told_only_the_asker_may_and_the_call_still_waits(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(Answer(tool_calls=[DELETE]), Answer(text="Done."))
    async with start_bot(mcp_servers_file=tools_file):
        event = mention_event("delete everything")
        await slack.send_event(event)
        prompt = await approval_prompt(slack, event["ts"])
        await press(slack, prompt, APPROVE_ACTION_ID, user="U0OTHER")
        await slack.wait_for(lambda: bool(slack.ephemerals_for("U0OTHER")), timeout=5)
        still = button_value(shown(slack, prompt), APPROVE_ACTION_ID)
        waited = len(llm.requests)
        await press(slack, prompt, APPROVE_ACTION_ID)
        await settled(slack, event["ts"])

    assert [e.text for e in slack.ephemerals_for("U0OTHER")] == [ONLY_ASKER_TEXT]
    assert still is not None and waited == 1
    assert llm.requests[1].tool_results[0][1] == "deleted"
    assert "Approved by <@U0USER>" in shown(slack, prompt).text


async def test_approve_pressed_on_the_other_replica_reaches_the_waiting_one(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(Answer(tool_calls=[DELETE]), Answer(text="Deleted, as approved."))
    async with (
        start_bot(mcp_servers_file=tools_file),
        start_bot(mcp_servers_file=tools_file),
    ):
        assert slack.connected == 2
        event = mention_event("delete everything")
        await slack.send_event(event, socket=0)
        prompt = await approval_prompt(slack, event["ts"])
        await press(slack, prompt, APPROVE_ACTION_ID, socket=1)
        final = await settled(slack, event["ts"])

    assert llm.requests[1].tool_results[0][1] == "deleted"
    assert final.text == "Deleted, as approved."
    assert "Approved by <@U0USER>" in shown(slack, prompt).text


async def test_stop_while_waiting_cancels_the_request(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(Answer(text="Let me ask.", tool_calls=[DELETE]), Answer(text="never asked for"))
    async with start_bot(mcp_servers_file=tools_file) as running:
        event = mention_event("delete everything")
        await slack.send_event(event)
        prompt = await approval_prompt(slack, event["ts"])
        reply = bot_replies(slack, "C0CHAN", event["ts"])[0]
        value = stop_value(reply)
        assert value is not None
        await slack.send_interactive(
            block_actions_payload(
                STOP_ACTION_ID, value=value, message_ts=reply.ts, thread_ts=event["ts"]
            )
        )
        final = await settled(slack, event["ts"])
        await slack.wait_for(lambda: running.turns.inflight == 0, timeout=5)

    assert any("Stopped" in n for n in notes(final)) and len(llm.requests) == 1
    after = shown(slack, prompt)
    assert "Cancelled — not run" in after.text and button_value(after, APPROVE_ACTION_ID) is None


async def test_while_redis_is_down_a_press_on_the_waiting_replica_still_counts(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str, own_redis: RedisServer
) -> None:
    llm.script(Answer(tool_calls=[DELETE]), Answer(text="Done without the store."))
    async with start_bot(mcp_servers_file=tools_file, redis_url=own_redis.url):
        event = mention_event("delete everything")
        await slack.send_event(event)
        prompt = await approval_prompt(slack, event["ts"])
        own_redis.stop()
        await press(slack, prompt, APPROVE_ACTION_ID)
        final = await settled(slack, event["ts"])

    assert llm.requests[1].tool_results[0][1] == "deleted"
    assert final.text == "Done without the store."
    assert "Approved by <@U0USER>" in shown(slack, prompt).text


async def test_while_redis_is_down_a_press_on_another_replica_asks_to_press_again(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str, own_redis: RedisServer
) -> None:
    llm.script(Answer(tool_calls=[DELETE]), Answer(text="Done on the second press."))
    async with (
        start_bot(mcp_servers_file=tools_file, redis_url=own_redis.url),
        start_bot(mcp_servers_file=tools_file, redis_url=own_redis.url),
    ):
        event = mention_event("delete everything")
        await slack.send_event(event, socket=0)
        prompt = await approval_prompt(slack, event["ts"])
        own_redis.stop()
        await press(slack, prompt, APPROVE_ACTION_ID, socket=1)
        await slack.wait_for(lambda: bool(slack.ephemerals_for("U0USER")), timeout=10)
        still = button_value(shown(slack, prompt), APPROVE_ACTION_ID)
        own_redis.start()
        await press(slack, prompt, APPROVE_ACTION_ID, socket=1)
        final = await settled(slack, event["ts"])

    assert [e.text for e in slack.ephemerals_for("U0USER")] == [NOT_PASSED_ON_TEXT]
    assert still is not None  # the first press was not taken for an answer
    assert llm.requests[1].tool_results[0][1] == "deleted"
    assert final.text == "Done on the second press."


async def test_a_long_argument_is_shown_whole_not_cut_to_a_summary(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    # A 40-character summary would end at "created_at < no…": the OR 1=1 must be seen.
    sql = "DELETE FROM users WHERE created_at < now() - interval '90 days' OR 1=1"
    params = [f"value {n:02d} " + "x" * 90 for n in range(40)]  # over the prompt's room
    run_sql = Call("lab__run_sql", {"sql": sql, "params": params})
    llm.script(Answer(tool_calls=[run_sql]), Answer(text="Ran it."))
    async with start_bot(mcp_servers_file=tools_file):
        event = mention_event("clean up old users")
        await slack.send_event(event)
        prompt = await approval_prompt(slack, event["ts"])
        asked, notified = section(prompt), prompt.text
        await press(slack, prompt, APPROVE_ACTION_ID)
        await settled(slack, event["ts"])

    assert asked.startswith(
        ":raised_hand: <@U0USER>, may I run this?\n```\nlab.run_sql({\n"
        '  "sql": "DELETE FROM users WHERE created_at &lt; now() - interval \'90 days\' OR 1=1",\n'
        '  "params": [\n    "value 00 xxx'
    )
    shown_params = asked.count('    "value ')
    assert 10 < shown_params < 40
    cut = re.search(r"\n```\n\[… ([\d,]+) more characters not shown\]$", asked)
    assert cut and int(cut[1].replace(",", "")) > 1000
    assert len(asked) <= 3000  # Slack refuses a section over 3,000 characters
    assert "run_sql(sql=" in notified and len(notified) < 300  # the notification
    assert llm.requests[1].tool_results[0][1] == f"ran: {sql}"


async def test_a_secret_looking_value_is_hidden_from_the_prompt(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    token = "ghp_abcdefghijklmnop1234567890"
    run_sql = Call("lab__run_sql", {"sql": "UPDATE keys SET value = ?", "params": [token, "ann"]})
    llm.script(Answer(tool_calls=[run_sql]), Answer(text="Not run."))
    async with start_bot(mcp_servers_file=tools_file):
        event = mention_event("store my token")
        await slack.send_event(event)
        prompt = await approval_prompt(slack, event["ts"])
        asked = section(prompt)
        await press(slack, prompt, DENY_ACTION_ID)
        await settled(slack, event["ts"])

    assert asked == (
        ":raised_hand: <@U0USER>, may I run this?\n```\nlab.run_sql({\n"
        '  "sql": "UPDATE keys SET value = ?",\n'
        '  "params": [\n    "[hidden]",\n    "ann"\n  ]\n})\n```'
    )
    assert section(shown(slack, prompt)).startswith(":no_entry_sign: Denied by <@U0USER>")
    assert not any(token in json.dumps(call.args) for call in slack.calls)  # nowhere in Slack


async def test_the_first_decision_stands(redis_url: str) -> None:
    store = Store.open(connect_redis(redis_url), prefix="approvals-test")
    try:
        assert await store.approvals.decision("T1", "a1") is None
        assert await store.approvals.decide("T1", "a1", "approved:U1") == "approved:U1"
        assert await store.approvals.decide("T1", "a1", "timeout") == "approved:U1"
        assert await store.approvals.decision("T1", "a1") == "approved:U1"
        ttl = await store.guard.redis.ttl(KeySchema("approvals-test").approval("T1", "a1"))
        assert 0 < ttl <= 86400
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    "value",
    ["", "a1", "a1:U0USER", ":U0USER:T0001", "a1::T0001"],
)
def test_a_click_without_approval_asker_or_workspace_is_ignored(value: str) -> None:
    assert ApprovalClick.from_body(block_actions_payload(APPROVE_ACTION_ID, value=value)) is None


def test_a_click_names_the_approval_the_asker_and_the_verdict() -> None:
    body = block_actions_payload(DENY_ACTION_ID, value="a1:U0USER:T0001", user="U0OTHER")
    click = ApprovalClick.from_body(body)
    assert click is not None
    assert (click.approval_id, click.asker, click.team, click.user, click.verdict) == (
        "a1",
        "U0USER",
        "T0001",
        "U0OTHER",
        "denied",
    )
    assert ApprovalClick.from_body(block_actions_payload(STOP_ACTION_ID, value="r1:U0")) is None


async def test_a_call_whose_arguments_cannot_be_read_is_not_put_to_anyone(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    broken = Call("lab__delete_everything", '{"confirm": tr')
    llm.script(Answer(tool_calls=[broken]), Answer(text="My call was malformed."))
    async with start_bot(mcp_servers_file=tools_file):
        event = mention_event("delete everything")
        await slack.send_event(event)
        final = await settled(slack, event["ts"])

    assert final.text == "My call was malformed."
    asked = [
        m
        for m in slack.thread("C0CHAN", event["ts"])
        if button_value(m, APPROVE_ACTION_ID) is not None or "may I run" in m.text
    ]
    assert not asked  # nobody was asked to approve a call that cannot run
    ((_, result),) = llm.requests[1].tool_results
    assert "not valid JSON" in result


async def test_a_rate_limited_outcome_edit_is_retried_so_no_buttons_stay(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(Answer(tool_calls=[DELETE]), Answer(text="Understood."))
    async with start_bot(mcp_servers_file=tools_file):
        event = mention_event("delete everything")
        await slack.send_event(event)
        prompt = await approval_prompt(slack, event["ts"])
        await asyncio.sleep(0.5)  # the answer's own step edit has gone out
        slack.fail_next("chat.update", "ratelimited", retry_after=1)
        await press(slack, prompt, DENY_ACTION_ID)
        await settled(slack, event["ts"])

    limited = [c for c in slack.calls_to("chat.update") if c.status == 429]
    assert [c.args["ts"] for c in limited] == [prompt.ts]  # the outcome edit met the 429
    after = shown(slack, prompt)
    assert "Denied by <@U0USER>" in after.text and button_value(after, DENY_ACTION_ID) is None
