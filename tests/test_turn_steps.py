"""The turn's steps driven alone (bot/turn/): intake decides once per message and tells a person
over a limit once; the answer step runs a tool round against a fake model and ends a reply —
each with real Redis, the fake Slack and the fake model, without the Bolt app around them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.conversation import ThreadKey, Turn
from bot.events import Inbound
from bot.llm import ChatModel, connect_openai
from bot.metrics import Metrics
from bot.policy import Policy, Profile
from bot.recall import READ_METHOD, Recall
from bot.render.budget import EditBudget
from bot.render.contract import Outcome
from bot.render.factory import EditOptions, Replies
from bot.slack import SlackGateway, connect_slack
from bot.stops import StopSignals
from bot.store import Store, connect_redis
from bot.tools.calls import ToolResult, ToolSpec
from bot.tools.config import Toolset
from bot.turn import HELP_TEXT, RATE_TEXT, Accepted, Context, Intake, Limits, Responder
from tests.fakes.openai import Answer, Call, FakeOpenAI
from tests.fakes.slack import FakeSlack, new_ts
from tests.views import bot_replies

TEAM, CHANNEL = "T0001", "C0CHAN"
PROFILE = Profile("Be brief.", "m", None)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    store = Store.open(connect_redis(redis_url))
    yield store
    await store.aclose()


@pytest.fixture
async def gateway(slack: FakeSlack) -> AsyncIterator[SlackGateway]:
    async with aiohttp.ClientSession() as session:
        yield SlackGateway(connect_slack(slack.bot_token, slack.api_url, session))


def mention(text: str, thread_ts: str | None = None) -> Inbound:
    return Inbound(
        team=TEAM,
        channel=CHANNEL,
        channel_type="channel",
        user="U0USER",
        text=text,
        ts=new_ts(),
        thread_ts=thread_ts,
        event_id=f"Ev{new_ts()}",
        mentioned=True,
        bot_user_id="U0BOT",
    )


def intake(gateway: SlackGateway, store: Store, limits: Limits | None = None) -> Intake:
    reads = EditBudget(store.budgets, method=READ_METHOD, per_minute=40, burst=5, min_interval=0)
    return Intake(
        slack=gateway,
        store=store,
        recall=Recall(gateway, store.history, reads, limit=100),
        policy=Policy(default=PROFILE),
        limits=limits or Limits(),
        metrics=Metrics(),
    )


async def test_intake_accepts_a_message_once_and_answers_an_empty_mention_with_help(
    slack: FakeSlack, gateway: SlackGateway, store: Store
) -> None:
    step = intake(gateway, store)
    question = mention("what is new?")
    accepted = await step.accept(question)
    assert accepted is not None
    assert accepted.key == ThreadKey(TEAM, CHANNEL, question.ts)
    assert accepted.reply_thread == question.ts and accepted.profile == PROFILE
    # The same message again (a retry, or its app_mention twin): not answered twice.
    assert await step.accept(dataclasses.replace(question, event_id="EvOther")) is None

    empty = mention("")
    assert await step.accept(empty) is None
    (note,) = bot_replies(slack, CHANNEL, empty.ts)
    assert note.text == HELP_TEXT


async def test_intake_tells_a_person_over_the_rate_limit_once(
    slack: FakeSlack, gateway: SlackGateway, store: Store
) -> None:
    step = intake(gateway, store, Limits(user_requests=1, user_window_s=60))
    first, second, third = mention("one"), mention("two"), mention("three")
    assert await step.accept(first) is not None
    assert await step.accept(second) is None
    assert await step.accept(third) is None
    (note,) = bot_replies(slack, CHANNEL, second.ts)
    assert note.text.startswith(RATE_TEXT.split("{")[0])
    assert not bot_replies(slack, CHANNEL, third.ts)  # told once per window, then silence


class Calculator:
    """A tool source that is not MCP: the answer step only needs the ``Tools`` protocol."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def specs(self, toolset: Toolset = Toolset()) -> tuple[ToolSpec, ...]:  # noqa: B008
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
        return (ToolSpec("calc__double", "Double a number.", schema, "calc", "double", False),)

    def needs_approval(self, name: str) -> bool:
        return False

    def summary(self, name: str, arguments_json: str) -> str:
        return f"calc.double{arguments_json}"

    def approval_text(self, name: str, arguments_json: str) -> str:
        return f"calc.double{arguments_json}"

    async def call(
        self,
        name: str,
        arguments_json: str,
        *,
        toolset: Toolset = Toolset(),  # noqa: B008
        approved: bool = False,
    ) -> ToolResult:
        self.calls.append(arguments_json)
        return ToolResult("42", "ok", self.summary(name, arguments_json))


async def test_the_answer_step_runs_a_tool_round_and_ends_the_reply(
    slack: FakeSlack, llm: FakeOpenAI, gateway: SlackGateway, store: Store
) -> None:
    llm.script(
        Answer(text="Doubling.", tool_calls=[Call("calc__double", {"a": 21})]),
        Answer(text="That is 42."),
    )
    client = connect_openai("sk-test", llm.base_url)
    tools = Calculator()
    responder = Responder(
        model=ChatModel(client, model="m"),
        store=store,
        stops=StopSignals(store.stops, gateway),
        metrics=Metrics(),
        max_answer_chars=10_000,
        tools=tools,
    )
    replies = Replies(
        gateway,
        EditBudget(store.budgets, per_minute=45, burst=3, min_interval=0.1),
        edits=EditOptions(limit=2900),
    )
    question = mention("double 21")
    accepted = Accepted(question, question.key, question.ts, PROFILE)
    turn = Turn("user", "double 21", author="U0USER", ts=question.ts)
    context = Context([], turn, [{"role": "user", "content": "double 21"}])
    reply = replies.new(team=TEAM, channel=CHANNEL, thread_ts=question.ts, asker="U0USER")
    try:
        async with reply:
            answered = await responder.respond(accepted, context, reply)
            finished = await reply.finish(answered.outcome)
    finally:
        await client.close()

    assert [json.loads(arguments) for arguments in tools.calls] == [{"a": 21}]
    assert answered.outcome is Outcome.COMPLETE
    assert [(use.summary, use.result) for use in answered.tools] == [
        (tools.summary("calc__double", tools.calls[0]), "42")
    ]
    assert finished.text == "Doubling.\n\nThat is 42."
    (message,) = bot_replies(slack, CHANNEL, question.ts)
    assert message.text == finished.text and finished.message_ts == (message.ts,)
    assert llm.requests[1].tool_results[0][1] == "42"
