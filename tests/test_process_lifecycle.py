"""The bot as a real process: SIGTERM drains answers in flight, logs are structured, correlated and
never contain a secret."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from tests.bot_process import bot_env, spawn_bot, stop_bot
from tests.fakes.openai import Answer, FakeOpenAI, echo_last_user
from tests.fakes.slack import FakeSlack, mention_event
from tests.test_e2e_rules import answered
from tests.test_http_mode import SECRET, callback, post_event

SLOW = Answer(text="word " * 200, chunk_size=5, token_delay=0.05)  # ~10 s of streaming


def _shows_writing(slack: FakeSlack) -> bool:
    return any("writing" in str(m.blocks) for m in slack.bot_messages())


async def test_sigterm_finishes_short_answers_and_notes_cut_long_ones(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str, tmp_path: Path
) -> None:
    llm.script(SLOW, Answer(text="quick answer", ttft=0.5))
    proc = await spawn_bot(
        tmp_path / "bot.log", bot_env(slack, llm, redis_url, SHUTDOWN_GRACE="1.5")
    )
    await slack.wait_connected(timeout=30)
    await slack.send_event(mention_event("long one"))
    await slack.wait_for(
        lambda: any(m.text.startswith("word") for m in slack.bot_messages()), timeout=10
    )
    await slack.send_event(mention_event("short one"))
    await llm.wait_requests(2)

    assert await stop_bot(proc) == 0
    # Nothing is left "writing…": the short answer completed within the grace period, the long
    # one was cut and says so.
    assert not _shows_writing(slack)
    await answered(slack, "quick answer", timeout=1)
    long_reply = next(m for m in slack.bot_messages() if m.text.startswith("word"))
    assert "please ask again" in str(long_reply.blocks)
    assert len(long_reply.text) < len(SLOW.text)
    assert llm.open_streams == 0
    assert "Traceback" not in (tmp_path / "bot.log").read_text()


async def test_logs_are_json_correlated_and_free_of_secrets(
    llm: FakeOpenAI, redis_url: str, tmp_path: Path
) -> None:
    secrets = {
        "bot": "xoxb-1111-2222-SECRETBOTTOKEN",
        "app": "xapp-1-A111-SECRETAPPTOKEN",
        "key": "sk-SECRETOPENAIKEY-123456",
    }
    llm.api_key = secrets["key"]
    # The SDK retries a 500 twice before giving up.
    llm.script(Answer(status=500), Answer(status=500), Answer(status=500), Answer(text="fine now"))
    async with FakeSlack(bot_token=secrets["bot"], app_token=secrets["app"]) as slack:
        env = bot_env(slack, llm, redis_url, LOG_FORMAT="json", LOG_LEVEL="DEBUG")
        proc = await spawn_bot(tmp_path / "bot.log", env)
        await slack.wait_connected(timeout=30)
        first = mention_event("this one fails")
        await slack.send_event(first, event_id="Ev0FAILS")
        await slack.wait_for(
            lambda: any("Sorry" in m.text for m in slack.bot_messages()), timeout=15
        )
        await slack.send_event(mention_event("this one works"))
        await answered(slack, "fine now", timeout=15)
        assert await stop_bot(proc) == 0
        user_visible = " ".join(m.text + str(m.blocks) for m in slack.bot_messages())

    raw = (tmp_path / "bot.log").read_text()
    for secret in secrets.values():
        assert secret not in raw
        assert secret not in user_visible
    assert "500" not in user_visible and "Error" not in user_visible  # no raw exception shown
    lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
    assert all({"ts", "level", "logger", "turn", "msg"} <= set(line) for line in lines)
    # LOG_LEVEL=DEBUG is the bot's own: libraries (markdown-it wrote thousands of records per
    # answer) only at WARNING and above.
    assert not [
        line
        for line in lines
        if line["level"] in ("DEBUG", "INFO") and line["logger"].split(".")[0] != "bot"
    ]
    failure_lines = [line for line in lines if line["turn"] == "Ev0FAILS"]
    assert any(
        line["level"] == "WARNING" and "model unavailable" in line["msg"] for line in failure_lines
    )


async def test_the_bot_process_answers_signed_events_over_http_and_stops_cleanly(
    slack: FakeSlack, llm: FakeOpenAI, redis_url: str, tmp_path: Path
) -> None:
    """``python -m bot`` as deployed in HTTP mode: its own event loop (uvloop by default) under
    the aiohttp server, Bolt's signature check, the answer, and a clean SIGTERM."""
    llm.default = echo_last_user
    env = bot_env(
        slack,
        llm,
        redis_url,
        SLACK_MODE="http",
        SLACK_SIGNING_SECRET=SECRET,
        SLACK_APP_TOKEN="",
        HTTP_PORT="0",  # a free port, named in the log
    )
    log = tmp_path / "bot.log"
    proc = await spawn_bot(log, env)
    try:
        for _ in range(300):  # up to 30 s for the child to start serving
            serving = re.search(r"serving Slack events on port (\d+)", log.read_text())
            if serving:
                port = int(serving.group(1))
                break
            assert proc.returncode is None, log.read_text()
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the bot did not start serving within 30 s:\n{log.read_text()}")
        status, _ = await post_event(port, callback(mention_event("over http")), secret="wrong")
        assert status == 401
        status, _ = await post_event(port, callback(mention_event("over http")))
        assert status == 200
        await answered(slack, "over http")
    finally:
        code = await stop_bot(proc)
    assert code == 0
    assert [m.text for m in slack.bot_messages()] == ["over http"]
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_secret_in_an_error_from_slack_never_reaches_the_log(
    llm: FakeOpenAI, redis_url: str, tmp_path: Path, log_format: str
) -> None:
    """Slack's error text carries the bot token, the configured model key (no token shape: only
    its value tells) and other token shapes. The bot logs it twice: as the traceback of the
    placeholder that could not be posted (the global error hook) and in the 'final edit
    rejected' line of the next answer. Both come out redacted."""
    bot_token = "xoxb-1111-2222-SECRETBOTTOKEN"
    api_key = "local-gateway-key-0123456789"
    shaped = ["xoxp-9999-8888-7777-USERTOKEN", "xapp-1-A999-OTHERAPPTOKEN", "sk-proj-LEAKED0123456"]
    error = f"invalid_auth: token {bot_token} revoked (key {api_key}; also {' '.join(shaped)})"
    llm.api_key = api_key
    llm.default = echo_last_user
    async with FakeSlack(bot_token=bot_token, app_token="xapp-1-A111-SECRETAPPTOKEN") as slack:
        env = bot_env(slack, llm, redis_url, LOG_FORMAT=log_format, LOG_LEVEL="DEBUG")
        log = tmp_path / "bot.log"
        proc = await spawn_bot(log, env)
        try:
            await slack.wait_connected(timeout=30)
            slack.fail_next("chat.postMessage", error)
            await slack.send_event(mention_event("the placeholder fails"))
            await slack.wait_for(lambda: "SlackRejected" in log.read_text(), timeout=10)
            slack.fail_next("chat.update", error, times=100)
            await slack.send_event(mention_event("the edits fail"))
            await slack.wait_for(lambda: "final edit" in log.read_text(), timeout=15)
        finally:
            assert await stop_bot(proc) == 0
    raw = log.read_text()
    for secret in [bot_token, api_key, *shaped]:
        assert secret not in raw
    assert raw.count("[redacted]") >= 2 * (2 + len(shaped))  # both paths were taken
    assert "Traceback" in raw  # the error hook's traceback, redacted
