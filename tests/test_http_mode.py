"""HTTP Events API mode (signed requests through Bolt) and the ops endpoints in both modes
(their own listener: tests/test_ops_endpoints.py)."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import logging
import random
import time
import urllib.parse
from typing import Any

import aiohttp
import pytest

from bot.server import _shape_problem
from tests.fakes.openai import FakeOpenAI, echo_last_user
from tests.fakes.slack import (
    FakeSlack,
    assistant_thread_context_changed_event,
    assistant_thread_started_event,
    block_actions_payload,
    mention_event,
    message_event,
)
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


async def post_raw(port: int, body: bytes, headers: dict[str, str]) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/slack/events", data=body, headers=headers) as resp,
    ):
        return resp.status


def signed_headers(body: bytes, content_type: str = "application/json") -> dict[str, str]:
    ts = str(int(time.time()))
    base = b"v0:" + ts.encode() + b":" + body
    signature = "v0=" + hmac.new(SECRET.encode(), base, hashlib.sha256).hexdigest()
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
    }


def form(payload: object) -> bytes:
    return ("payload=" + urllib.parse.quote(json.dumps(payload))).encode()


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
        port = bot.ops_port
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
        # Still ready: it answers from Slack while Redis is down (a Service keeps routing to it).
        assert status == 200 and json.loads(text)["degraded"] == ["redis"]
        assert (await get(port, "/healthz"))[0] == 200
        own_redis.start()
        assert (await get(port, "/readyz"))[0] == 200


@pytest.mark.parametrize("mode", ["socket", "http"])
async def test_shutdown_closes_the_ops_server(start_bot: Any, mode: str) -> None:
    async with start_bot(slack_mode=mode, slack_signing_secret=SECRET) as bot:
        ports = [bot.ops_port] + ([bot.http_port] if mode == "http" else [])
        assert (await get(bot.ops_port, "/healthz"))[0] == 200
    for port in ports:
        with pytest.raises(aiohttp.ClientConnectionError):
            await get(port, "/healthz")


# -- malformed requests: refused before Bolt parses them, with one short log line ------------


def _with_user(user: object) -> bytes:
    payload = callback(mention_event("hi"), "Ev0MALFORMED")
    payload["event"]["user"] = user
    return json.dumps(payload).encode()


_GOOD = json.dumps(callback(mention_event("never answered"), "Ev0UNSIGNED")).encode()
_JSON = {"Content-Type": "application/json"}
_FORGED = {"X-Slack-Signature": "v0=" + "0" * 64}

# (what, body, headers: the signature headers are added unless given, expected status)
UNSIGNED: list[tuple[str, bytes, dict[str, str], int]] = [
    ("not JSON", b"not json {", _JSON, 401),
    ("a JSON list", b"[1, 2, 3]", _JSON, 401),
    ("event.user=5", _with_user(5), _JSON, 401),
    ("broken form payload", b"payload=%7Bnot-json", {}, 401),
    ("non-numeric timestamp", _GOOD, {**_JSON, "X-Slack-Request-Timestamp": "abc"}, 400),
    (
        "no signature headers",
        _GOOD,
        {**_JSON, "X-Slack-Signature": "", "X-Slack-Request-Timestamp": ""},
        400,
    ),
    ("not UTF-8", b"\xff\xfe{}", _JSON, 400),
    ("garbage signature", _GOOD, {**_JSON, "X-Slack-Signature": "v0=\u00e9t\u00e9"}, 401),
]

FORM = "application/x-www-form-urlencoded"
SIGNED_MALFORMED: list[tuple[str, bytes, str]] = [
    ("not JSON", b"not json {", "application/json"),
    ("a JSON list", b"[1, 2, 3]", "application/json"),
    ("a JSON string", b'"event"', "application/json"),
    ("JSON null", b"null", "application/json"),
    ("event.user=5", _with_user(5), "application/json"),
    ("event.user=[]", _with_user([]), "application/json"),
    (
        "event is a list",
        json.dumps({**callback(mention_event("x")), "event": [1]}).encode(),
        "application/json",
    ),
    (
        "authorizations=[5]",
        json.dumps({**callback(mention_event("x")), "authorizations": [5]}).encode(),
        "application/json",
    ),
    (
        "event_callback without event",
        b'{"type": "event_callback", "event_id": "Ev1"}',
        "application/json",
    ),
    ("broken form payload", b"payload=%7Bnot-json", FORM),
    ("form payload is a list", form([1]), FORM),
    (
        "block_actions, actions a string",
        form({**block_actions_payload("stop_reply"), "actions": "x"}),
        FORM,
    ),
    ("block_actions, team=7", form({**block_actions_payload("stop_reply"), "team": 7}), FORM),
    (
        "block_actions, action without id",
        form({**block_actions_payload("stop_reply"), "actions": [{"value": "r"}]}),
        FORM,
    ),
    (
        "assistant thread without thread_ts",
        json.dumps(
            callback({**assistant_thread_started_event(), "assistant_thread": {"channel_id": "D1"}})
        ).encode(),
        "application/json",
    ),
    ("not UTF-8", b"\xff\xfe{}", "application/json"),
    ("deep nesting", b"[" * 100_000, "application/json"),
]


def _request(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    full = {"Content-Type": FORM, "X-Slack-Request-Timestamp": str(int(time.time())), **_FORGED}
    full.update(headers)
    return body, {k: v for k, v in full.items() if v}


def _quiet(records: list[logging.LogRecord], requests: int) -> None:
    """No error, no traceback, at most one short line per refused request."""
    assert not [r for r in records if r.levelno >= logging.ERROR], [r.getMessage() for r in records]
    assert not [r for r in records if r.exc_info or r.exc_text or r.stack_info]
    refusals = [r for r in records if r.name == "bot.server"]
    assert len(refusals) <= requests
    assert all("\n" not in r.getMessage() and len(r.getMessage()) < 200 for r in refusals)


async def test_malformed_requests_are_refused_with_400_or_401_and_no_traceback(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    llm.default = echo_last_user
    async with start_bot(
        slack_mode="http", slack_signing_secret=SECRET, slack_app_token=None
    ) as bot:
        port = bot.http_port
        seen: dict[str, set[int]] = {}
        for n in range(200):
            what, body, headers, _ = UNSIGNED[n % len(UNSIGNED)]
            seen.setdefault(what, set()).add(await post_raw(port, *_request(body, headers)))
        assert seen == {what: {status} for what, _, _, status in UNSIGNED}

        for what, body, content_type in SIGNED_MALFORMED:
            assert await post_raw(port, body, signed_headers(body, content_type)) == 400, what

        good = json.dumps(callback(mention_event("still answered"), "Ev0GOOD")).encode()
        assert await post_raw(port, good, signed_headers(good)) == 200
        await answered(slack, "still answered")
    assert [m.text for m in slack.bot_messages()] == ["still answered"]
    _quiet(caplog.records, 200 + len(SIGNED_MALFORMED))
    assert "Traceback" not in caplog.text


JUNK: list[object] = [5, 1.5, True, None, "", "x", [], [1], ["a"], [{}], {}, {"id": 5}, {"a": [1]}]


def _paths(value: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*prefix, index))
    return found


def _mutated(payload: dict[str, Any], rnd: random.Random) -> dict[str, Any]:
    """``payload`` with one or two of its values (at any depth) replaced or removed."""
    payload = copy.deepcopy(payload)
    for _ in range(rnd.choice((1, 2))):
        path = rnd.choice(_paths(payload)[1:])
        parent: Any = payload
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and rnd.random() < 0.2:
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(rnd.choice(JUNK))
    return payload


async def test_signed_payloads_with_fields_of_any_type_never_raise(
    start_bot: Any, llm: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """Seeded fuzzing: every field of every kind of payload the bot handles, replaced by a value
    of another type, is answered, ignored or refused, never a 500 or a traceback."""
    caplog.set_level(logging.INFO)
    llm.default = echo_last_user
    rnd = random.Random(15)
    bases: list[tuple[str, dict[str, Any]]] = [
        ("json", callback(mention_event("hi"))),
        ("json", callback(message_event("dm", channel="D0DM", channel_type="im"))),
        ("json", callback(message_event("in thread", thread_ts="1700000000.000100"))),
        ("json", callback(assistant_thread_started_event())),
        ("json", callback(assistant_thread_context_changed_event(thread_ts="1700000000.000100"))),
        ("form", block_actions_payload("stop_reply", value="r-1")),
        ("form", block_actions_payload("reply_feedback", value="good")),
        ("json", {"type": "url_verification", "challenge": "c", "token": "t"}),
    ]
    statuses: set[int] = set()
    async with start_bot(
        slack_mode="http",
        slack_signing_secret=SECRET,
        slack_app_token=None,
        edit_budget_per_minute=100_000,
        edit_budget_burst=1000,
    ) as bot:
        for n in range(240):
            kind, base = bases[n % len(bases)]
            payload = _mutated(base, rnd)
            if "event_id" in payload:
                payload["event_id"] = f"Ev0FUZZ{n}"
            body = form(payload) if kind == "form" else json.dumps(payload).encode()
            headers = signed_headers(body, FORM if kind == "form" else "application/json")
            statuses.add(await post_raw(bot.http_port, body, headers))
    assert statuses <= {200, 400, 404}
    _quiet(caplog.records, 240)


@pytest.mark.parametrize(
    "payload",
    [
        callback(mention_event("hi", thread_ts="1700000000.000100")),
        callback(message_event("dm", channel="D0DM", channel_type="im")),
        callback(message_event("bot", bot_id="B0OTHER", subtype="bot_message")),
        callback(
            message_event(
                "",
                subtype="message_changed",
                message={"type": "message", "user": "U1", "text": "new", "ts": "1.0"},
                previous_message={"type": "message", "user": "U1", "text": "old", "ts": "1.0"},
                hidden=True,
            )
        ),
        callback(message_event("file", subtype="file_share", files=[{"id": "F1", "name": "a"}])),
        callback(assistant_thread_started_event()),
        callback(assistant_thread_context_changed_event(thread_ts="1700000000.000100")),
        callback({"type": "channel_created", "channel": {"id": "C9", "name": "new"}}),
        callback({"type": "user_change", "user": {"id": "U9", "name": "x"}}),
        callback({"type": "reaction_added", "user": "U1", "item": {"channel": "C1", "ts": "1.0"}}),
        {**callback(mention_event("x")), "is_ext_shared_channel": True, "enterprise_id": None},
        block_actions_payload("stop_reply", value="r-1"),
        {**block_actions_payload("reply_feedback", value="good"), "enterprise": None},
        {"type": "url_verification", "challenge": "c", "token": "t"},
        {"ssl_check": "1", "token": "t"},
    ],
)
def test_payloads_as_slack_sends_them_pass_the_shape_check(payload: dict[str, Any]) -> None:
    assert _shape_problem(payload) is None
