"""End to end: the model calls tools of a real MCP server (tests/mcp_servers.py) — the call
shows in Slack while it runs, the server receives it, the result goes back to the model, and
the answer goes on in the same message; failures go back to the model as errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from bot.conversation import ThreadKey
from bot.render.reply import INDICATOR_BLOCK_ID, STOP_ACTION_ID
from tests.fakes.openai import Answer, Call, FakeOpenAI
from tests.fakes.slack import (
    FakeSlack,
    Message,
    block_actions_payload,
    mention_event,
    message_event,
)
from tests.mcp_servers import McpHttpServer, lab_tools
from tests.test_stop_and_recovery import stop_value
from tests.test_tools_mcp import http_server, toolbox
from tests.views import bot_replies, notes, working


@pytest.fixture
def tools_file(tmp_path: Path, mcp_server: McpHttpServer) -> str:
    return lab_tools(tmp_path, mcp_server.url, timeout=2)


def indicator(message: Message) -> str:
    return " ".join(
        element["text"]
        for block in message.blocks or []
        if block.get("block_id") == INDICATOR_BLOCK_ID
        for element in block["elements"]
    )


async def settled(slack: FakeSlack, channel: str, thread: str) -> Message:
    def done() -> bool:
        replies = bot_replies(slack, channel, thread)
        return bool(replies) and not working(replies[-1]) and not replies[-1].streaming

    await slack.wait_for(done, timeout=30, what="the finished answer")
    return bot_replies(slack, channel, thread)[-1]


async def test_a_tool_call_shows_while_it_runs_and_the_answer_goes_on_in_the_same_message(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(
        Answer(text="Let me check.", tool_calls=[Call("lab__slow", {"seconds": 1.0})]),
        Answer(text="It slept as asked.", ttft=0.1),
    )
    async with start_bot(mcp_servers_file=tools_file) as running:
        event = mention_event("nap please")
        await slack.send_event(event)
        await slack.wait_for(
            lambda: any(
                "lab.slow(seconds=1.0)" in indicator(m)
                for m in bot_replies(slack, "C0CHAN", event["ts"])
            ),
            timeout=10,
            what="the step shown while the tool runs",
        )
        running_text = bot_replies(slack, "C0CHAN", event["ts"])[0].text
        final = await settled(slack, "C0CHAN", event["ts"])
        await slack.wait_for(lambda: running.turns.inflight == 0, timeout=5)
        turns = await running.store.history.history(ThreadKey("T0001", "C0CHAN", event["ts"]))

    assert running_text == "Let me check."  # the text before the call stays while it runs
    assert final.text == "Let me check.\n\nIt slept as asked."
    assert len(bot_replies(slack, "C0CHAN", event["ts"])) == 1 and not notes(final)
    first, second = llm.requests[0], llm.requests[1]
    assert "lab__slow" in first.tool_names
    # The model got the server's answer for its call, paired with the call's id.
    ((call_id, name, _),) = second.tool_calls
    assert name == "lab__slow" and second.tool_results == [(call_id, "slept 1.0")]
    # Remembered for follow-ups: the call and its result with the answer.
    assert turns is not None and turns[-1].tools and "slept 1.0" in turns[-1].tools[0].result


async def test_parallel_calls_run_together_and_a_failing_and_a_slow_tool_are_errors_for_the_model(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(
        Answer(
            tool_calls=[
                Call("lab__add", {"a": 2, "b": 3}),
                Call("lab__fail", {}),
                Call("lab__slow", {"seconds": 30}),  # over the server's 2 s timeout
                Call("lab__nope", {}),
            ]
        ),
        Answer(text="Two plus three is 5; the rest failed."),
    )
    async with start_bot(mcp_servers_file=tools_file):
        event = mention_event("do it all")
        await slack.send_event(event)
        final = await settled(slack, "C0CHAN", event["ts"])

    assert final.text == "Two plus three is 5; the rest failed."
    results = dict(llm.requests[1].tool_results)
    ids = [call_id for call_id, _, _ in llm.requests[1].tool_calls]
    assert results[ids[0]] == "5"
    assert results[ids[1]].startswith("Error") and "fail" in results[ids[1]]
    assert "did not answer within 2 seconds" in results[ids[2]]
    assert "no tool named" in results[ids[3]]


async def test_stop_during_a_tool_call_cancels_it_and_ends_the_answer(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tmp_path: Path, mcp_server: McpHttpServer
) -> None:
    slow = lab_tools(tmp_path, mcp_server.url, timeout=60)
    llm.script(
        Answer(text="Working on it.", tool_calls=[Call("lab__slow", {"seconds": 20})]),
        Answer(text="never asked for"),
    )
    async with start_bot(mcp_servers_file=slow) as running:
        event = mention_event("take your time")
        await slack.send_event(event)
        await slack.wait_for(
            lambda: any(
                "lab.slow" in indicator(m) for m in bot_replies(slack, "C0CHAN", event["ts"])
            ),
            timeout=10,
        )
        (message,) = bot_replies(slack, "C0CHAN", event["ts"])
        value = stop_value(message)
        assert value is not None
        await slack.send_interactive(
            block_actions_payload(
                STOP_ACTION_ID, value=value, message_ts=message.ts, thread_ts=event["ts"]
            )
        )
        final = await settled(slack, "C0CHAN", event["ts"])
        await slack.wait_for(lambda: running.turns.inflight == 0, timeout=5)
        async with toolbox(http_server(mcp_server.url)) as box:
            events = (await box.call("web__events", "{}")).text

    assert final.text == "Working on it." and any("Stopped" in n for n in notes(final))
    assert len(llm.requests) == 1  # the model was not asked to go on
    assert "slow:cancelled" in events  # the server's call was cancelled, not left running


async def test_a_server_down_at_start_leaves_the_bot_answering_without_its_tools(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tmp_path: Path
) -> None:
    from tests.redis_server import free_port

    path = tmp_path / "down.toml"
    path.write_text(
        f'connect_timeout = 1\n[servers.gone]\nurl = "http://127.0.0.1:{free_port()}/mcp"\n',
        encoding="utf-8",
    )
    llm.script(Answer(text="Plain answer."))
    async with start_bot(mcp_servers_file=str(path)) as running:
        ready = await _get(running.ops_port, "/readyz")
        event = mention_event("hello")
        await slack.send_event(event)
        final = await settled(slack, "C0CHAN", event["ts"])

    assert ready[0] == 200 and "mcp:gone" in ready[1]
    assert final.text == "Plain answer."
    assert not llm.requests[0].tool_names  # nothing offered from a server that is down


async def test_with_tools_off_the_model_is_offered_none(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(Answer(text="No tools here."))
    async with start_bot(mcp_servers_file=tools_file, tools="off"):
        await slack.send_event(message_event("hi", channel="D0DM", channel_type="im"))
        await slack.wait_for(lambda: bool(llm.requests), timeout=10)
        await asyncio.sleep(0)
    assert not llm.requests[0].tool_names


async def _get(port: int, path: str) -> tuple[int, str]:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, await response.text()


async def test_a_native_stream_shows_each_call_as_a_task_card(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(
        Answer(text="Adding.", tool_calls=[Call("lab__add", {"a": 2, "b": 3})]),
        Answer(text="It is 5.", ttft=0.1),
    )
    async with start_bot(mcp_servers_file=tools_file, stream_mode="native"):
        event = mention_event("two plus three?")
        await slack.send_event(event)
        final = await settled(slack, "C0CHAN", event["ts"])

    assert final.text == "Adding.\n\nIt is 5."
    assert not slack.calls_to("chat.update")  # streamed natively to the end
    (task,) = final.tasks.values()
    assert task["title"] == "lab.add(a=2, b=3)" and task["status"] == "complete"
    states = [update["status"] for update in final.task_updates]
    assert states[-1] == "complete" and states == sorted(states, key=TASK_ORDER.index)


TASK_ORDER = ["pending", "in_progress", "complete", "error"]


async def test_a_model_server_that_refuses_tools_is_asked_again_without_them(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.refuse_tools = "ollama"  # HTTP 400 "… does not support tools" when tools are offered
    llm.script(Answer(text="Plain answer."), Answer(text="Still plain."))
    async with start_bot(mcp_servers_file=tools_file):
        first = mention_event("hello")
        await slack.send_event(first)
        answered = await settled(slack, "C0CHAN", first["ts"])
        second = mention_event("again")
        await slack.send_event(second)
        again = await settled(slack, "C0CHAN", second["ts"])

    assert answered.text == "Plain answer." and again.text == "Still plain."
    offered = [bool(request.tool_names) for request in llm.requests]
    # Refused once, asked again without tools; the model is remembered as tool-less.
    assert offered == [True, False, False]


async def test_slacks_own_stop_during_a_tool_call_in_a_native_stream_cancels_it(
    start_bot: Any,
    slack: FakeSlack,
    llm: FakeOpenAI,
    tmp_path: Path,
    mcp_server: McpHttpServer,
) -> None:
    slow = lab_tools(tmp_path, mcp_server.url, timeout=60)
    llm.script(
        Answer(text="Working on it.", tool_calls=[Call("lab__slow", {"seconds": 20})]),
        Answer(text="never asked for"),
    )
    async with start_bot(
        mcp_servers_file=slow, stream_mode="native", native_step_keepalive=0.3
    ) as running:
        event = mention_event("take your time")
        await slack.send_event(event)
        start = await slack.wait_call("chat.startStream", ok=True)
        ts = start.response["ts"]
        await slack.wait_for(
            lambda: any(
                t["status"] == "in_progress" for t in slack.message("C0CHAN", ts).tasks.values()
            ),
            timeout=10,
            what="the running call's card",
        )
        slack.press_stop("C0CHAN", ts)
        await slack.wait_for(lambda: running.turns.inflight == 0, timeout=10, what="the end")
        async with toolbox(http_server(mcp_server.url)) as box:
            events = (await box.call("web__events", "{}")).text

    final = slack.message("C0CHAN", ts)
    assert final.text.startswith("Working on it.") and "never asked for" not in final.text
    assert len(llm.requests) == 1  # the model was not asked to go on
    assert events.count("slow:cancelled") >= 1


async def test_tool_calls_that_ran_are_remembered_when_the_model_then_fails(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(Answer(tool_calls=[Call("lab__add", {"a": 2, "b": 3})]))
    llm.default = Answer(status=500)  # the next round fails, retries too
    async with start_bot(mcp_servers_file=tools_file) as running:
        event = mention_event("add them")
        await slack.send_event(event)
        final = await settled(slack, "C0CHAN", event["ts"])
        await slack.wait_for(lambda: running.turns.inflight == 0, timeout=5)
        turns = await running.store.history.history(ThreadKey("T0001", "C0CHAN", event["ts"]))

    assert "couldn't get an answer" in final.text
    # The add ran: a follow-up must know, not run it again unknowingly.
    assert turns is not None and turns[-1].role == "assistant"
    assert [use.result for use in turns[-1].tools] == ["5"] and turns[-1].interrupted


async def test_a_call_cut_off_by_the_length_limit_is_not_run_and_its_card_says_so(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(
        Answer(text="Let me add.", tool_calls=[Call("lab__add", {"a": 2})], finish_reason="length")
    )
    async with start_bot(mcp_servers_file=tools_file, stream_mode="native"):
        event = mention_event("add")
        await slack.send_event(event)
        final = await settled(slack, "C0CHAN", event["ts"])

    assert final.text == "Let me add." and any("interrupted" in n for n in notes(final))
    assert len(llm.requests) == 1
    assert [t["status"] for t in final.tasks.values()] == ["error"]


async def test_after_max_tool_rounds_the_model_is_told_to_answer_without_tools(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(
        Answer(tool_calls=[Call("lab__echo", {"text": "one"})]),
        Answer(text="Here is what I found."),
    )
    async with start_bot(mcp_servers_file=tools_file, max_tool_rounds=1):
        event = mention_event("search a lot")
        await slack.send_event(event)
        final = await settled(slack, "C0CHAN", event["ts"])

    assert final.text == "Here is what I found."
    first, last = llm.requests
    assert first.tool_names and not last.tool_names
    ((_, result),) = last.tool_results
    assert result.startswith("one") and "Answer now" in result


def _first_seen(message: Message) -> list[str]:
    """A native message's timeline: its text pieces joined, each task card where it first
    appeared (as "[card]")."""
    seen: list[str] = []
    cards: set[str] = set()
    for kind, value in message.timeline:
        if kind == "task":
            if value not in cards:
                cards.add(value)
                seen.append("[card]")
        elif seen and seen[-1] != "[card]":
            seen[-1] += value
        else:
            seen.append(value)
    return seen


@pytest.mark.parametrize("lead", ["", "Adding."])
async def test_a_fast_tools_card_shows_where_the_call_was_made(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str, lead: str
) -> None:
    llm.script(
        Answer(text=lead, tool_calls=[Call("lab__add", {"a": 2, "b": 3})]),
        Answer(text="It is 5.", ttft=0.05),
    )
    async with start_bot(mcp_servers_file=tools_file, stream_mode="native"):
        event = mention_event("two plus three?")
        await slack.send_event(event)
        final = await settled(slack, "C0CHAN", event["ts"])

    before = [lead] if lead else []
    after = "\n\nIt is 5." if lead else "It is 5."
    assert _first_seen(final) == [*before, "[card]", after]


async def test_cards_of_two_fast_rounds_sent_together_keep_their_places(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    llm.script(
        Answer(tool_calls=[Call("lab__add", {"a": 2, "b": 3})]),
        Answer(text="It is 5.", tool_calls=[Call("lab__echo", {"text": "x"})], ttft=0.02),
        Answer(text="Done.", ttft=0.02),
    )
    async with start_bot(mcp_servers_file=tools_file, stream_mode="native"):
        event = mention_event("add, then echo")
        await slack.send_event(event)
        final = await settled(slack, "C0CHAN", event["ts"])

    assert _first_seen(final) == ["[card]", "It is 5.", "[card]", "\n\nDone."]


async def test_tool_results_stay_within_the_prompt_budget_in_bytes(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tools_file: str
) -> None:
    big = "日本語のテキスト" * 1000  # 24,000 bytes of UTF-8 in 8,000 characters
    llm.script(
        Answer(tool_calls=[Call("lab__echo", {"text": big})]),
        Answer(text="That was long."),
    )
    async with start_bot(mcp_servers_file=tools_file, prompt_token_budget=2000):
        event = mention_event("echo a lot")
        await slack.send_event(event)
        final = await settled(slack, "C0CHAN", event["ts"])

    assert final.text == "That was long."
    ((_, result),) = llm.requests[1].tool_results
    shown, _, note = result.partition("\n[cut: ")
    # Half of a 2,000-token prompt, counted in bytes as the prompt window counts them.
    assert len(shown.encode()) <= 4000 and note.startswith("6,")
    # The room for results is spent: the next round may not call tools again.
    assert not llm.requests[1].tool_names and "Answer now" in result
