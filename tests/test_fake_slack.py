"""Tests of the fake Slack through the real slack_sdk clients (Web API and Socket Mode)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.async_client import AsyncBaseSocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack import (
    FakeSlack,
    assistant_thread_started_event,
    block_actions_payload,
    mention_event,
    message_event,
    new_ts,
)

CHANNEL = "C0CHAN"


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as fake:
        yield fake


@pytest.fixture
async def unmetered() -> AsyncIterator[FakeSlack]:
    """A fake without rate limits, for tests that read more than a burst allows."""
    async with FakeSlack(budgets={}) as fake:
        yield fake


def web(fake: FakeSlack, token: str | None = None, **kwargs: Any) -> AsyncWebClient:
    return AsyncWebClient(token=token or fake.bot_token, base_url=fake.api_url, **kwargs)


async def api_error(call: Any) -> SlackApiError:
    with pytest.raises(SlackApiError) as info:
        await call
    return info.value


# ----------------------------------------------------------------------------- basics


async def test_api_url_and_auth_test(slack: FakeSlack) -> None:
    assert slack.api_url == f"http://127.0.0.1:{slack.port}/api/"
    response = await web(slack).auth_test()
    assert response["user_id"] == "U0BOT"
    assert response["bot_id"] == "B0BOT"
    assert response["team_id"] == "T0001"
    assert response["is_enterprise_install"] is False


async def test_bad_tokens_and_unknown_method(slack: FakeSlack) -> None:
    assert (await api_error(web(slack, "xoxb-wrong").auth_test())).response["error"] == (
        "invalid_auth"
    )
    anonymous = AsyncWebClient(base_url=slack.api_url)
    assert (await api_error(anonymous.auth_test())).response["error"] == "not_authed"
    app_token_error = await api_error(
        web(slack, slack.app_token).chat_postMessage(channel=CHANNEL, text="x")
    )
    assert app_token_error.response["error"] == "not_allowed_token_type"
    unknown = await api_error(web(slack).api_call("nope.method"))
    assert unknown.response.status_code == 404
    assert unknown.response["error"] == "unknown_method"
    assert not slack.bot_messages()


async def test_form_and_query_arguments_are_merged_and_blocks_decoded(slack: FakeSlack) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    client = web(slack)
    posted = await client.api_call(
        "chat.postMessage",
        data={"channel": CHANNEL, "text": "hi", "blocks": json.dumps(blocks)},
        params={"thread_ts": "1700000000.000001"},
    )
    call = slack.calls_to("chat.postMessage")[0]
    assert call.args["blocks"] == blocks
    assert call.args["thread_ts"] == "1700000000.000001"
    message = slack.message(CHANNEL, posted["ts"])
    assert message is not None and message.blocks == blocks


# ----------------------------------------------------------------------------- messages


async def test_post_message_creates_increasing_unique_ts(slack: FakeSlack) -> None:
    client = web(slack)
    seeded = slack.add_message(CHANNEL, "explicit", ts="1800000000.000000")
    timestamps = [
        (await client.chat_postMessage(channel=CHANNEL, text=f"m{i}"))["ts"] for i in range(5)
    ]
    assert len(set(timestamps)) == 5
    assert all(float(a) < float(b) for a, b in itertools.pairwise([seeded, *timestamps]))
    first = await client.chat_postMessage(channel=CHANNEL, text="shape")
    assert first["message"]["bot_id"] == "B0BOT"
    assert first["message"]["text"] == "shape"
    assert [m.text for m in slack.bot_messages(CHANNEL)] == [*(f"m{i}" for i in range(5)), "shape"]


async def test_post_message_limits_and_missing_channel(slack: FakeSlack) -> None:
    client = web(slack)
    await client.chat_postMessage(channel=CHANNEL, text="x" * 40_000)
    too_long = await api_error(client.chat_postMessage(channel=CHANNEL, text="x" * 40_001))
    assert too_long.response["error"] == "msg_too_long"
    slack.missing_channels.add("C0GONE")
    gone = await api_error(client.chat_postMessage(channel="C0GONE", text="hi"))
    assert gone.response["error"] == "channel_not_found"
    assert len(slack.bot_messages()) == 1


async def test_update_edits_and_refuses_illegal_edits(slack: FakeSlack) -> None:
    client = web(slack)
    ts = (await client.chat_postMessage(channel=CHANNEL, text="…"))["ts"]
    await client.chat_update(channel=CHANNEL, ts=ts, text="partial")
    await client.chat_update(channel=CHANNEL, ts=ts, text="y" * 4_000)
    message = slack.message(CHANNEL, ts)
    assert message is not None
    assert message.edits == 2
    assert message.history == ["…", "partial", "y" * 4_000]

    too_long = await api_error(client.chat_update(channel=CHANNEL, ts=ts, text="y" * 4_001))
    assert (too_long.response.status_code, too_long.response["error"]) == (200, "msg_too_long")
    missing = await api_error(client.chat_update(channel=CHANNEL, ts="1.000100", text="x"))
    assert missing.response["error"] == "message_not_found"
    users = slack.add_message(CHANNEL, "a user's words")
    foreign = await api_error(client.chat_update(channel=CHANNEL, ts=users, text="hijack"))
    assert foreign.response["error"] == "cant_update_message"
    assert slack.message(CHANNEL, users).text == "a user's words"  # type: ignore[union-attr]
    assert message.text == "y" * 4_000


async def test_delete_hides_message_from_thread(slack: FakeSlack) -> None:
    client = web(slack)
    parent = slack.add_message(CHANNEL, "question")
    ts = (await client.chat_postMessage(channel=CHANNEL, thread_ts=parent, text="answer"))["ts"]
    assert [m.text for m in slack.thread(CHANNEL, parent)] == ["question", "answer"]
    await client.chat_delete(channel=CHANNEL, ts=ts)
    assert [m.text for m in slack.thread(CHANNEL, parent)] == ["question"]
    assert slack.message(CHANNEL, ts).deleted  # type: ignore[union-attr]
    again = await api_error(client.chat_delete(channel=CHANNEL, ts=ts))
    assert again.response["error"] == "message_not_found"
    cant = await api_error(client.chat_delete(channel=CHANNEL, ts=parent))
    assert cant.response["error"] == "cant_delete_message"


async def test_replies_paginate_parent_first(slack: FakeSlack) -> None:
    parent = slack.add_message(CHANNEL, "parent")
    for i in range(4):
        slack.add_message(CHANNEL, f"reply {i}", user=f"U{i % 2}", thread_ts=parent)
    slack.add_message(CHANNEL, "unrelated")
    client = web(slack)
    texts: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await client.conversations_replies(
            channel=CHANNEL, ts=parent, limit=2, cursor=cursor
        )
        pages += 1
        texts += [m["text"] for m in page["messages"]]
        if pages == 1:
            head = page["messages"][0]
            assert (head["reply_count"], head["reply_users"]) == (4, ["U0", "U1"])
        cursor = page["response_metadata"]["next_cursor"]
        assert page["has_more"] is bool(cursor)
        if not cursor:
            break
    assert pages == 3
    assert texts == ["parent", "reply 0", "reply 1", "reply 2", "reply 3"]
    unknown = await api_error(client.conversations_replies(channel=CHANNEL, ts="1.000100"))
    assert unknown.response["error"] == "thread_not_found"


def texts_of(page: Any) -> list[str]:
    return [m["text"] for m in page["messages"]]


def seed_thread(slack: FakeSlack, replies: int, channel: str = CHANNEL) -> list[str]:
    """A thread: the parent's ts, then each reply's ts ("reply 0", "reply 1", …)."""
    parent = slack.add_message(channel, "parent")
    return [
        parent,
        *(slack.add_message(channel, f"reply {i}", thread_ts=parent) for i in range(replies)),
    ]


async def read_all(read: Callable[..., Any], **args: Any) -> tuple[list[str], list[bool]]:
    """Follow next_cursor to the end; the texts in order and each page's has_more."""
    texts: list[str] = []
    has_more: list[bool] = []
    cursor = None
    for _ in range(50):
        page = await read(cursor=cursor, **args)
        texts += texts_of(page)
        has_more.append(page["has_more"])
        cursor = page["response_metadata"]["next_cursor"]
        assert page["has_more"] is bool(cursor)
        if not cursor:
            return texts, has_more
    raise AssertionError("pagination never ended")


