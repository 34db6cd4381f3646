"""Reading threads back from Slack (bot/recall.py) against the fake Slack, including an app Slack
limits to one read a minute and 15 messages a page, and a real Redis for the shared read budget
and the cached "not the bot's thread"."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.conversation import ThreadKey
from bot.events import Inbound
from bot.recall import READ_METHOD, Recall
from bot.render.budget import EditBudget
from bot.slack import SlackGateway, connect_slack
from bot.store import Participation, Store, connect_redis
from tests.fakes.slack import FakeSlack, new_ts

TEAM, CHANNEL, BOT = "T0001", "C0CHAN", "U0BOT"


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    store = Store.open(connect_redis(redis_url))
    yield store
    await store.aclose()


@pytest.fixture
async def limited() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(limited_reads=True) as fake:
        yield fake


def recall_on(
    fake: FakeSlack, session: aiohttp.ClientSession, store: Store, **options: int
) -> Recall:
    gateway = SlackGateway(connect_slack(fake.bot_token, fake.api_url, session))
    reads = EditBudget(store.budgets, method=READ_METHOD, per_minute=1, burst=1, min_interval=0)
    return Recall(gateway, store.history, reads, limit=options.get("limit", 100))


def long_thread(fake: FakeSlack, replies: int, *, bot_at: int | None = None) -> str:
    parent = fake.add_message(CHANNEL, "the question", user="U0ALICE")
    for n in range(replies):
        user, bot_id = (BOT, fake.bot_id) if n == bot_at else ("U0BOB", None)
        fake.add_message(CHANNEL, f"reply {n}", user=user, bot_id=bot_id, thread_ts=parent)
    return parent


def inbound(thread_ts: str) -> Inbound:
    return Inbound(
        team=TEAM,
        channel=CHANNEL,
        channel_type="channel",
        user="U0BOB",
        text="and?",
        ts=new_ts(),
        thread_ts=thread_ts,
        event_id=None,
        mentioned=False,
        bot_user_id=BOT,
    )


async def test_a_limited_app_still_finds_the_bot_beyond_its_one_page(
    limited: FakeSlack, store: Store
) -> None:
    parent = long_thread(limited, 60, bot_at=40)  # the bot's reply is on the third page of 15
    async with aiohttp.ClientSession() as session:
        recall = recall_on(limited, session, store)
        key = ThreadKey(TEAM, CHANNEL, parent)
        follow_up = inbound(parent)  # posted, then the bot asks whether it is in the thread
        assert await recall.takes_part(key, bot_user=BOT, wait=5.0, fresh_for=follow_up.ts)
        # The same read serves the context: the opening message and what fit on its page.
        turns = await recall.turns(key, follow_up, [])
    assert turns is not None and turns[0].text == "the question" and len(turns) == 15
    assert len(limited.calls_to("conversations.replies")) == 1  # one read a minute


async def test_a_thread_without_the_bot_is_read_once_and_remembered_as_not_its(
    limited: FakeSlack, store: Store
) -> None:
    parent = long_thread(limited, 60)
    async with aiohttp.ClientSession() as session:
        recall = recall_on(limited, session, store)
        key = ThreadKey(TEAM, CHANNEL, parent)
        for _ in range(3):
            chatter = inbound(parent)
            assert not await recall.takes_part(key, bot_user=BOT, wait=5.0, fresh_for=chatter.ts)
    assert len(limited.calls_to("conversations.replies")) == 1
    assert await store.history.participation(key) is Participation.NO


async def test_a_read_slack_refuses_leaves_the_answer_to_what_is_known(
    limited: FakeSlack, store: Store
) -> None:
    first, second = long_thread(limited, 3), long_thread(limited, 3, bot_at=1)
    async with aiohttp.ClientSession() as session:
        recall = recall_on(limited, session, store)
        assert await recall.turns(ThreadKey(TEAM, CHANNEL, first), inbound(first), [])
        # The minute's read is spent: context is not waited for, participation gives up.
        assert await recall.turns(ThreadKey(TEAM, CHANNEL, second), inbound(second), []) is None
        key = ThreadKey(TEAM, CHANNEL, second)
        assert not await recall.takes_part(
            key, bot_user=BOT, wait=0.2, fresh_for=inbound(second).ts
        )
    assert len(limited.calls_to("conversations.replies")) == 1
    # Not knowing is not a "no": nothing was cached against the thread.
    assert await store.history.participation(key) is not Participation.NO


async def test_a_no_read_long_ago_is_read_again(slack: FakeSlack, store: Store) -> None:
    parent = long_thread(slack, 3)
    key = ThreadKey(TEAM, CHANNEL, parent)
    now = {"wall": 1_000.0, "monotonic": 0.0}
    async with aiohttp.ClientSession() as session:
        gateway = SlackGateway(connect_slack(slack.bot_token, slack.api_url, session))
        reads = EditBudget(
            store.budgets, method=READ_METHOD, per_minute=60, burst=5, min_interval=0
        )
        recall = Recall(
            gateway,
            store.history,
            reads,
            limit=100,
            clock=lambda: now["wall"],
            monotonic=lambda: now["monotonic"],
        )
        assert not await recall.takes_part(
            key, bot_user=BOT, wait=1.0, fresh_for=inbound(parent).ts
        )
        # An hour later the bot has answered there through another replica.
        slack.add_message(CHANNEL, "an answer", user=BOT, bot_id=slack.bot_id, thread_ts=parent)
        now["wall"] += 3600
        now["monotonic"] += 3600
        assert await recall.takes_part(key, bot_user=BOT, wait=1.0, fresh_for=inbound(parent).ts)
    assert len(slack.calls_to("conversations.replies")) == 2
