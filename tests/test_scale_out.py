"""Scaling out on a Redis Cluster (issue 14): concurrent deliveries of one message are answered
once, and a Stop pressed on one bot process stops the reply another process streams."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.render.reply import STOP_ACTION_ID
from bot.store import Store, connect_redis
from tests.bot_process import bot_env, ops_port, outcomes, running_bots
from tests.fakes.openai import FakeOpenAI, echo_last_user
from tests.fakes.slack import FakeSlack, Message, block_actions_payload, mention_event
from tests.redis_cluster import RedisCluster3
from tests.test_e2e_rules import answered
from tests.test_stop_and_recovery import SLOW, stop_value, streaming_reply
from tests.views import notes, working

NOW = 1_800_000_000.0  # the stores' clock: their epoch, before every message below
ROUNDS = 200


async def test_concurrent_first_sightings_on_the_cluster_have_exactly_one_winner(
    cluster_seeds: str, redis_cluster: RedisCluster3
) -> None:
    # One post, as Slack delivers it: the app_mention and its message twin (two event ids),
    # and two retries of each (same event id), all at once, each to another replica.
    kinds = [(twin, retry) for retry in (False, True, True) for twin in ("M", "T")]
    # A client of its own per delivery, with its own connections, as a replica would have.
    stores = [Store.open(connect_redis(redis_cluster.url), clock=lambda: NOW) for _ in kinds]
    order = random.Random(14)  # who sends first, varied from round to round
    try:
        await stores[0].prepare()  # the epoch: a redelivery of a later message is vouched for
        lost = []
        for n in range(ROUNDS):
            ts = f"{NOW + 1 + n:.6f}"
            results = await asyncio.gather(
                *(
                    store.dedupe.first_sighting("T1", "C1", ts, f"Ev{twin}{n}", retry=retry)
                    for store, (twin, retry) in zip(
                        order.sample(stores, len(stores)), kinds, strict=True
                    )
                )
            )
            if sorted(r.value for r in results) != ["first"] + ["repeat"] * (len(kinds) - 1):
                lost.append((n, [r.value for r in results]))
        assert not lost, f"{ROUNDS - len(lost)} of {ROUNDS} with one winner; e.g. {lost[:3]}"
    finally:
        for store in stores:
            await store.aclose()


@pytest.fixture
async def bots_on_the_cluster(
    slack: FakeSlack,
    llm: FakeOpenAI,
    cluster_seeds: str,
    redis_cluster: RedisCluster3,
    tmp_path: Path,
) -> AsyncIterator[list[int]]:
    """Two bot processes on the cluster, connected to Slack; their ops ports."""
    async with running_bots(bot_env(slack, llm, redis_cluster.url), tmp_path) as procs:
        await slack.wait_connected(count=2, timeout=30)
        yield [await ops_port(proc, tmp_path / f"bot{n}.log") for n, proc in enumerate(procs)]


async def counted(
    ports: list[int],
    counter: str,
    enough: Callable[[list[dict[str, float]]], bool],
    timeout: float = 10,
) -> list[dict[str, float]]:
    """Each process's ``counter`` by outcome, once ``enough`` is counted (a process counts what
    it did after doing it: the count may trail what Slack shows)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not enough(seen := [await outcomes(port, counter) for port in ports]):
        assert loop.time() < deadline, f"{counter} not as awaited within {timeout} s: {seen}"
        await asyncio.sleep(0.05)
    return seen


async def test_a_retry_reaching_the_other_process_is_not_answered_again(
    bots_on_the_cluster: list[int], slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.default = echo_last_user
    event = mention_event("asked once")
    # Slack redelivers before the first delivery was handled: each reaches another process.
    await slack.send_event(event, event_id="Ev0RETRIED", socket=0)
    await slack.send_event(
        event, event_id="Ev0RETRIED", retry_attempt=1, retry_reason="timeout", socket=1
    )
    await answered(slack, "asked once")

    seen = await counted(
        bots_on_the_cluster,
        "slackbot_events",
        lambda seen: sum(c.get("answered", 0) + c.get("deduplicated", 0) for c in seen) >= 2,
    )
    # One process answered, the other recognised the retry.
    assert sorted((c.get("answered", 0), c.get("deduplicated", 0)) for c in seen) == [
        (0, 1),
        (1, 0),
    ]
    assert [m.text for m in slack.bot_messages()] == ["asked once"]
    assert len(slack.ok_calls("chat.postMessage")) == 1
    assert len(llm.requests) == 1


async def test_stop_pressed_on_one_process_stops_the_reply_the_other_streams(
    bots_on_the_cluster: list[int], slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(SLOW)
    event = mention_event("write a lot")
    await slack.send_event(event, socket=0)
    reply = await streaming_reply(slack)
    value = stop_value(reply)
    assert value is not None

    ack = await slack.send_interactive(
        block_actions_payload(
            STOP_ACTION_ID, value=value, message_ts=reply.ts, thread_ts=event["ts"]
        ),
        socket=1,
    )
    await slack.wait_ack(ack)

    def shown() -> Message:
        message = slack.message("C0CHAN", reply.ts)
        assert message is not None
        return message

    await slack.wait_for(
        lambda: any("Stopped" in note for note in notes(shown())),
        timeout=1.5,
        what="the reply to show it was stopped",
    )
    final = shown()
    assert not working(final) and stop_value(final) is None  # no "writing…", no button
    assert final.text.startswith("word") and len(final.text) < len(SLOW.text.strip())
    await slack.wait_for(lambda: llm.open_streams == 0, timeout=2, what="the model stream closed")
    # The process that streamed it is the one that stopped it: the press reached it by relay.
    replies = await counted(
        bots_on_the_cluster,
        "slackbot_replies",
        lambda seen: sum(r.get("stopped", 0) for r in seen) >= 1,
    )
    assert sorted(r.get("stopped", 0) for r in replies) == [0, 1]
    assert [r.get("started", 0) for r in replies] == [r.get("stopped", 0) for r in replies]