async def test_replies_bounds_are_exclusive_unless_inclusive(unmetered: FakeSlack) -> None:
    parent, *replies = seed_thread(unmetered, 5)
    read = web(unmetered).conversations_replies

    after_first = await read(channel=CHANNEL, ts=parent, oldest=replies[0])
    assert texts_of(after_first) == ["reply 1", "reply 2", "reply 3", "reply 4"]
    from_first = await read(channel=CHANNEL, ts=parent, oldest=replies[0], inclusive=True)
    assert texts_of(from_first) == ["reply 0", "reply 1", "reply 2", "reply 3", "reply 4"]

    before_third = await read(channel=CHANNEL, ts=parent, latest=replies[2])
    assert texts_of(before_third) == ["parent", "reply 0", "reply 1"]
    assert before_third["messages"][0]["reply_count"] == 5  # the thread, not the window
    up_to_third = await read(channel=CHANNEL, ts=parent, latest=replies[2], inclusive=True)
    assert texts_of(up_to_third) == ["parent", "reply 0", "reply 1", "reply 2"]

    between = await read(channel=CHANNEL, ts=parent, oldest=replies[1], latest=replies[4])
    assert texts_of(between) == ["reply 2", "reply 3"]
    both_ends = await read(
        channel=CHANNEL, ts=parent, oldest=replies[1], latest=replies[4], inclusive=True
    )
    assert texts_of(both_ends) == ["reply 1", "reply 2", "reply 3", "reply 4"]
    # A reply's ts reads the same thread; a window with nothing in it is an empty page.
    empty = await read(channel=CHANNEL, ts=replies[3], oldest=replies[4])
    assert (empty["messages"], empty["has_more"]) == ([], False)
    # Bounds need not be message timestamps: whole seconds and short fractions compare as ts.
    everything = await read(channel=CHANNEL, ts=parent, oldest="0", latest="9999999999.5")
    assert len(everything["messages"]) == 6


