"""Per-channel profiles, allow/deny lists, the per-user rate limit and daily token quotas —
through the real app, against real Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.errors import ConfigError
from bot.policy import Profile, load_policy
from bot.turn import QUOTA_TEXT, RATE_TEXT
from tests.fakes.openai import FakeOpenAI, echo_last_user
from tests.fakes.slack import FakeSlack, mention_event, message_event
from tests.test_e2e_rules import answered, bot_texts, settle

CHANNELS = """
[defaults]
system_prompt = "Default prompt."

[channels.C0SUP]
system_prompt = "You are the support desk."
model = "support-model"
temperature = 0.2

[access]
deny_users = ["U0BANNED"]
"""


@pytest.fixture(autouse=True)
def echo(llm: FakeOpenAI) -> None:
    llm.default = echo_last_user


def channels_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "channels.toml"
    path.write_text(text)
    return str(path)


async def test_channel_profile_reaches_the_model(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tmp_path: Path
) -> None:
    async with start_bot(channels_file=channels_file(tmp_path, CHANNELS), openai_model="general"):
        await slack.send_event(mention_event("support question", channel="C0SUP"))
        await answered(slack, "support question")
        await slack.send_event(mention_event("general question", channel="C0GEN"))
        await answered(slack, "general question")
    support, general = llm.requests[0].body, llm.requests[1].body
    assert (support["model"], support["temperature"]) == ("support-model", 0.2)
    assert support["messages"][0] == {"role": "system", "content": "You are the support desk."}
    assert general["model"] == "general" and "temperature" not in general
    assert general["messages"][0] == {"role": "system", "content": "Default prompt."}


async def test_allow_and_deny_lists(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, tmp_path: Path
) -> None:
    text = CHANNELS + 'allow_channels = ["C0SUP", "D0SENT"]\n'
    async with start_bot(channels_file=channels_file(tmp_path, text)):
        envelopes = [
            await slack.send_event(mention_event("elsewhere", channel="C0GEN")),
            await slack.send_event(mention_event("banned", channel="C0SUP", user="U0BANNED")),
        ]
        await slack.send_event(mention_event("allowed", channel="C0SUP"))
        await answered(slack, "allowed")
        await settle(slack, llm, envelopes)
    assert bot_texts(slack) == ["allowed", "sentinel"]


async def test_per_user_rate_limit_answers_kindly(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    async with start_bot(user_rate_limit=2, user_rate_window=3600):
        for n in range(2):
            await slack.send_event(message_event(f"q{n}", channel="D0DM", channel_type="im"))
            await answered(slack, f"q{n}")
        await slack.send_event(message_event("q2", channel="D0DM", channel_type="im"))
        note = RATE_TEXT.format(n=2, minutes=60)
        await slack.wait_for(
            lambda: any(m.text.startswith(note[:40]) for m in slack.bot_messages())
        )
        # Someone else is not affected.
        await slack.send_event(
            message_event("other", channel="D0DM2", channel_type="im", user="U0OTHER")
        )
        await answered(slack, "other")
    assert [r.messages[-1]["content"] for r in llm.requests] == ["q0", "q1", "other"]


async def test_daily_token_quota_and_usage_counters(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, redis_client: aioredis.Redis
) -> None:
    async with start_bot(user_daily_tokens=5):
        await slack.send_event(
            mention_event("a question long enough to use tokens", channel="C0GEN")
        )
        await answered(slack, "a question long enough to use tokens")
        await slack.send_event(mention_event("another", channel="C0GEN"))
        await answered(slack, QUOTA_TEXT.format(whose="Your"))
    assert len(llm.requests) == 1
    (key,) = await redis_client.keys("slackbot:{T0001}:usage:*")
    counters = {k.decode(): int(v) for k, v in (await redis_client.hgetall(key)).items()}
    assert (
        counters["team:replies"]
        == counters["user:U0USER:replies"]
        == counters["channel:C0GEN:replies"]
        == 1
    )
    assert counters["user:U0USER:total_tokens"] > 5
    assert counters["team:completion_tokens"] > 0


def test_a_bad_channels_file_names_every_problem(tmp_path: Path) -> None:
    bad = '[channels.C1]\nmodel = "m"\ntemperature = 9\ncolour = "red"\n[access]\nallow_channels = "C1"\n'
    default = Profile("p", "m", None)
    with pytest.raises(ConfigError) as info:
        load_policy(channels_file(tmp_path, bad), default=default)
    text = "\n".join(info.value.problems)
    assert "channels.C1.temperature" in text and "channels.C1.colour" in text
    assert "access.allow_channels" in text
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policy(channels_file(tmp_path, "[oops"), default=default)
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(str(tmp_path / "missing.toml"), default=default)
