"""Assistant threads (agent view) and feedback clicks, end to end: real event and action bodies
over Socket Mode through the real app, a real redis-server, the fake Slack's record out."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.compose import RunningBot
from bot.config import DEFAULT_ASSISTANT_GREETING, DEFAULT_ASSISTANT_PROMPTS, load_settings
from bot.errors import ConfigError
from bot.render.feedback import FEEDBACK_ACTION_ID, FEEDBACK_BLOCK_ID
from tests.fakes.openai import FakeOpenAI, echo_last_user
from tests.fakes.slack import (
    FakeSlack,
    assistant_thread_context_changed_event,
    assistant_thread_started_event,
    block_actions_payload,
    message_event,
)
from tests.redis_server import RedisServer
from tests.views import bot_replies

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    {"title": "Summarize", "message": "Summarize what I paste next."},
    "What can you do?",
]
SHOWN = [
    {"title": "Summarize", "message": "Summarize what I paste next."},
    {"title": "What can you do?", "message": "What can you do?"},
]
THANKS = "Thanks for the feedback!"


@pytest.fixture(autouse=True)
def echo(llm: FakeOpenAI) -> None:
    llm.default = echo_last_user


async def settle(slack: FakeSlack, envelope: str) -> None:
    """The envelope acked, then a sentinel DM answered: the earlier event had its chance."""
    await slack.wait_ack(envelope)
    await slack.send_event(message_event("sentinel", channel="D0SENT", channel_type="im"))
    await slack.wait_for(
        lambda: any(m.text == "sentinel" for m in slack.bot_messages("D0SENT")), timeout=10
    )


def click(
    vote: str, message_ts: str, *, user: str = "U0USER", thread_ts: str | None = None
) -> dict[str, Any]:
    return block_actions_payload(
        FEEDBACK_ACTION_ID,
        value=vote,
        user=user,
        message_ts=message_ts,
        thread_ts=thread_ts,
        block_id=FEEDBACK_BLOCK_ID,
        action_type="feedback_buttons",
    )


def answer_in_thread(slack: FakeSlack) -> tuple[str, str]:
    """(thread_ts, answer ts): a person's question and the bot's answer under it."""
    question = slack.add_message("C0CHAN", "a question")
    answer = slack.add_message(
        "C0CHAN", "an answer", user=slack.bot_user_id, bot_id=slack.bot_id, thread_ts=question
    )
    return question, answer


def votes_metric(running: RunningBot, vote: str) -> float:
    value = running.metrics.registry.get_sample_value("slackbot_feedback_total", {"vote": vote})
    return value or 0.0


# -- a new assistant thread -----------------------------------------------------------------


async def test_a_new_thread_gets_the_greeting_and_the_configured_prompts(
    start_bot: Any, slack: FakeSlack
) -> None:
    async with start_bot(
        assistant_greeting="Hello! Ask away.",
        assistant_prompts=PROMPTS,
        assistant_prompts_title="Ideas",
    ):
        event = assistant_thread_started_event(channel="D0ASSIST")
        thread_ts = event["assistant_thread"]["thread_ts"]
        await slack.send_event(event)
        await slack.wait_for(lambda: slack.prompts("D0ASSIST", thread_ts) is not None)
        await slack.wait_for(lambda: bool(bot_replies(slack, "D0ASSIST", thread_ts)))

    shown = slack.prompts("D0ASSIST", thread_ts)
    assert shown is not None and shown.prompts == SHOWN and shown.title == "Ideas"
    assert [m.text for m in bot_replies(slack, "D0ASSIST", thread_ts)] == ["Hello! Ask away."]


async def test_the_defaults_greet_and_suggest(bot: RunningBot, slack: FakeSlack) -> None:
    event = assistant_thread_started_event()
    thread_ts = event["assistant_thread"]["thread_ts"]
    await slack.send_event(event)
    await slack.wait_for(lambda: slack.prompts("D0ASSIST", thread_ts) is not None)
    await slack.wait_for(lambda: bool(bot_replies(slack, "D0ASSIST", thread_ts)))
    shown = slack.prompts("D0ASSIST", thread_ts)
    assert shown is not None
    assert shown.prompts == [p.model_dump() for p in DEFAULT_ASSISTANT_PROMPTS]
    assert [m.text for m in bot_replies(slack, "D0ASSIST", thread_ts)] == [
        DEFAULT_ASSISTANT_GREETING
    ]


@pytest.mark.parametrize(
    ("greeting", "prompts"),
    [("", []), ("", PROMPTS), ("Hi!", [])],
    ids=["both-off", "greeting-off", "prompts-off"],
)
async def test_an_empty_greeting_or_prompt_list_turns_that_part_off(
    start_bot: Any, slack: FakeSlack, greeting: str, prompts: list[Any]
) -> None:
    async with start_bot(assistant_greeting=greeting, assistant_prompts=prompts):
        event = assistant_thread_started_event()
        thread_ts = event["assistant_thread"]["thread_ts"]
        await settle(slack, await slack.send_event(event))
        await slack.wait_for(
            lambda: (
                (slack.prompts("D0ASSIST", thread_ts) is not None) == bool(prompts)
                and bool(bot_replies(slack, "D0ASSIST", thread_ts)) == bool(greeting)
            )
        )

    shown = slack.prompts("D0ASSIST", thread_ts)
    assert (shown.prompts if shown else []) == (SHOWN if prompts else [])
    assert [m.text for m in bot_replies(slack, "D0ASSIST", thread_ts)] == (
        [greeting] if greeting else []
    )


async def test_a_failed_greeting_still_leaves_the_prompts_and_the_bot_answering(
    bot: RunningBot, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    slack.fail_next("chat.postMessage", "channel_not_found")
    event = assistant_thread_started_event()
    thread_ts = event["assistant_thread"]["thread_ts"]
    await slack.send_event(event)
    await slack.wait_for(lambda: slack.prompts("D0ASSIST", thread_ts) is not None)
    assert bot_replies(slack, "D0ASSIST", thread_ts) == []
    await settle(slack, await slack.send_event(assistant_thread_started_event()))
    assert any("could not greet" in r.getMessage() for r in caplog.records)
    assert not any(r.exc_info for r in caplog.records if r.name.startswith(("bot", "slack_bolt")))


async def test_a_context_change_is_acknowledged_quietly(
    bot: RunningBot, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    calls = len(slack.calls)
    envelope = await slack.send_event(assistant_thread_context_changed_event(thread_ts="1.000100"))
    await settle(slack, envelope)
    answered = [c for c in slack.calls[calls:] if c.method != "auth.test"]  # Bolt's authorize
    assert {c.args.get("channel", c.args.get("channel_id")) for c in answered} == {"D0SENT"}
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)  # no "unhandled"


# -- feedback clicks ------------------------------------------------------------------------


async def test_a_vote_is_stored_counted_and_thanked(
    bot: RunningBot, slack: FakeSlack, redis_client: Any
) -> None:
    thread_ts, answer = answer_in_thread(slack)
    await slack.wait_ack(await slack.send_interactive(click("good", answer, thread_ts=thread_ts)))
    await slack.wait_for(lambda: bool(slack.ephemerals_for("U0USER")))

    (thanks,) = slack.ephemerals_for("U0USER")
    assert (thanks.channel, thanks.thread_ts, thanks.text) == ("C0CHAN", thread_ts, THANKS)
    assert await redis_client.hgetall(f"slackbot:{{T0001}}:feedback:C0CHAN:{answer}") == {
        b"U0USER": b"good"
    }
    assert await redis_client.ttl(f"slackbot:{{T0001}}:feedback:C0CHAN:{answer}") > 29 * 86400
    assert await _daily_votes(redis_client) == {"good": 1, "bad": 0}
    assert votes_metric(bot, "good") == 1


async def test_a_changed_vote_replaces_the_earlier_one(
    bot: RunningBot, slack: FakeSlack, redis_client: Any
) -> None:
    thread_ts, answer = answer_in_thread(slack)
    for vote, user in [
        ("good", "U0USER"),
        ("good", "U0OTHER"),
        ("bad", "U0USER"),
        ("bad", "U0USER"),
    ]:
        expected = len(slack.ephemerals) + 1
        await slack.send_interactive(click(vote, answer, user=user, thread_ts=thread_ts))
        await slack.wait_for(lambda n=expected: len(slack.ephemerals) == n)  # one at a time

    assert await redis_client.hgetall(f"slackbot:{{T0001}}:feedback:C0CHAN:{answer}") == {
        b"U0USER": b"bad",
        b"U0OTHER": b"good",
    }
    # Votes cast today: the repeated 👎 is not cast again; every click is thanked and counted.
    assert await _daily_votes(redis_client) == {"good": 2, "bad": 1}
    assert (votes_metric(bot, "good"), votes_metric(bot, "bad")) == (2, 2)
    assert [e.text for e in slack.ephemerals_for("U0USER")] == [THANKS] * 3


@pytest.mark.parametrize("broken", ["unknown-vote", "no-message", "no-user"])
async def test_a_malformed_click_is_ignored(
    bot: RunningBot,
    slack: FakeSlack,
    redis_client: Any,
    caplog: pytest.LogCaptureFixture,
    broken: str,
) -> None:
    caplog.set_level(logging.INFO)
    thread_ts, answer = answer_in_thread(slack)
    payload = click("meh" if broken == "unknown-vote" else "good", answer, thread_ts=thread_ts)
    if broken == "no-message":
        del payload["container"], payload["message"]
    if broken == "no-user":
        del payload["user"]
    await slack.wait_ack(await slack.send_interactive(payload))
    await slack.wait_for(
        lambda: any("ignored malformed feedback" in r.getMessage() for r in caplog.records)
    )
    assert slack.ephemerals == []
    assert await redis_client.keys("slackbot:*:feedback:*") == []
    assert votes_metric(bot, "good") == 0


async def test_a_click_while_redis_is_down_is_still_thanked_and_counted(
    start_bot: Any, slack: FakeSlack, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with start_bot(redis_url=own_redis.url) as running:
        thread_ts, answer = answer_in_thread(slack)
        own_redis.stop()
        for vote in ("good", "bad"):
            await slack.send_interactive(click(vote, answer, thread_ts=thread_ts))
        await slack.wait_for(lambda: len(slack.ephemerals_for("U0USER")) == 2, timeout=10)
        assert (votes_metric(running, "good"), votes_metric(running, "bad")) == (1, 1)
        own_redis.start()

    assert [e.text for e in slack.ephemerals_for("U0USER")] == [THANKS, THANKS]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "bot.store"]
    assert len(warnings) == 1  # one warning per outage, not one per click
    assert not any(r.exc_info for r in caplog.records if r.name.startswith(("bot", "slack_bolt")))


async def _daily_votes(redis_client: Any) -> dict[str, int]:
    (key,) = await redis_client.keys("slackbot:{T0001}:usage:*")
    values = await redis_client.hmget(key, ["team:feedback_good", "team:feedback_bad"])
    return {"good": int(values[0] or 0), "bad": int(values[1] or 0)}


# -- settings -------------------------------------------------------------------------------

_REQUIRED = {"slack_bot_token": "xoxb-1", "slack_app_token": "xapp-1", "openai_api_key": "sk-1"}


def test_prompts_are_read_from_a_json_list_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(
        "ASSISTANT_PROMPTS", '["What can you do?", {"title": "Summarize", "message": "Summarize"}]'
    )
    settings = load_settings(_REQUIRED, env_file=None)
    assert [(p.title, p.message) for p in settings.assistant_prompts] == [
        ("What can you do?", "What can you do?"),
        ("Summarize", "Summarize"),
    ]
    monkeypatch.setenv("ASSISTANT_PROMPTS", "")
    assert load_settings(_REQUIRED, env_file=None).assistant_prompts == ()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ('["a", "b", "c", "d", "e"]', "at most 4 prompts (Slack shows no more), got 5"),
        ("What can you do?", "not valid JSON"),
        ('[{"title": "no message"}]', 'prompt 1: expected a non-empty string or {"title"'),
        ('["fine", ""]', "prompt 2: expected a non-empty string"),
        ('{"title": "t", "message": "m"}', "expected a JSON list of prompts"),
    ],
)
def test_malformed_prompts_are_named_clearly(
    monkeypatch: pytest.MonkeyPatch, raw: str, problem: str
) -> None:
    monkeypatch.setenv("ASSISTANT_PROMPTS", raw)
    with pytest.raises(ConfigError) as info:
        load_settings(_REQUIRED, env_file=None)
    (text,) = info.value.problems
    assert text.startswith("ASSISTANT_PROMPTS: ") and problem in text


def test_python_m_bot_with_too_many_prompts_stops_with_one_readable_message(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "OPENAI_", "REDIS_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        SLACK_BOT_TOKEN="xoxb-1",
        SLACK_APP_TOKEN="xapp-1",
        OPENAI_API_KEY="sk-1",
        ASSISTANT_PROMPTS='["1", "2", "3", "4", "5"]',
    )
    result = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "ASSISTANT_PROMPTS: Value error, at most 4 prompts" in result.stderr


# -- CHANNELS_FILE applies to buttons and greetings too (issue 15, finding 6) --------------------


async def test_deny_lists_apply_to_votes_and_greetings(
    start_bot: Any, slack: FakeSlack, redis_client: Any, tmp_path: Any
) -> None:
    policy = tmp_path / "channels.toml"
    policy.write_text('[access]\ndeny_users = ["U0SPAM"]\n', encoding="utf-8")
    async with start_bot(channels_file=str(policy)) as running:
        thread_ts, answer = answer_in_thread(slack)
        denied = click("bad", answer, user="U0SPAM", thread_ts=thread_ts)
        allowed = click("good", answer, user="U0USER", thread_ts=thread_ts)
        await slack.wait_ack(await slack.send_interactive(denied))
        greeting = assistant_thread_started_event(user="U0SPAM", channel="D0SPAM")
        await slack.wait_ack(await slack.send_event(greeting))
        # Someone allowed, after them: their click is handled, so the denied ones had their turn.
        await slack.wait_ack(await slack.send_interactive(allowed))
        await slack.wait_for(lambda: bool(slack.ephemerals_for("U0USER")))
        assert votes_metric(running, "good") == 1 and votes_metric(running, "bad") == 0
    assert not slack.ephemerals_for("U0SPAM")
    assert await redis_client.hgetall(f"slackbot:{{T0001}}:feedback:C0CHAN:{answer}") == {
        b"U0USER": b"good"
    }
    assert not slack.bot_messages("D0SPAM")  # no greeting
    assert slack.prompts("D0SPAM", greeting["assistant_thread"]["thread_ts"]) is None