async def test_replies_bounds_paginate_with_cursors(unmetered: FakeSlack) -> None:
    parent, *replies = seed_thread(unmetered, 7)
    read = web(unmetered).conversations_replies
    texts, has_more = await read_all(
        read, channel=CHANNEL, ts=parent, oldest=parent, latest=replies[6], limit=2
    )
    assert texts == [f"reply {i}" for i in range(6)]
    assert has_more == [True, True, False]
    with_parent, _ = await read_all(
        read, channel=CHANNEL, ts=parent, oldest=parent, inclusive=True, limit=3
    )
    assert with_parent == ["parent", *(f"reply {i}" for i in range(7))]


async def test_history_is_newest_first_without_thread_replies_or_deleted(
    unmetered: FakeSlack,
) -> None:
    client = web(unmetered)
    first = unmetered.add_message(CHANNEL, "first")
    parent = unmetered.add_message(CHANNEL, "parent")
    unmetered.add_message(CHANNEL, "in thread", user="U0ONE", thread_ts=parent)
    unmetered.add_message(CHANNEL, "shown to all", user="U0TWO", thread_ts=parent, broadcast=True)
    gone = (await client.chat_postMessage(channel=CHANNEL, text="deleted later"))["ts"]
    await client.chat_postMessage(
        channel=CHANNEL, thread_ts=first, text="bot, to all", reply_broadcast=True
    )
    await client.chat_postMessage(channel=CHANNEL, thread_ts=first, text="bot, in thread")
    await client.chat_delete(channel=CHANNEL, ts=gone)
    unmetered.add_message("C0OTHER", "elsewhere")
    blocks = [{"type": "section", "block_id": "writing", "text": {"type": "mrkdwn", "text": "…"}}]
    last = unmetered.add_message(CHANNEL, "last", user="U0BOT", bot_id="B0BOT", blocks=blocks)

    history = await client.conversations_history(channel=CHANNEL)
    assert texts_of(history) == ["last", "bot, to all", "shown to all", "parent", "first"]
    assert (history["has_more"], history["response_metadata"]["next_cursor"]) == (False, "")
    by_text = {m["text"]: m for m in history["messages"]}
    thread = by_text["parent"]
    assert (thread["thread_ts"], thread["reply_count"], thread["reply_users"]) == (
        parent,
        2,
        ["U0ONE", "U0TWO"],
    )
    assert thread["latest_reply"] == by_text["shown to all"]["ts"]
    assert by_text["shown to all"]["subtype"] == "thread_broadcast"
    assert by_text["shown to all"]["thread_ts"] == parent
    assert "reply_count" not in by_text["last"] and by_text["last"]["ts"] == last
    assert (by_text["last"]["blocks"], by_text["last"]["bot_id"]) == (blocks, "B0BOT")
    # Broadcast replies are still thread replies.
    assert texts_of(await client.conversations_replies(channel=CHANNEL, ts=parent)) == [
        "parent",
        "in thread",
        "shown to all",
    ]


async def test_history_pages_toward_older_messages_within_bounds(unmetered: FakeSlack) -> None:
    stamps = [unmetered.add_message(CHANNEL, f"m{i}") for i in range(9)]
    read = web(unmetered).conversations_history
    texts, has_more = await read_all(read, channel=CHANNEL, limit=4)
    assert texts == [f"m{i}" for i in reversed(range(9))]
    assert has_more == [True, True, False]

    window, has_more = await read_all(
        read, channel=CHANNEL, oldest=stamps[1], latest=stamps[7], limit=2
    )
    assert window == ["m6", "m5", "m4", "m3", "m2"]
    assert has_more == [True, True, False]
    inclusive = await read(channel=CHANNEL, oldest=stamps[1], latest=stamps[7], inclusive=True)
    assert texts_of(inclusive) == [f"m{i}" for i in reversed(range(1, 8))]
    newest = await read(channel=CHANNEL, latest=stamps[8], limit=1)
    assert texts_of(newest) == ["m7"] and newest["has_more"] is True


async def test_history_accepts_a_json_post(slack: FakeSlack) -> None:
    stamps = [slack.add_message(CHANNEL, f"m{i}") for i in range(3)]
    args = {"channel": CHANNEL, "oldest": stamps[0], "inclusive": True, "limit": 2}
    page = await web(slack).api_call("conversations.history", json=args)
    assert texts_of(page) == ["m2", "m1"] and page["has_more"] is True


