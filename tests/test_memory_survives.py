"""The bot's memory survives: restarts on the embedded store, Redis outages and an emptied store.
Slack is the source of truth, read only where the store cannot answer — real processes, the
real app over Socket Mode, real Redis servers and the fake Slack / OpenAI servers."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from bot.compose import RunningBot
from bot.render.reply import INDICATOR_BLOCK_ID
from bot.store import connect_redis
from tests.bot_process import bot_env, spawn_bot, stop_bot
from tests.fakes.openai import Answer, FakeOpenAI, echo_last_user
from tests.fakes.slack import FakeSlack, Message, mention_event, message_event
from tests.redis_server import RedisServer
from tests.test_e2e_rules import answered, bot_texts, said, settle
from tests.views import working


@pytest.fixture(autouse=True)
def echo(llm: FakeOpenAI) -> None:
    llm.default = echo_last_user  # each answer repeats the question: easy to tell apart


def prompt(llm: FakeOpenAI, n: int = -1) -> list[str]:
    """What the model was told in request ``n``, without the system prompt."""
    return [str(m["content"]) for m in llm.requests[n].messages[1:]]


async def saved(server: RedisServer, thread_ts: str, channel: str = "C0CHAN") -> None:
    """Wait until the answer in the thread is stored (saved just after its final edit): a store
    emptied before that would get it back."""
    client = connect_redis(server.url)
    try:
        name = f"slackbot:{{T0001}}:thread:{channel}:{thread_ts}"
        for _ in range(200):
            if await client.llen(name) >= 2:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"thread {thread_ts} was never saved")
    finally:
        await client.aclose()


def shown(slack: FakeSlack, ts: str) -> Message:
    message = slack.message("C0CHAN", ts)
    assert message is not None
    return message


def reads(slack: FakeSlack) -> int:
    return len(slack.calls_to("conversations.replies")) + len(
        slack.calls_to("conversations.history")
    )


async def test_the_embedded_store_keeps_memory_and_dedupe_across_a_restart(
    slack: FakeSlack, llm: FakeOpenAI, tmp_path: Path
) -> None:
    env = bot_env(slack, llm, None, DATA_DIR=str(tmp_path / "data"))  # no REDIS_URL
    first = mention_event("remember the word banana")
    proc = await spawn_bot(tmp_path / "bot1.log", env)
    try:
        await slack.wait_connected(timeout=30)
        await slack.send_event(first, event_id="Ev0FIRST")
        await answered(slack, "remember the word banana")
    finally:
        assert await stop_bot(proc) == 0  # as in an upgrade: SIGTERM, then start again

    await slack.wait_for(lambda: slack.connected == 0, timeout=10, what="the old socket gone")
    proc = await spawn_bot(tmp_path / "bot2.log", env)
    try:
        await slack.wait_connected(timeout=30)
        await slack.send_event(message_event("which word?", thread_ts=first["ts"]))
        await answered(slack, "which word?")
        assert prompt(llm) == [
            "remember the word banana",
            "remember the word banana",
            "which word?",
        ]
        assert reads(slack) == 0  # all of it came from the store, none from Slack
        # Slack redelivers the first mention (its ack was lost): the marker survived too.
        retry = await slack.send_event(first, event_id="Ev0FIRST", retry_attempt=1, record=False)
        await settle(slack, llm, [retry])
    finally:
        assert await stop_bot(proc) == 0
    assert bot_texts(slack).count("remember the word banana") == 1
    assert not slack.calls_to("conversations.replies")  # the retry needed no check either
    for log in ("bot1.log", "bot2.log"):
        assert "Traceback" not in (tmp_path / log).read_text()
    assert not list((tmp_path / "data" / "clients").iterdir())  # nobody left registered


async def test_a_killed_process_leaves_no_message_writing_on_the_embedded_store(
    slack: FakeSlack, llm: FakeOpenAI, tmp_path: Path
) -> None:
    llm.script(Answer(text="word " * 400, chunk_size=5, token_delay=0.05))
    env = bot_env(slack, llm, None, DATA_DIR=str(tmp_path / "data"), REPLY_LEASE="2")
    doomed = await spawn_bot(tmp_path / "doomed.log", env)
    await slack.wait_connected(timeout=30)
    await slack.send_event(mention_event("write a lot"))
    await slack.wait_for(
        lambda: any(m.text.startswith("word") for m in slack.bot_messages()), timeout=15
    )
    await stop_bot(doomed, signal.SIGKILL)  # the server it started lives on
    reply = next(m for m in slack.bot_messages() if m.text.startswith("word"))
    assert working(reply)

    survivor = await spawn_bot(tmp_path / "survivor.log", env)
    try:
        await slack.wait_for(lambda: not working(shown(slack, reply.ts)), timeout=20)
    finally:
        assert await stop_bot(survivor) == 0
    assert "please ask again" in str(shown(slack, reply.ts).blocks)


async def test_follow_ups_are_answered_through_an_outage_and_an_emptied_store(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, own_redis: RedisServer
) -> None:
    async with start_bot(redis_url=own_redis.url):
        before = mention_event("alpha")
        await slack.send_event(before)
        await answered(slack, "alpha")

        own_redis.stop()
        # A thread answered before the outage: the store cannot say, Slack can.
        await slack.send_event(message_event("alpha again", thread_ts=before["ts"]))
        await answered(slack, "alpha again")
        assert prompt(llm) == ["alpha", "alpha", "alpha again"]
        # Read once: the process keeps what it wrote until Redis is back.
        done = reads(slack)
        await slack.send_event(message_event("alpha third", thread_ts=before["ts"]))
        await answered(slack, "alpha third")
        assert reads(slack) == done
        assert prompt(llm)[-3:] == ["alpha again", "alpha again", "alpha third"]
        # One answered during it.
        during = mention_event("beta")
        await slack.send_event(during)
        await answered(slack, "beta")
        await slack.send_event(message_event("beta again", thread_ts=during["ts"]))
        await answered(slack, "beta again")
        assert prompt(llm) == ["beta", "beta", "beta again"]

        own_redis.start()  # empty: it keeps nothing on disk
        await slack.send_event(message_event("alpha once more", thread_ts=before["ts"]))
        await answered(slack, "alpha once more")
        assert prompt(llm) == [
            "alpha",
            "alpha",
            "alpha again",
            "alpha again",
            "alpha third",
            "alpha third",
            "alpha once more",
        ]
        # Stored again: the next follow-up needs no read.
        done = reads(slack)
        await slack.send_event(message_event("alpha, last", thread_ts=before["ts"]))
        await answered(slack, "alpha, last")
        assert reads(slack) == done
        assert prompt(llm)[-3:] == ["alpha once more", "alpha once more", "alpha, last"]


async def test_the_normal_path_reads_nothing_from_slack(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI, redis_client: Any
) -> None:
    # A store that has remembered for longer than HISTORY_TTL_DAYS: what it lacks, never was.
    await redis_client.set("slackbot:epoch", repr(time.time() - 31 * 86400))
    parent = slack.add_message("C0CHAN", "people talking", user="U0ALICE")
    first = mention_event("one")
    envelopes = [
        await slack.send_event(first),
        # Human chatter in a thread the store knows is not the bot's: no read either.
        await slack.send_event(message_event("not for the bot", thread_ts=parent)),
    ]
    await answered(slack, "one")
    for text in ("two", "three"):
        await slack.send_event(message_event(text, thread_ts=first["ts"]))
        await answered(slack, text)
    await settle(slack, llm, envelopes)
    assert reads(slack) == 0
    assert "not for the bot" not in bot_texts(slack)


async def test_a_dm_conversation_the_store_lost_is_read_back_from_slack(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI, redis_server: RedisServer
) -> None:
    await slack.send_event(message_event("my name is Ada", channel="D0DM", channel_type="im"))
    await answered(slack, "my name is Ada")
    redis_server.flush()
    await slack.send_event(message_event("what is my name?", channel="D0DM", channel_type="im"))
    await answered(slack, "what is my name?")
    assert prompt(llm) == ["my name is Ada", "my name is Ada", "what is my name?"]
    # Stored again: the next message needs no read.
    done = reads(slack)
    await slack.send_event(message_event("and now?", channel="D0DM", channel_type="im"))
    await answered(slack, "and now?")
    assert reads(slack) == done
    assert prompt(llm)[:3] == ["my name is Ada", "my name is Ada", "what is my name?"]


async def test_a_burst_in_a_thread_the_store_lost_reads_it_once(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI, redis_server: RedisServer
) -> None:
    first = mention_event("start")
    await slack.send_event(first)
    await answered(slack, "start")
    await saved(redis_server, first["ts"])
    redis_server.flush()
    for n in range(3):
        await slack.send_event(message_event(f"follow-up {n}", thread_ts=first["ts"]))
    for n in range(3):
        await answered(slack, f"follow-up {n}")
    assert len(slack.calls_to("conversations.replies")) == 1
    assert prompt(llm, 1)[:2] == ["start", "start"]


async def test_human_threads_older_than_the_store_are_read_once_then_cached_as_not_mine(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI, redis_client: Any
) -> None:
    old = slack.add_message("C0CHAN", "an old conversation", user="U0ALICE")
    await redis_client.set("slackbot:epoch", repr(time.time() + 5))  # the store is newer
    envelopes = [
        await slack.send_event(message_event(f"chatter {n}", thread_ts=old, user="U0BOB"))
        for n in range(3)
    ]
    await settle(slack, llm, envelopes)
    assert bot_texts(slack) == ["sentinel"]
    assert len(slack.calls_to("conversations.replies")) == 1
    assert await redis_client.exists(f"slackbot:{{T0001}}:notmine:C0CHAN:{old}") == 1


async def test_a_redelivery_the_store_cannot_vouch_for_is_checked_against_slack(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI, redis_server: RedisServer
) -> None:
    once = mention_event("once")
    await slack.send_event(once, event_id="Ev0ONCE")
    await answered(slack, "once")
    redis_server.flush()  # the store forgot it answered
    envelopes = [await slack.send_event(once, event_id="Ev0ONCE", retry_attempt=1, record=False)]
    # A message whose first delivery never reached the bot: answered on its retry.
    lost = mention_event("never acked")
    envelopes.append(await slack.send_event(lost, event_id="Ev0LOST", retry_attempt=2))
    await answered(slack, "never acked")
    await settle(slack, llm, envelopes)
    assert bot_texts(slack).count("once") == 1
    assert len(llm.requests) == 3  # once, never acked, sentinel


async def test_a_thread_slack_will_not_let_the_bot_read_is_answered_with_what_is_known(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    parent = slack.add_message("C0CHAN", "people talking", user="U0ALICE")
    slack.fail_next("conversations.replies", "ratelimited", retry_after=30)
    started = time.monotonic()
    await slack.send_event(mention_event("what is this about?", thread_ts=parent))
    await answered(slack, "what is this about?")
    assert time.monotonic() - started < 10  # not held for the 30 s Retry-After
    assert prompt(llm) == ["what is this about?"]


async def test_summoned_into_a_long_thread_the_prompt_has_its_newest_messages(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    # 2,500 messages: more than the ten pages of 200 a read may take.
    parent = slack.add_message("C0CHAN", "message 0", user="U0ALICE")
    for n in range(1, 2500):
        user = "U0ALICE" if n % 2 else "U0BOB"
        slack.add_message("C0CHAN", f"message {n}", user=user, thread_ts=parent)
    await slack.send_event(mention_event("summarise", thread_ts=parent))
    await answered(slack, said("U0USER", "summarise"))
    told = prompt(llm)
    assert told[0] == said("U0ALICE", "message 0")  # the thread's opening message stays
    assert told[-2:] == [said("U0ALICE", "message 2499"), said("U0USER", "summarise")]
    assert said("U0ALICE", "message 2401") in told and said("U0BOB", "message 2400") not in told
    assert len(told) == 100 + 1  # BACKFILL_LIMIT, and the question
    # Not walked page by page: the first page, then its tail (in a page or two).
    assert len(slack.calls_to("conversations.replies")) <= 3


async def test_recovery_never_rewrites_a_finished_answer(
    bot: RunningBot, slack: FakeSlack, redis_client: Any
) -> None:
    finished = slack.add_message("C0CHAN", "the complete answer", user="U0BOT", bot_id="B0BOT")
    native = slack.add_message("C0CHAN", "a streamed answer", user="U0BOT", bot_id="B0BOT")
    records: dict[str, dict[str, Any]] = {
        # Its final edit landed, then the untrack was lost in a Redis blip.
        "r1": {"text": "the comp", "ts": finished},
        # A native reply whose final text was on its way.
        "r2": {"text": "a stream", "ts": native, "native": True, "final": True},
    }
    for reply_id, fields in records.items():
        record = {"owner": "gone-1", "team": "T0001", "channel": "C0CHAN", "thread_ts": None}
        await redis_client.set(f"slackbot:reply:{reply_id}", json.dumps({**record, **fields}))
        await redis_client.zadd("slackbot:replies", {reply_id: time.time() + 600})
    inflight = bot.inflight  # the same object the composition root wired
    await inflight.sweep()
    assert shown(slack, finished).text == "the complete answer"
    assert shown(slack, native).text == "a streamed answer"
    assert not slack.calls_to("chat.update")
    assert await redis_client.zcard("slackbot:replies") == 0


async def test_recovery_waits_until_slack_shows_the_message_before_finishing_it(
    bot: RunningBot, slack: FakeSlack, redis_client: Any
) -> None:
    inflight = bot.inflight
    await asyncio.wait_for(inflight.swept.wait(), 10)  # its own, at start
    working_blocks = [{"type": "context", "block_id": INDICATOR_BLOCK_ID, "elements": []}]
    ts = slack.add_message(
        "C0CHAN", "half an answ", user="U0BOT", bot_id="B0BOT", blocks=working_blocks
    )
    # Its final edit was on its way when the process died; Slack still shows it writing.
    record = {"owner": "gone-1", "team": "T0001", "channel": "C0CHAN", "thread_ts": None}
    record.update(ts=ts, text="half an answ", final=True)
    await redis_client.set("slackbot:reply:r1", json.dumps(record))
    await redis_client.zadd("slackbot:replies", {"r1": time.time() + 600})
    slack.fail_next("conversations.replies", "ratelimited", retry_after=1)
    assert await inflight.sweep() == 0
    assert working(shown(slack, ts))
    assert await redis_client.zcard("slackbot:replies") == 1  # kept for the next sweep
    assert await inflight.sweep() == 1
    assert not working(shown(slack, ts))
    assert "please ask again" in str(shown(slack, ts).blocks)
    assert shown(slack, ts).text == "half an answ"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


async def test_a_sigterm_during_start_up_leaves_no_server_behind(
    llm: FakeOpenAI, tmp_path: Path
) -> None:
    # Slack answering slowly holds the bot in its start-up after its embedded server is up.
    async with FakeSlack(latency=1.0) as slow:
        env = bot_env(slow, llm, None, DATA_DIR=str(tmp_path / "data"))
        proc = await spawn_bot(tmp_path / "bot.log", env)
        pid_file = tmp_path / "data" / "server.pid"
        for _ in range(600):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            await asyncio.sleep(0.05)
        server = int(pid_file.read_text())
        assert slow.connected == 0  # still starting
        assert await stop_bot(proc) == 0  # the orderly way out, not killed by the signal
    for _ in range(200):
        if not _running(server):
            break
        await asyncio.sleep(0.05)
    assert not _running(server), "the embedded server outlived the bot"
