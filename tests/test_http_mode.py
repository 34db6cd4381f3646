"""HTTP Events API mode (signed requests through Bolt) and the ops endpoints in both modes."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.fakes.openai import FakeOpenAI, echo_last_user
from tests.fakes.slack import FakeSlack, mention_event
from tests.redis_server import RedisServer
from tests.test_e2e_rules import answered

SECRET = "test-signing-secret"


def sign(body: str, timestamp: int, secret: str = SECRET) -> str:
    base = f"v0:{timestamp}:{body}".encode()
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


async def post_event(
    port: int, payload: dict[str, Any], *, timestamp: int | None = None, secret: str = SECRET
) -> tuple[int, str]:
    body = json.dumps(payload)
    ts = int(time.time()) if timestamp is None else timestamp
    headers = {
        "Content-Type": "application/json",
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": sign(body, ts, secret),
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/slack/events", data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.text()


def callback(event: dict[str, Any], event_id: str = "Ev0HTTP") -> dict[str, Any]:
    return {
        "token": "legacy",
        "team_id": "T0001",
        "api_app_id": "A0001",
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "event": event,
        "authorizations": [{"team_id": "T0001", "user_id": "U0BOT", "is_bot": True}],
    }


async def get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, await resp.text()


async def test_signed_events_are_answered_and_forged_ones_refused(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.default = echo_last_user
    async with start_bot(
        slack_mode="http", slack_signing_secret=SECRET, slack_app_token=None
    ) as bot:
        port = bot.http_port
        status, body = await post_event(
            port, {"type": "url_verification", "challenge": "c-123", "token": "x"}
        )
        assert status == 200 and "c-123" in body

        forged_status, _ = await post_event(port, callback(mention_event("forged")), secret="wrong")
        stale_status, _ = await post_event(
            port, callback(mention_event("stale"), "Ev0STALE"), timestamp=int(time.time()) - 600
        )
        assert (forged_status, stale_status) == (401, 401)

        status, _ = await post_event(port, callback(mention_event("over http")))
        assert status == 200
        await answered(slack, "over http")
        # A retry of the same event (Slack re-sends with the same event_id) is acknowledged, not re-answered.
        status, _ = await post_event(port, callback(mention_event("over http"), "Ev0HTTP"))
        assert status == 200
    texts = [m.text for m in slack.bot_messages()]
    assert texts == ["over http"]
    assert [m["content"] for r in llm.requests for m in r.messages if m["role"] == "user"] == [
        "over http"
    ]


async def test_ops_endpoints_report_health_readiness_and_metrics(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, own_redis: RedisServer
) -> None:
    llm.default = echo_last_user
    async with start_bot(redis_url=own_redis.url) as bot:
        port = bot.http_port
        assert (await get(port, "/healthz"))[0] == 200
        assert (await get(port, "/readyz"))[0] == 200

        await slack.send_event(mention_event("count me"))
        await answered(slack, "count me")
        # The turn counts its reply after the final edit lands and the turn is saved.
        for _ in range(250):  # up to 5 s
            if "slackbot_active_streams 0.0" in (await get(port, "/metrics"))[1]:
                break
            await asyncio.sleep(0.02)
        status, text = await get(port, "/metrics")
        assert status == 200
        assert 'slackbot_events_total{outcome="received"} 1.0' in text
        assert 'slackbot_slack_calls_total{method="chat.postMessage",outcome="ok"} 1.0' in text
        assert 'slackbot_slack_calls_total{method="chat.update",outcome="ok"}' in text
        assert 'slackbot_replies_total{outcome="started"} 1.0' in text
        assert 'slackbot_replies_total{outcome="complete"} 1.0' in text
        assert "slackbot_active_streams 0.0" in text
        assert "slackbot_event_to_placeholder_seconds_count 1.0" in text
        assert "slackbot_first_token_to_visible_seconds_count 1.0" in text
        assert f"slackbot_streamed_characters_total {float(len('count me'))}" in text
        assert 'slackbot_model_tokens_total{kind="completion"}' in text
        assert "process_resident_memory_bytes" in text  # the process and its collector
        assert 'python_gc_collections_total{generation="0"}' in text

        own_redis.stop()
        status, text = await get(port, "/readyz")
        assert status == 503 and json.loads(text)["failing"] == ["redis"]
        assert (await get(port, "/healthz"))[0] == 200
        own_redis.start()
        assert (await get(port, "/readyz"))[0] == 200


@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_shutdown_closes_the_ops_server(start_bot: Any, mode: str) -> None:
    async with start_bot(slack_mode=mode, slack_signing_secret=SECRET) as bot:
        port = bot.http_port
        assert (await get(port, "/healthz"))[0] == 200
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(port, "/healthz")