async def test_read_page_sizes_default_and_cap(slack: FakeSlack) -> None:
    client = web(slack)
    for i in range(1000):
        slack.add_message(CHANNEL, f"m{i}")
    default = await client.conversations_history(channel=CHANNEL)
    assert (len(default["messages"]), default["has_more"]) == (100, True)
    capped = await client.conversations_history(channel=CHANNEL, limit=5000)
    assert (len(capped["messages"]), capped["has_more"]) == (999, True)

    parent, *_ = seed_thread(slack, 1000, channel="C0BIG")
    thread = await client.conversations_replies(channel="C0BIG", ts=parent)
    assert (len(thread["messages"]), thread["has_more"]) == (1000, True)
    capped = await client.conversations_replies(channel="C0BIG", ts=parent, limit=5000)
    assert len(capped["messages"]) == 1000
    rest = await client.conversations_replies(
        channel="C0BIG", ts=parent, cursor=capped["response_metadata"]["next_cursor"]
    )
    assert (texts_of(rest), rest["has_more"]) == (["reply 999"], False)


@pytest.mark.parametrize("method", ["conversations.replies", "conversations.history"])
@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"oldest": "yesterday"}, "invalid_ts_oldest"),
        ({"oldest": "-5"}, "invalid_ts_oldest"),
        ({"latest": "1.2.3"}, "invalid_ts_latest"),
        ({"latest": "now"}, "invalid_ts_latest"),
        ({"limit": "ten"}, "invalid_limit"),
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"cursor": "bmV4dF90czpzb29u"}, "invalid_cursor"),  # base64 of "next_ts:soon"
    ],
)
async def test_reads_reject_malformed_arguments(
    slack: FakeSlack, method: str, args: dict[str, str], error: str
) -> None:
    parent = slack.add_message(CHANNEL, "parent")
    params = {"channel": CHANNEL, "ts": parent, **args}
    rejected = await api_error(web(slack).api_call(method, http_verb="GET", params=params))
    assert (rejected.response.status_code, rejected.response["error"]) == (200, error)


async def test_history_of_an_unknown_channel(slack: FakeSlack) -> None:
    client = web(slack)
    slack.add_message(CHANNEL, "here")
    unknown = await api_error(client.conversations_history(channel="C0NOWHERE"))
    assert unknown.response["error"] == "channel_not_found"
    missing = await api_error(client.api_call("conversations.history", http_verb="GET"))
    assert missing.response["error"] == "channel_not_found"
    slack.missing_channels.add(CHANNEL)
    gone = await api_error(client.conversations_history(channel=CHANNEL))
    assert gone.response["error"] == "channel_not_found"


async def test_reads_are_tier_3_by_default() -> None:
    clock = ManualClock()
    async with FakeSlack(clock=clock) as slack:
        client = web(slack)
        parent = slack.add_message(CHANNEL, "parent")
        for _ in range(5):
            await client.conversations_replies(channel=CHANNEL, ts=parent)
            await client.conversations_history(channel=CHANNEL)
        replies = await api_error(client.conversations_replies(channel=CHANNEL, ts=parent))
        history = await api_error(client.conversations_history(channel=CHANNEL))
        for limited in (replies, history):
            assert limited.response.status_code == 429
            assert limited.response.headers["Retry-After"] == "2"  # 50/min: one per 1.2 s


async def test_limited_reads_allow_one_call_a_minute_and_pages_of_15() -> None:
    clock = ManualClock()
    async with FakeSlack(clock=clock, limited_reads=True) as slack:
        client = web(slack)
        parent, *_ = seed_thread(slack, 20)
        for i in range(20):
            slack.add_message(CHANNEL, f"top {i}")

        first = await client.conversations_replies(channel=CHANNEL, ts=parent, limit=200)
        assert texts_of(first) == ["parent", *(f"reply {i}" for i in range(14))]
        assert first["has_more"] is True
        again = await api_error(client.conversations_replies(channel=CHANNEL, ts=parent))
        assert (again.response.status_code, again.response["error"]) == (429, "ratelimited")
        assert again.response.headers["Retry-After"] == "60"

        history = await client.conversations_history(channel=CHANNEL)  # a budget of its own
        assert texts_of(history) == [f"top {i}" for i in reversed(range(5, 20))]
        history_again = await api_error(client.conversations_history(channel=CHANNEL, limit=1))
        assert history_again.response.headers["Retry-After"] == "60"

        clock.advance(59)
        early = await api_error(client.conversations_replies(channel=CHANNEL, ts=parent))
        assert early.response.headers["Retry-After"] == "1"
        clock.advance(1)
        rest = await client.conversations_replies(
            channel=CHANNEL, ts=parent, cursor=first["response_metadata"]["next_cursor"]
        )
        assert texts_of(rest) == [f"reply {i}" for i in range(14, 20)]
        assert rest["has_more"] is False
        assert [c.status for c in slack.calls_to("conversations.replies")] == [200, 429, 429, 200]


