"""ReplyStream against the fake Slack (real slack_sdk client) and a real Redis edit budget:
placeholder, first text at once, throttling, the final edit through failures, roll-over of
long answers (fences included), cancellation, and twenty replies sharing one budget."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest

from bot.render import text
from bot.render.budget import EditBudget
from bot.render.contract import Finished, Outcome, ReplyStateError, Step, StepStatus
from bot.render.native import NativeReply
from bot.render.reply import EMPTY_TEXT, FAILED_TEXT, INDICATOR_BLOCK_ID, WRITING, ReplyStream
from bot.slack import SlackGateway, connect_slack
from bot.store import Store, connect_redis
from tests.fakes.slack import Call, FakeSlack, Message
from tests.views import bot_replies, notes, working

CHANNEL = "C0CHAN"
TEAM = "T0001"
FENCE = re.compile(r"^```")


class WatchedGateway(SlackGateway):
    """The real gateway, also counting chat.update calls in flight per message."""

    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self._in_flight: Counter[str] = Counter()
        self.most_in_flight = 0

    async def update(
        self, channel: str, ts: str, text: str, *, blocks: list[dict[str, Any]] | None = None
    ) -> None:
        self._in_flight[ts] += 1
        self.most_in_flight = max(self.most_in_flight, self._in_flight[ts])
        try:
            await super().update(channel, ts, text, blocks=blocks)
        finally:
            self._in_flight[ts] -= 1


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def gateway(slack: FakeSlack, session: aiohttp.ClientSession) -> WatchedGateway:
    return WatchedGateway(connect_slack(slack.bot_token, slack.api_url, session))


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    client = connect_redis(redis_url)
    yield Store.open(client)
    await client.aclose()


def edit_budget(
    store: Store, *, per_minute: float = 6000, burst: int = 20, min_interval: float = 0.1
) -> EditBudget:
    return EditBudget(store.budgets, per_minute=per_minute, burst=burst, min_interval=min_interval)


def plain(markdown: str) -> str:
    return markdown


def line_split(markdown: str, limit: int) -> tuple[str, str]:
    """Cut at the last line break that keeps the head within ``limit`` (with ``plain``)."""
    if len(markdown) <= limit:
        return markdown, ""
    cut = markdown.rfind("\n", 0, limit) + 1 or limit
    return markdown[:cut], markdown[cut:]


def fence_split(markdown: str, limit: int) -> tuple[str, str]:
    """``line_split`` that closes a code fence left open in the head and reopens it, with its
    language, at the start of the tail."""
    if len(markdown) <= limit:
        return markdown, ""
    close = "```\n"
    cut = markdown.rfind("\n", 0, limit - len(close)) + 1 or limit - len(close)
    head, tail = markdown[:cut], markdown[cut:]
    opened = open_fence(head)
    if opened is None:
        return head, tail
    return head + close, opened + "\n" + tail


def open_fence(markdown: str) -> str | None:
    """The opening line of a fence ``markdown`` leaves open, else None."""
    opened = None
    for line in markdown.splitlines():
        if FENCE.match(line):
            opened = line if opened is None else None
    return opened


def fence_lines(markdown: str) -> int:
    return sum(1 for line in markdown.splitlines() if FENCE.match(line))


def without_fences(markdown: str) -> str:
    return "".join(line for line in markdown.splitlines(True) if not FENCE.match(line))


def updates(slack: FakeSlack, ts: str) -> list[Call]:
    return [c for c in slack.calls_to("chat.update") if c.args.get("ts") == ts]


async def feed(reply: ReplyStream, pieces: Sequence[str], per_second: float) -> float:
    """Append ``pieces`` at a model's pace; return how long that took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for index, piece in enumerate(pieces):
        delay = started + index / per_second - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        reply.append(piece)
    return loop.time() - started


def new_reply(
    gateway: SlackGateway,
    budget: EditBudget,
    thread_ts: str,
    *,
    limit: int = 2900,
    render: Any = plain,
    split: Any = line_split,
    **options: Any,
) -> ReplyStream:
    return ReplyStream(
        gateway,
        budget,
        team=TEAM,
        channel=CHANNEL,
        thread_ts=thread_ts,
        limit=limit,
        render=render,
        split=split,
        **options,
    )