async def test_reactions_are_kept_per_message(slack: FakeSlack) -> None:
    client = web(slack)
    ts = slack.add_message(CHANNEL, "question")
    await client.reactions_add(channel=CHANNEL, timestamp=ts, name="eyes")
    assert slack.message(CHANNEL, ts).reactions == {"eyes": ["U0BOT"]}  # type: ignore[union-attr]
    twice = await api_error(client.reactions_add(channel=CHANNEL, timestamp=ts, name="eyes"))
    assert twice.response["error"] == "already_reacted"
    await client.reactions_remove(channel=CHANNEL, timestamp=ts, name="eyes")
    assert slack.message(CHANNEL, ts).reactions == {}  # type: ignore[union-attr]
    none = await api_error(client.reactions_remove(channel=CHANNEL, timestamp=ts, name="eyes"))
    assert none.response["error"] == "no_reaction"


async def test_status_is_set_cleared_by_reply_and_expires() -> None:
    clock = ManualClock()
    async with FakeSlack(clock=clock) as slack:
        client = web(slack)
        parent = slack.add_message(CHANNEL, "question")
        await client.assistant_threads_setStatus(
            channel_id=CHANNEL, thread_ts=parent, status="is thinking…"
        )
        assert slack.status(CHANNEL, parent) == "is thinking…"
        await client.chat_postMessage(channel=CHANNEL, thread_ts=parent, text="answer")
        assert slack.status(CHANNEL, parent) == ""

        await client.assistant_threads_setStatus(channel_id=CHANNEL, thread_ts=parent, status="…")
        clock.advance(121)
        assert slack.status(CHANNEL, parent) == ""


async def test_users_info(slack: FakeSlack) -> None:
    slack.users["U0ADA"] = "Ada Lovelace"
    user = (await web(slack).users_info(user="U0ADA"))["user"]
    assert (user["real_name"], user["profile"]["display_name"]) == ("Ada Lovelace", "Ada Lovelace")
    missing = await api_error(web(slack).users_info(user="U0NOBODY"))
    assert missing.response["error"] == "user_not_found"


# ----------------------------------------------------------------------------- native streams


async def test_native_stream_accumulates_and_finalizes(slack: FakeSlack) -> None:
    client = web(slack)
    parent = slack.add_message(CHANNEL, "question")
    started = await client.chat_startStream(
        channel=CHANNEL,
        thread_ts=parent,
        recipient_user_id="U0USER",
        recipient_team_id="T0001",
        markdown_text="Hel",
    )
    ts = started["ts"]
    await client.chat_appendStream(channel=CHANNEL, ts=ts, markdown_text="lo")
    conflict = await api_error(client.chat_update(channel=CHANNEL, ts=ts, text="x"))
    assert conflict.response["error"] == "streaming_state_conflict"
    assert slack.message(CHANNEL, ts).streaming  # type: ignore[union-attr]
    await client.chat_stopStream(channel=CHANNEL, ts=ts, markdown_text=" world")
    message = slack.message(CHANNEL, ts)
    assert message is not None and not message.streaming
    assert message.text == "Hello world"
    late = await api_error(client.chat_appendStream(channel=CHANNEL, ts=ts, markdown_text="!"))
    assert late.response["error"] == "message_not_in_streaming_state"
    assert [m.text for m in slack.thread(CHANNEL, parent)] == ["question", "Hello world"]


async def test_stream_needs_recipient_outside_dms(slack: FakeSlack) -> None:
    client = web(slack)
    error = await api_error(client.chat_startStream(channel=CHANNEL, thread_ts=new_ts()))
    assert error.response["error"] == "invalid_arguments"
    await client.chat_startStream(channel="D0DM", thread_ts=new_ts(), markdown_text="ok")


async def test_stream_lifetime_then_update_finishes_it() -> None:
    clock = ManualClock()
    async with FakeSlack(clock=clock, stream_lifetime=300) as slack:
        client = web(slack)
        ts = (await client.chat_startStream(channel="D0DM", thread_ts=new_ts()))["ts"]
        clock.advance(299)
        await client.chat_appendStream(channel="D0DM", ts=ts, markdown_text="part")
        clock.advance(1)
        closed = await api_error(client.chat_appendStream(channel="D0DM", ts=ts, markdown_text="x"))
        assert closed.response["error"] == "message_not_in_streaming_state"
        await client.chat_update(channel="D0DM", ts=ts, text="part, finished")
        assert slack.message("D0DM", ts).text == "part, finished"  # type: ignore[union-attr]


async def test_user_pressing_stop(slack: FakeSlack) -> None:
    client = web(slack)
    ts = (await client.chat_startStream(channel="D0DM", thread_ts=new_ts()))["ts"]
    slack.press_stop("D0DM", ts)
    stopped = await api_error(client.chat_appendStream(channel="D0DM", ts=ts, markdown_text="x"))
    assert stopped.response["error"] == "stopped_by_user"


# ----------------------------------------------------------------------------- rate limits


async def test_budget_gives_429_with_retry_after_then_refills() -> None:
    clock = ManualClock()
    async with FakeSlack(clock=clock, budgets={"chat.update": (60, 2)}) as slack:
        client = web(slack)
        ts = (await client.chat_postMessage(channel=CHANNEL, text="a"))["ts"]
        await client.chat_update(channel=CHANNEL, ts=ts, text="b")
        await client.chat_update(channel=CHANNEL, ts=ts, text="c")
        limited = await api_error(client.chat_update(channel=CHANNEL, ts=ts, text="d"))
        assert limited.response.status_code == 429
        assert limited.response.headers["Retry-After"] == "1"
        assert limited.response["error"] == "ratelimited"
        assert [c.status for c in slack.calls_to("chat.update")] == [200, 200, 429]
        assert slack.message(CHANNEL, ts).text == "c"  # type: ignore[union-attr]
        clock.advance(1.0)
        await client.chat_update(channel=CHANNEL, ts=ts, text="e")
        assert len(slack.ok_calls("chat.update")) == 3


async def test_retry_after_reflects_refill_rate_and_buckets_are_per_workspace() -> None:
    clock = ManualClock()
    budgets = {"chat.postMessage": (6.0, 1)}
    async with FakeSlack(clock=clock, budgets=budgets, extra_tokens={"xoxb-two": "T0002"}) as slack:
        await web(slack).chat_postMessage(channel=CHANNEL, text="one")
        limited = await api_error(web(slack).chat_postMessage(channel=CHANNEL, text="two"))
        assert limited.response.headers["Retry-After"] == "10"
        other = await web(slack, "xoxb-two").chat_postMessage(channel="C0OTHER", text="elsewhere")
        assert other["ok"]
        assert [(c.team_id, c.status) for c in slack.calls] == [
            ("T0001", 200),
            ("T0001", 429),
            ("T0002", 200),
        ]


# ----------------------------------------------------------------------------- scripted faults


async def test_scripted_ratelimit_ignores_budget_and_counts_down() -> None:
    async with FakeSlack(budgets={}) as slack:
        client = web(slack)
        slack.fail_next("chat.postMessage", "ratelimited", times=2, retry_after=7)
        for _ in range(2):
            error = await api_error(client.chat_postMessage(channel=CHANNEL, text="hi"))
            assert (error.response.status_code, error.response.headers["Retry-After"]) == (429, "7")
        await client.chat_postMessage(channel=CHANNEL, text="hi")
        assert [c.status for c in slack.calls] == [429, 429, 200]


async def test_scripted_error_kinds(slack: FakeSlack) -> None:
    client = web(slack)
    slack.fail_next("chat.postMessage", "msg_too_long")
    slack.fail_next("chat.postMessage", "500")
    error = await api_error(client.chat_postMessage(channel=CHANNEL, text="hi"))
    assert (error.response.status_code, error.response["error"]) == (200, "msg_too_long")
    server_error = await api_error(client.chat_postMessage(channel=CHANNEL, text="hi"))
    assert server_error.response.status_code == 500
    # slack_sdk retries a dropped connection once by default, so drop it twice.
    slack.fail_next("chat.postMessage", "reset", times=2)
    with pytest.raises(aiohttp.ClientError):
        await client.chat_postMessage(channel=CHANNEL, text="hi")
    assert [c.status for c in slack.calls] == [200, 500, 0, 0]
    assert slack.bot_messages() == []


async def test_hang_until_client_gives_up(slack: FakeSlack) -> None:
    slack.fail_next("chat.update", "hang")
    client = web(slack, timeout=1)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await client.chat_update(channel=CHANNEL, ts="1.000100", text="x")
    assert time.monotonic() - started >= 0.9
    assert [c.status for c in slack.calls] == [0]
    await client.auth_test()  # the server is still answering others


async def test_hang_is_released_when_the_fake_stops() -> None:
    slack = FakeSlack()
    await slack.start()
    slack.fail_next("auth.test", "hang")
    pending = asyncio.ensure_future(web(slack).auth_test())
    await slack.wait_call("auth.test")
    started = time.monotonic()
    await slack.stop()
    with pytest.raises(aiohttp.ClientError):
        await pending
    assert time.monotonic() - started < 2


async def test_latency_is_added_to_each_call() -> None:
    async with FakeSlack(latency=0.2) as slack:
        started = time.monotonic()
        await web(slack).auth_test()
        assert time.monotonic() - started >= 0.2


async def test_connection_latency_is_paid_per_new_connection() -> None:
    async with FakeSlack(connection_latency=0.1) as slack:
        started = time.monotonic()
        for _ in range(3):
            await web(slack).auth_test()  # a new ClientSession, so a new connection, per call
        assert time.monotonic() - started >= 0.3
        assert slack.connections == 3

        async with aiohttp.ClientSession() as session:
            shared = web(slack, session=session)
            started = time.monotonic()
            for _ in range(3):
                await shared.auth_test()
            assert time.monotonic() - started < 0.29  # one handshake, not three
        assert slack.connections == 4