def question(slack: FakeSlack) -> str:
    return slack.add_message(CHANNEL, "<@U0BOT> a question")


# -- placeholder, first text, throttle ------------------------------------------------------


async def test_placeholder_then_the_first_text_in_one_edit_at_once(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    thread = question(slack)
    reply = new_reply(gateway, edit_budget(store, min_interval=5.0), thread)
    async with reply:
        (placeholder,) = bot_replies(slack, CHANNEL, thread)
        assert placeholder.thread_ts == thread and working(placeholder)
        assert not slack.calls_to("chat.update")

        loop = asyncio.get_running_loop()
        appended = loop.time()
        reply.append("Hello")
        first = await slack.wait_call("chat.update", ok=True)
        # At once: not after the 5 s interval.
        assert loop.time() - appended < 0.5
        assert first.args["text"] == "Hello" and first.args["ts"] == placeholder.ts
        reply.append(" world")  # inside the interval: no edit until the final one
        await reply.finish(Outcome.COMPLETE)

    assert [c.args["text"] for c in updates(slack, placeholder.ts)] == ["Hello", "Hello world"]
    (message,) = bot_replies(slack, CHANNEL, thread)
    assert message.text == "Hello world" and not working(message) and not notes(message)


async def test_interim_edits_render_a_prefix_and_the_final_one_complete_text(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    def prefix(markdown: str) -> str:  # like the converter: a dangling marker is not shown
        return markdown.rstrip("*")

    thread = question(slack)
    reply = new_reply(gateway, edit_budget(store), thread, render=prefix, render_final=plain)
    async with reply:
        reply.append("Use **")
        await slack.wait_call("chat.update", ok=True)
        await reply.finish(Outcome.COMPLETE)
    assert [c.args["text"] for c in slack.calls_to("chat.update")] == ["Use ", "Use **"]


async def test_edits_are_throttled_coalesced_and_never_overlap(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    slack.budgets = {}
    slack.latency = 0.05
    thread = question(slack)
    interval = 0.25
    answer = [f"word{i} " for i in range(150)]
    reply = new_reply(gateway, edit_budget(store, min_interval=interval), thread)
    async with reply:
        duration = await feed(reply, answer, per_second=100)
        await reply.finish(Outcome.COMPLETE)

    (message,) = bot_replies(slack, CHANNEL, thread)
    calls = updates(slack, message.ts)
    interim, final = calls[:-1], calls[-1]
    assert final.args["text"] == "".join(answer) == message.text and not working(message)
    assert len(calls) <= duration / interval + 2
    assert len(interim) >= 3  # it did stream
    texts = [c.args["text"] for c in interim]
    assert all("".join(answer).startswith(t) for t in texts)
    assert texts == sorted(set(texts), key=len)  # only changed text, always newer
    # Sent one interval apart (the fake stamps replies; its latency is constant).
    gaps = [b.at - a.at for a, b in itertools.pairwise(interim)]
    assert min(gaps) >= interval - 0.05
    assert gateway.most_in_flight == 1


async def test_unchanged_rendering_is_not_sent_again(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    thread = question(slack)
    reply = new_reply(gateway, edit_budget(store), thread, render=str.strip)
    async with reply:
        reply.append("Hi")
        await slack.wait_call("chat.update", ok=True)
        reply.append("  \n")  # renders the same
        await asyncio.sleep(0.5)  # several intervals for the flusher to (not) act
        reply.append("there")
        await slack.wait_call("chat.update", lambda c: c.args["text"] == "Hi  \nthere")
        await reply.finish(Outcome.COMPLETE)
    texts = [c.args["text"] for c in slack.calls_to("chat.update")]
    assert texts == ["Hi", "Hi  \nthere", "Hi  \nthere"]


async def test_a_slow_slack_makes_edits_sparser_but_never_slows_the_model(
    store: Store, session: aiohttp.ClientSession
) -> None:
    async with FakeSlack(latency=1.0, budgets={}) as slow:
        gateway = WatchedGateway(connect_slack(slow.bot_token, slow.api_url, session))
        thread = slow.add_message(CHANNEL, "question")
        answer = [f"t{i} " for i in range(200)]
        reply = new_reply(gateway, edit_budget(store, min_interval=0.1), thread)
        loop = asyncio.get_running_loop()
        async with reply:
            duration = await feed(reply, answer, per_second=100)
            finishing = loop.time()
            await reply.finish(Outcome.COMPLETE)
            finish_took = loop.time() - finishing

        assert duration < 2.5  # the model's own pace: 2 s
        (message,) = [m for m in slow.thread(CHANNEL, thread) if m.bot_id]
        assert message.text == "".join(answer) and not working(message)
        # One edit in flight at a time, each taking a second: a handful, not one per token.
        assert 2 <= len(updates(slow, message.ts)) <= 5
        assert gateway.most_in_flight == 1
        # At most the interim edit in flight, then the final one.
        assert finish_took < 2.5


async def test_a_429_holds_every_reply_in_the_workspace_then_edits_resume(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    slack.budgets = {}
    budget = edit_budget(store, min_interval=0.1)
    threads = [question(slack), question(slack)]
    replies = [new_reply(gateway, budget, t) for t in threads]
    answer = [f"w{i} " for i in range(100)]
    for reply in replies:
        await reply.open()
    slack.fail_next("chat.update", "ratelimited", retry_after=1)
    await asyncio.gather(*(feed(r, answer, per_second=50) for r in replies))
    await asyncio.gather(*(r.finish(Outcome.COMPLETE) for r in replies))

    calls = slack.calls_to("chat.update")
    (limited,) = [c for c in calls if c.status == 429]
    # An edit already on its way when the 429 came lands within a few ms; after that, nobody
    # edits during Retry-After, and then they resume.
    during = [c for c in calls if limited.at + 0.1 < c.at < limited.at + 0.95]
    assert during == []
    assert sum(1 for c in calls if c.ok and c.at >= limited.at + 0.95) > 2
    for thread in threads:
        (message,) = bot_replies(slack, CHANNEL, thread)
        assert message.text == "".join(answer) and not working(message)


# -- the final edit -------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["ratelimited", "500", "503", "reset", "hang"])
async def test_the_final_edit_is_retried_until_it_lands(
    slack: FakeSlack, gateway: WatchedGateway, store: Store, fault: str
) -> None:
    thread = question(slack)
    reply = new_reply(gateway, edit_budget(store), thread, edit_timeout=0.3)
    loop = asyncio.get_running_loop()
    async with reply:
        reply.append("Hello")
        await slack.wait_call("chat.update", ok=True)
        slack.fail_next("chat.update", fault, times=2)
        reply.append(" world")
        started = loop.time()
        await reply.finish(Outcome.COMPLETE)
        took = loop.time() - started

    (message,) = bot_replies(slack, CHANNEL, thread)
    assert message.text == "Hello world" and not working(message)
    failed = [c for c in slack.calls_to("chat.update") if not c.ok]
    assert len(failed) == 2
    assert took < 5.0
    assert gateway.most_in_flight == 1


async def test_the_final_edit_gives_up_at_the_deadline_naming_the_thread(
    slack: FakeSlack, gateway: WatchedGateway, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    thread = question(slack)
    reply = new_reply(gateway, edit_budget(store), thread, final_deadline=1.0)
    loop = asyncio.get_running_loop()
    async with reply:
        reply.append("Hello")
        await slack.wait_call("chat.update", ok=True)
        slack.fail_next("chat.update", "500", times=1000)
        started = loop.time()
        with caplog.at_level(logging.ERROR, logger="bot.render.reply"):
            assert (await reply.finish(Outcome.COMPLETE)).text == "Hello"
        assert loop.time() - started < 2.0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(thread in e and "deadline" in e for e in errors), errors


async def test_a_hung_interim_edit_does_not_hold_up_the_final_one(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    thread = question(slack)
    reply = new_reply(gateway, edit_budget(store), thread, edit_timeout=0.3)
    slack.fail_next("chat.update", "hang")
    loop = asyncio.get_running_loop()
    async with reply:
        reply.append("Hello")
        await slack.wait_call("chat.update", lambda c: c.status == 0)  # hanging now
        reply.append(" world")
        started = loop.time()
        await reply.finish(Outcome.COMPLETE)
        assert loop.time() - started < 1.5  # not the client's 15 s
    (message,) = bot_replies(slack, CHANNEL, thread)
    assert message.text == "Hello world" and not working(message)
    assert gateway.most_in_flight == 1


async def test_a_hung_interim_edit_is_abandoned_while_the_answer_streams(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    thread = question(slack)
    reply = new_reply(gateway, edit_budget(store), thread, edit_timeout=0.3)
    slack.fail_next("chat.update", "hang")
    async with reply:
        reply.append("Hello")
        hung = await slack.wait_call("chat.update", lambda c: c.status == 0)
        reply.append(" world")
        # Not after the client's 15 s (slack_sdk ignores it with a shared session: 300 s).
        later = await slack.wait_call("chat.update", ok=True, timeout=2)
        assert later.args["text"] == "Hello world" and later.at - hung.at < 1.0
        await reply.finish(Outcome.COMPLETE)
    (message,) = bot_replies(slack, CHANNEL, thread)
    assert message.text == "Hello world" and not working(message)


async def test_a_deleted_message_is_continued_in_a_new_one(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    thread = question(slack)
    reply = new_reply(gateway, edit_budget(store), thread)
    async with reply:
        reply.append("Hello")
        first = await slack.wait_call("chat.update", ok=True)
        message = slack.message(CHANNEL, first.args["ts"])
        assert message is not None
        message.deleted = True  # someone removed it while the answer streamed
        reply.append(" world")
        await slack.wait_call("chat.update", lambda c: c.error == "message_not_found")
        await reply.finish(Outcome.COMPLETE)
    (message,) = bot_replies(slack, CHANNEL, thread)
    assert message.text == "Hello world" and not working(message)
    assert message.ts == reply.message_ts[-1] != first.args["ts"]


async def test_msg_too_long_shrinks_the_message_and_continues_in_the_next(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    thread = question(slack)
    answer = "".join(f"line {i:02d} of a medium-sized answer\n" for i in range(9))
    reply = new_reply(gateway, edit_budget(store), thread, limit=300)
    async with reply:
        reply.append(answer)
        await slack.wait_call("chat.update", ok=True)
        slack.fail_next("chat.update", "msg_too_long")
        await reply.finish(Outcome.COMPLETE)
    messages = bot_replies(slack, CHANNEL, thread)
    assert len(messages) == 2
    assert "".join(m.text for m in messages) == answer
    assert all(len(m.text) <= 200 and not working(m) for m in messages)


# -- outcomes and exit paths ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "shown"),
    [
        (Outcome.COMPLETE, EMPTY_TEXT),
        (Outcome.FAILED, FAILED_TEXT),
        (Outcome.INTERRUPTED, FAILED_TEXT),
        (Outcome.SHUTDOWN, Outcome.SHUTDOWN.note),
    ],
)
async def test_no_text_becomes_a_short_fixed_message(
    slack: FakeSlack, gateway: WatchedGateway, store: Store, outcome: Outcome, shown: str
) -> None:
    thread = question(slack)
    async with new_reply(gateway, edit_budget(store), thread) as reply:
        reply.append("  ")
        assert (await reply.finish(outcome)).text == "  "
    (message,) = bot_replies(slack, CHANNEL, thread)
    assert message.text == shown and not working(message)


async def test_partial_text_stays_with_an_interrupted_note(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    thread = question(slack)
    async with new_reply(gateway, edit_budget(store), thread) as reply:
        reply.append("Half an ans")
        await reply.finish(Outcome.INTERRUPTED)
    (message,) = bot_replies(slack, CHANNEL, thread)
    assert message.text == "Half an ans" and not working(message)
    assert notes(message) == [Outcome.INTERRUPTED.note]


async def test_an_exception_in_the_block_finishes_the_reply(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    thread = question(slack)
    with pytest.raises(KeyError):
        async with new_reply(gateway, edit_budget(store), thread) as reply:
            reply.append("Some text")
            raise KeyError("a bug in the turn")
    (message,) = bot_replies(slack, CHANNEL, thread)
    assert message.text == "Some text" and not working(message)
    assert notes(message) == [Outcome.INTERRUPTED.note]


async def test_cancellation_finishes_the_reply_with_a_shutdown_note(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    thread = question(slack)
    started = asyncio.Event()

    async def turn() -> None:
        async with new_reply(gateway, edit_budget(store), thread) as reply:
            reply.append("Partial")
            started.set()
            await asyncio.Event().wait()  # the model never finishes

    task = asyncio.create_task(turn())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (message,) = bot_replies(slack, CHANNEL, thread)
    assert message.text == "Partial" and not working(message)
    assert notes(message) == [Outcome.SHUTDOWN.note]


async def test_illegal_transitions_are_refused(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    reply = new_reply(gateway, edit_budget(store), question(slack))
    with pytest.raises(ReplyStateError):
        reply.append("too early")
    async with reply:
        reply.append("x")
        first = await reply.finish(Outcome.COMPLETE)
        again = await reply.finish(Outcome.STOPPED)  # already finished: no second edit
        assert first.text == again.text == "x"
        assert first.outcome is again.outcome is Outcome.COMPLETE
        with pytest.raises(ReplyStateError):
            reply.append("too late")
    with pytest.raises(ReplyStateError):
        await reply.open()
    assert len(slack.calls_to("chat.update")) <= 2


# -- long answers ---------------------------------------------------------------------------


async def test_a_long_answer_rolls_over_into_new_messages_in_the_thread(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    slack.budgets = {}
    thread = question(slack)
    lines = [f"Line {i:03d}: some words to fill it up.\n" for i in range(60)]
    reply = new_reply(gateway, edit_budget(store, min_interval=0.05), thread, limit=200)
    async with reply:
        await feed(reply, lines, per_second=200)
        await reply.finish(Outcome.COMPLETE)

    messages = bot_replies(slack, CHANNEL, thread)
    assert len(messages) >= 12  # 2,400 characters, at most 200 a message
    assert [m.ts for m in messages] == reply.message_ts
    assert "".join(m.text for m in messages) == "".join(lines)
    assert not any(working(m) for m in messages)
    # Never past the limit, in any edit or post.
    sent = slack.calls_to("chat.update") + slack.calls_to("chat.postMessage")
    assert max(len(c.args["text"]) for c in sent) <= 200
    assert all(c.ok for c in sent)
    assert gateway.most_in_flight == 1


async def test_a_reopened_code_fence_is_carried_into_the_next_message(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    slack.budgets = {}
    thread = question(slack)
    code = "".join(f"    print({i})  # step {i}\n" for i in range(40))
    answer = "Here is the script:\n\n```python\n" + code + "```\n\nThat is all.\n"
    reply = new_reply(gateway, edit_budget(store), thread, limit=200, split=fence_split)
    async with reply:
        await feed(reply, [answer[i : i + 7] for i in range(0, len(answer), 7)], 500)
        await reply.finish(Outcome.COMPLETE)

    messages = bot_replies(slack, CHANNEL, thread)
    assert len(messages) >= 5
    assert all(fence_lines(m.text) % 2 == 0 for m in messages)  # every fence balanced
    assert all(len(m.text) <= 200 and not working(m) for m in messages)
    inside = [m for m in messages[1:] if "print(" in m.text.split("\n", 1)[-1][:20]]
    assert inside and all(m.text.startswith("```python\n") for m in inside)
    assert without_fences("".join(m.text for m in messages)) == without_fences(answer)


async def test_a_twelve_thousand_line_answer_costs_linear_time(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    slack.budgets = {}
    thread = question(slack)
    lines = []
    for block in range(240):  # 240 × 50 = 12,000 lines, half of them in code fences
        lines.append(f"Paragraph {block}: what the next snippet does.\n")
        lines.extend(["\n", "```js\n"])
        lines.extend(f"const v{block}_{i} = {i};\n" for i in range(22))
        lines.extend(["```\n", "\n"])
        lines.extend(f"- point {i} about block {block}\n" for i in range(23))
    assert len(lines) == 12_000
    answer = "".join(lines)
    rendered = 0

    def counting(markdown: str) -> int:
        return len(markdown)

    def render(markdown: str) -> str:
        nonlocal rendered
        rendered += counting(markdown)
        return markdown

    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = new_reply(
        gateway, edit_budget(store, min_interval=0.05), thread, render=render, split=fence_split
    )
    async with reply:
        for index in range(0, len(lines), 100):  # a fast model: 100 lines at a time
            reply.append("".join(lines[index : index + 100]))
            await asyncio.sleep(0.005)
        await reply.finish(Outcome.COMPLETE)
    took = loop.time() - started

    messages = bot_replies(slack, CHANNEL, thread)
    assert len(messages) >= len(answer) // 2900
    assert all(len(m.text) <= 2900 and fence_lines(m.text) % 2 == 0 for m in messages)
    assert not any(working(m) for m in messages)
    assert without_fences("".join(m.text for m in messages)) == without_fences(answer)
    # Each character is rendered a bounded number of times, however long the answer.
    assert rendered < 12 * len(answer), rendered / len(answer)
    assert took < 30


async def test_the_real_split_keeps_fences_balanced(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    probe = "```py\n" + "x = 1\n" * 100 + "```\n"
    head, _ = text.split(probe, 200)
    if fence_lines(head) % 2:
        pytest.skip("bot.render.text.split does not close fences yet (the provisional stub)")
    slack.budgets = {}
    thread = question(slack)
    answer = "".join(
        f"Step {n}:\n\n```python\n"
        + "".join(f"value_{n}_{i} = {i} * 2\n" for i in range(30))
        + "```\n\n"
        for n in range(6)
    )
    reply = new_reply(
        gateway, edit_budget(store), thread, limit=400, render=text.render, split=text.split
    )
    async with reply:
        await feed(reply, [answer[i : i + 9] for i in range(0, len(answer), 9)], 2000)
        await reply.finish(Outcome.COMPLETE)
    messages = bot_replies(slack, CHANNEL, thread)
    assert len(messages) > 3
    assert all(len(m.text) <= 400 and not working(m) for m in messages)
    assert all(m.text.count("```") % 2 == 0 for m in messages)


# -- the shared workspace budget ------------------------------------------------------------


async def test_twenty_replies_in_two_processes_share_the_budget_without_a_429(
    slack: FakeSlack, gateway: WatchedGateway, redis_url: str
) -> None:
    # Slack's 50/min (burst 5) against the bot's 45/min (burst 3), both scaled up six times
    # so the test takes seconds, not minutes.
    slack.budgets["chat.update"] = (300, 5)
    clients = [connect_redis(redis_url), connect_redis(redis_url)]
    budgets = [
        EditBudget(Store.open(c).budgets, per_minute=270, burst=3, min_interval=1.0)
        for c in clients
    ]
    threads = [question(slack) for _ in range(20)]
    answers = [[f"r{n}w{i} " for i in range(60)] for n in range(20)]
    replies = [new_reply(gateway, budgets[n % 2], t) for n, t in enumerate(threads)]

    async def one(reply: ReplyStream, answer: list[str]) -> float:
        async with reply:
            duration = await feed(reply, answer, per_second=20)  # 3 s of model output
            await reply.finish(Outcome.COMPLETE)
        return duration

    try:
        durations = await asyncio.gather(
            *(one(r, a) for r, a in zip(replies, answers, strict=True))
        )
    finally:
        for client in clients:
            await client.aclose()

    assert [c for c in slack.calls if c.status == 429] == []
    for thread, answer, duration in zip(threads, answers, durations, strict=True):
        (message,) = bot_replies(slack, CHANNEL, thread)
        assert message.text == "".join(answer) and not working(message)
        assert len(updates(slack, message.ts)) <= duration / 1.0 + 2
    assert gateway.most_in_flight == 1


# -- closing while the flusher's timer runs out ------------------------------------------------
# Found by the benchmark (38 of 1,000 native replies left streaming): the flusher's timer ran
# out, and while that timeout was being delivered the turn finished the reply; the flusher
# then cleared the wake-up that closing had set and waited for another, forever, and the reply
# kept its "writing" state. These renderers finish the reply right inside the flusher's timer.


class EditTimerRacesClose(ReplyStream):
    raced: asyncio.Task[Finished] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.racing = asyncio.Event()

    async def _closed_within(self, seconds: float) -> bool:
        if self.edits and self.raced is None:
            self.raced = asyncio.create_task(self.finish(Outcome.COMPLETE))
            self.racing.set()
            await asyncio.sleep(0)  # finish() sets closing and wakes the flusher
            return False  # ... but the flusher saw its timeout first
        return await super()._closed_within(seconds)


class NativeTimerRacesClose(NativeReply):
    raced: asyncio.Task[Finished] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.racing = asyncio.Event()

    async def _urgent_within(self, seconds: float) -> bool:
        if self._current and self.raced is None:
            self.raced = asyncio.create_task(self.finish(Outcome.COMPLETE))
            self.racing.set()
            await asyncio.sleep(0)
            return False
        return await super()._urgent_within(seconds)


async def test_an_edited_reply_finished_as_its_timer_runs_out_still_gets_its_final_form(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    thread = question(slack)
    reply = EditTimerRacesClose(
        gateway,
        edit_budget(store, min_interval=0.3),
        team=TEAM,
        channel=CHANNEL,
        thread_ts=thread,
        limit=2900,
        render=str.rstrip,  # so that the second piece changes nothing to edit
        split=line_split,
    )
    await reply.open()
    reply.append("Hello")
    await slack.wait_call("chat.update", ok=True)
    reply.append(" ")
    await asyncio.wait_for(reply.racing.wait(), 5.0)
    assert reply.raced is not None
    assert (await asyncio.wait_for(reply.raced, 5.0)).text == "Hello "
    (message,) = bot_replies(slack, CHANNEL, thread)
    assert message.text == "Hello" and not working(message)


async def test_a_native_reply_finished_as_its_timer_runs_out_still_closes_its_stream(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    thread = question(slack)

    def edits(reply_id: str) -> ReplyStream:
        return new_reply(gateway, edit_budget(store), thread, reply_id=reply_id)

    reply = NativeTimerRacesClose(
        gateway,
        appends=EditBudget(
            store.budgets, method="chat.appendStream", per_minute=6000, burst=20, min_interval=0.3
        ),
        starts=EditBudget(
            store.budgets, method="chat.startStream", per_minute=6000, burst=20, min_interval=0
        ),
        team=TEAM,
        channel=CHANNEL,
        thread_ts=thread,
        recipient=("U0ASKER", TEAM),
        fallback=edits,
    )
    await reply.open()
    reply.append("Hello")
    await slack.wait_call("chat.appendStream", ok=True)
    reply.append(" world")
    await asyncio.wait_for(reply.racing.wait(), 5.0)
    assert reply.raced is not None
    assert (await asyncio.wait_for(reply.raced, 5.0)).text == "Hello world"
    (message,) = bot_replies(slack, CHANNEL, thread)
    assert message.text == "Hello world" and not message.streaming
    assert not slack.calls_to("chat.update")  # closed by chat.stopStream, not by edits


# -- steps (tool calls) ------------------------------------------------------------------------


def indicator(message: Message) -> str:
    return next(
        element["text"]
        for block in message.blocks or []
        if block.get("block_id") == INDICATOR_BLOCK_ID
        for element in block["elements"]
    )


async def test_the_step_in_progress_shows_in_the_working_indicator_until_it_is_done(
    slack: FakeSlack, gateway: WatchedGateway, store: Store
) -> None:
    thread = question(slack)
    reply = new_reply(gateway, edit_budget(store), thread)
    async with reply:
        (message,) = bot_replies(slack, CHANNEL, thread)
        # Before any text: the placeholder's indicator names the step (as code: no formatting).
        reply.step(Step("c1", 'wiki.search(query="<!here> `x`")', StepStatus.IN_PROGRESS))
        await slack.wait_for(lambda: "wiki.search" in indicator(message), timeout=5)
        assert indicator(message).endswith("`wiki.search(query=\"&lt;!here&gt; 'x'\")`")
        assert message.text and working(message)
        # Text, and the step done: back to "writing…" under the text.
        reply.step(Step("c1", 'wiki.search(query="x")', StepStatus.COMPLETE))
        reply.append("Found it.")
        await slack.wait_for(lambda: message.text == "Found it.", timeout=5)
        await slack.wait_for(lambda: indicator(message) == WRITING, timeout=5)
        finished = await reply.finish(Outcome.COMPLETE)

    assert finished.text == "Found it." and finished.message_ts == (message.ts,)
    assert message.text == "Found it." and not working(message)