# ----------------------------------------------------------------------------- waiting


async def test_wait_call_and_wait_for_timeout(slack: FakeSlack) -> None:
    client = web(slack)

    async def post_later() -> None:
        await asyncio.sleep(0.05)
        await client.chat_postMessage(channel=CHANNEL, text="first")
        await client.chat_postMessage(channel=CHANNEL, text="second")

    task = asyncio.ensure_future(post_later())
    call = await slack.wait_call("chat.postMessage", lambda c: c.args["text"] == "second", ok=True)
    assert call.response["message"]["text"] == "second"
    await task
    with pytest.raises(AssertionError, match=r"chat\.update"):
        await slack.wait_call("chat.update", timeout=0.05)


# ----------------------------------------------------------------------------- Socket Mode


class Listener:
    """A real SocketModeClient that records what it receives and acks every envelope."""

    def __init__(self, fake: FakeSlack) -> None:
        self.raw: list[dict[str, Any]] = []
        self.requests: list[SocketModeRequest] = []
        self.client = SocketModeClient(
            app_token=fake.app_token, web_client=web(fake), ping_interval=0.5
        )
        self.client.message_listeners.append(self._on_message)
        self.client.socket_mode_request_listeners.append(self._on_request)

    async def _on_message(self, client: Any, message: dict[str, Any], raw: str | None) -> None:
        self.raw.append(message)

    async def _on_request(
        self, client: AsyncBaseSocketModeClient, request: SocketModeRequest
    ) -> None:
        self.requests.append(request)
        response = SocketModeResponse(envelope_id=request.envelope_id, payload={"seen": True})
        await client.send_socket_mode_response(response)


@pytest.fixture
async def listeners(slack: FakeSlack) -> AsyncIterator[Callable[[], Listener]]:
    made: list[Listener] = []

    def make() -> Listener:
        listener = Listener(slack)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        await listener.client.close()


async def test_socket_hello_event_envelope_and_ack(
    slack: FakeSlack, listeners: Callable[[], Listener]
) -> None:
    listener = listeners()
    await asyncio.wait_for(listener.client.connect(), 5)
    await slack.wait_connected()
    await slack.wait_for(lambda: bool(listener.raw), what="hello")
    assert listener.raw[0]["type"] == "hello"
    assert listener.raw[0]["connection_info"] == {"app_id": "A0001"}

    event = mention_event("what is up?")
    envelope_id = await slack.send_event(
        event, event_id="Ev001", retry_attempt=1, retry_reason="timeout"
    )
    ack = await slack.wait_ack(envelope_id)
    assert ack == {"envelope_id": envelope_id, "payload": {"seen": True}}
    request = listener.requests[0]
    assert (request.type, request.retry_attempt, request.retry_reason) == (
        "events_api",
        1,
        "timeout",
    )
    payload = request.payload
    assert payload["type"] == "event_callback"
    assert payload["event_id"] == "Ev001"
    assert payload["event"] == event
    assert payload["authorizations"][0] == {
        "enterprise_id": None,
        "team_id": "T0001",
        "user_id": "U0BOT",
        "is_bot": True,
        "is_enterprise_install": False,
    }
    # The user's message now exists in the workspace, as on real Slack.
    assert [m.text for m in slack.thread(CHANNEL, event["ts"])] == ["<@U0BOT> what is up?"]


async def test_round_robin_copies_and_interactive(
    slack: FakeSlack, listeners: Callable[[], Listener]
) -> None:
    first, second = listeners(), listeners()
    await asyncio.wait_for(first.client.connect(), 5)
    await asyncio.wait_for(second.client.connect(), 5)
    await slack.wait_connected(count=2)

    for text in ("one", "two"):
        await slack.wait_ack(await slack.send_event(message_event(text)))
    assert len(first.requests) == len(second.requests) == 1

    ids = await slack.send_event_to_all(message_event("copy"), event_id="EvCOPY")
    for envelope_id in ids:
        await slack.wait_ack(envelope_id)
    copies = [lis.requests[-1].payload["event_id"] for lis in (first, second)]
    assert copies == ["EvCOPY", "EvCOPY"]
    assert len(set(ids)) == 2

    interactive_id = await slack.send_interactive(
        block_actions_payload("stop", value="1"), socket=0
    )
    await slack.wait_ack(interactive_id)
    request = first.requests[-1]
    assert (request.type, request.payload["actions"][0]["action_id"]) == ("interactive", "stop")
    assert request.payload["response_url"].startswith(f"http://127.0.0.1:{slack.port}/")


@pytest.mark.parametrize("how", ["close", "silent", "refresh"])
async def test_dropped_sockets_reconnect(
    slack: FakeSlack, listeners: Callable[[], Listener], how: str
) -> None:
    listener = listeners()
    await asyncio.wait_for(listener.client.connect(), 5)
    await slack.wait_connected()
    if how == "refresh":
        await slack.request_refresh()
    else:
        await slack.drop_sockets(silent=how == "silent")
        assert slack.connected == 0
    await slack.wait_for(
        lambda: len(slack.ok_calls("apps.connections.open")) == 2, what="a new connection URL"
    )
    await slack.wait_connected()
    await slack.wait_ack(await slack.send_event(message_event("after reconnect")))
    assert listener.requests[-1].payload["event"]["text"] == "after reconnect"


async def test_bolt_app_end_to_end(slack: FakeSlack) -> None:
    client = web(slack)
    app = AsyncApp(client=client)

    @app.event("app_mention")
    async def answer(event: dict[str, Any], say: Any) -> None:
        await say(text="hello back", thread_ts=event["ts"])

    handler = AsyncSocketModeHandler(app, slack.app_token)
    try:
        await asyncio.wait_for(handler.connect_async(), 5)
        event = mention_event("hi")
        await slack.wait_ack(await slack.send_event(event))
        await slack.wait_for(lambda: len(slack.thread(CHANNEL, event["ts"])) == 2, what="reply")
        replies = await client.conversations_replies(channel=CHANNEL, ts=event["ts"])
        assert [m["text"] for m in replies["messages"]] == ["<@U0BOT> hi", "hello back"]
    finally:
        await handler.close_async()


# ----------------------------------------------------------------------------- event helpers


def test_event_helpers_look_like_slack() -> None:
    mention = mention_event("question", thread_ts="1700000000.000100")
    assert mention["text"] == "<@U0BOT> question"
    assert mention["type"] == "app_mention" and mention["event_ts"] == mention["ts"]
    assert mention_event("<@U0BOT> already")["text"] == "<@U0BOT> already"

    dm = message_event("hi", channel="D0DM", channel_type="im")
    assert (dm["channel_type"], dm["user"], "subtype" in dm) == ("im", "U0USER", False)
    reply = message_event("more", thread_ts="1700000000.000100", parent_user_id="U0USER")
    assert reply["thread_ts"] != reply["ts"] and reply["parent_user_id"] == "U0USER"
    bot = message_event("beep", user=None, bot_id="B0OTHER", subtype="bot_message")
    assert (bot["bot_id"], bot["subtype"], "user" in bot) == ("B0OTHER", "bot_message", False)
    assert float(new_ts()) < float(new_ts())


def test_assistant_thread_started_event_looks_like_slack() -> None:
    event = assistant_thread_started_event(user="U1", channel="D1", context_channel="C1")
    thread = event["assistant_thread"]
    assert event["type"] == "assistant_thread_started"
    assert (thread["user_id"], thread["channel_id"]) == ("U1", "D1")
    assert thread["context"] == {"channel_id": "C1", "team_id": "T0001", "enterprise_id": None}
    assert float(thread["thread_ts"]) > 0


# ----------------------------------------------------------------------------- assistant threads


async def test_suggested_prompts_and_title_are_recorded_per_thread(slack: FakeSlack) -> None:
    client = web(slack)
    prompts = [{"title": "Ask", "message": "What can you do?"}]
    await client.assistant_threads_setSuggestedPrompts(
        channel_id="D1", thread_ts="1.000100", prompts=prompts, title="Try"
    )
    await client.assistant_threads_setTitle(channel_id="D1", thread_ts="1.000100", title="Trip")
    shown = slack.prompts("D1", "1.000100")
    assert shown is not None and (shown.prompts, shown.title) == (prompts, "Try")
    assert slack.titles[("D1", "1.000100")] == "Trip"
    assert slack.prompts("D1", "2.000100") is None


@pytest.mark.parametrize(
    "prompts",
    [
        [],
        [{"title": str(n), "message": str(n)} for n in range(5)],
        [{"title": "no message"}],
        [{"title": "", "message": "empty title"}],
    ],
    ids=["none", "five", "no-message", "empty-title"],
)
async def test_suggested_prompts_are_validated_like_slack(
    slack: FakeSlack, prompts: list[dict[str, str]]
) -> None:
    call = web(slack).assistant_threads_setSuggestedPrompts(
        channel_id="D1", thread_ts="1.000100", prompts=prompts
    )
    assert (await api_error(call)).response["error"] == "invalid_arguments"
    assert slack.prompts("D1", "1.000100") is None


async def test_ephemeral_messages_are_seen_only_by_their_user(slack: FakeSlack) -> None:
    client = web(slack)
    response = await client.chat_postEphemeral(
        channel=CHANNEL, user="U0USER", text="only you", thread_ts="1.000100"
    )
    assert response["message_ts"]
    (shown,) = slack.ephemerals_for("U0USER")
    assert (shown.channel, shown.text, shown.thread_ts) == (CHANNEL, "only you", "1.000100")
    assert slack.ephemerals_for("U0OTHER") == [] and slack.bot_messages() == []
    no_user = {"channel": CHANNEL, "text": "to nobody"}
    error = await api_error(client.api_call("chat.postEphemeral", json=no_user))
    assert error.response["error"] == "user_not_found"
