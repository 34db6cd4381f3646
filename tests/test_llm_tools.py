"""Tool calls at the model boundary, in both APIs, against the fake model through the real SDK:
calls assembled from streamed fragments, the round trip the next request carries, a server
that refuses tools, a stream broken among the calls, and the early signal of a call's name."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import pytest
from aiohttp import web

from bot.errors import ModelInterrupted, ModelUnavailable
from bot.llm import AnswerStream, ChatModel, ToolCall, ToolSpec, connect_openai
from tests.fakes.openai import TOOL_REFUSALS, Answer, Call, FakeOpenAI

Api = Literal["chat", "responses"]
APIS: list[Api] = ["chat", "responses"]
PROMPT = [{"role": "user", "content": "What is 2 + 3? Say hi too."}]
ECHO = ToolSpec(
    "echo",
    "Repeat a text.",
    {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
)
ADD = ToolSpec(
    "add",
    "Add two numbers.",
    {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}},
)
TOOLS = [ECHO, ADD]


@asynccontextmanager
async def chat_model(llm: FakeOpenAI, api: Api, retries: bool = True) -> AsyncIterator[ChatModel]:
    client = connect_openai(llm.api_key, llm.base_url)
    try:
        # llama.cpp refuses with a 500, which the SDK would retry twice, ~1 s apart.
        yield ChatModel(
            client if retries else client.with_options(max_retries=0),
            model="m",
            idle_timeout=10,
            api=api,
        )
    finally:
        await client.close()


async def ask(
    model: ChatModel, messages: list[dict[str, Any]], **options: Any
) -> tuple[str, AnswerStream]:
    async with model.stream(messages, tools=TOOLS, **options) as answer:
        text = "".join([delta async for delta in answer])
    return text, answer


# -- one round ------------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
async def test_one_call_is_assembled_from_its_streamed_fragments(llm: FakeOpenAI, api: Api) -> None:
    llm.script(Answer(tool_calls=[Call("echo", {"text": "hi there, friend"})]))
    async with chat_model(llm, api) as model:
        text, answer = await ask(model, PROMPT)

    assert text == ""
    assert answer.finish_reason == "tool_calls"
    (call,) = answer.tool_calls
    assert call.name == "echo"
    assert json.loads(call.arguments) == {"text": "hi there, friend"}
    assert call.call_id.startswith("call_")
    assert (call.item_id or "").startswith("fc_") if api == "responses" else call.item_id is None
    assert len(Answer().argument_pieces(Call("echo", {"text": "hi there, friend"}))) > 1
    assert answer.usage is not None and answer.usage["completion_tokens"] > 0
    (request,) = llm.requests
    assert request.tool_names == ["echo", "add"]
    assert "parallel_tool_calls" not in request.body and "tool_choice" not in request.body
    if api == "chat":
        assert request.tools[0] == {
            "type": "function",
            "function": {
                "name": "echo",
                "description": "Repeat a text.",
                "parameters": dict(ECHO.parameters),
            },
        }
    else:
        assert request.tools[0] == {
            "type": "function",
            "name": "echo",
            "description": "Repeat a text.",
            "parameters": dict(ECHO.parameters),
            "strict": False,
        }


@pytest.mark.parametrize("api", APIS)
async def test_two_parallel_calls_keep_their_order_and_their_own_arguments(
    llm: FakeOpenAI, api: Api
) -> None:
    llm.script(Answer(tool_calls=[Call("echo", {"text": "hi"}), Call("add", {"a": 2, "b": 3})]))
    async with chat_model(llm, api) as model:
        _, answer = await ask(model, PROMPT)

    assert answer.finish_reason == "tool_calls"
    assert [(c.name, json.loads(c.arguments)) for c in answer.tool_calls] == [
        ("echo", {"text": "hi"}),
        ("add", {"a": 2, "b": 3}),
    ]
    assert len({c.call_id for c in answer.tool_calls}) == 2


@pytest.mark.parametrize("api", APIS)
async def test_text_before_the_calls_streams_as_text(llm: FakeOpenAI, api: Api) -> None:
    llm.script(Answer(text="Let me look that up.", tool_calls=[Call("echo", {"text": "hi"})]))
    async with chat_model(llm, api) as model:
        text, answer = await ask(model, PROMPT)

    assert text == "Let me look that up."
    assert answer.finish_reason == "tool_calls"
    assert [c.name for c in answer.tool_calls] == ["echo"]


@pytest.mark.parametrize("api", APIS)
async def test_a_text_answer_offered_tools_ends_as_before(llm: FakeOpenAI, api: Api) -> None:
    llm.script(Answer(text="Five. Hi!"))
    async with chat_model(llm, api) as model:
        text, answer = await ask(model, PROMPT)

    assert (text, answer.finish_reason, answer.tool_calls) == ("Five. Hi!", "stop", [])
    assert not answer.tools_dropped


# -- the round trip -------------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS)
async def test_the_next_round_carries_the_calls_and_their_results_to_the_model(
    llm: FakeOpenAI, api: Api
) -> None:
    llm.script(
        Answer(
            text="Let me look.",
            tool_calls=[Call("echo", {"text": "hi"}), Call("add", {"a": 2, "b": "x"})],
        ),
        Answer(text="Hi! The sum failed."),
    )
    async with chat_model(llm, api) as model:
        text, first = await ask(model, PROMPT)
        calls = first.tool_calls
        results = [("hi", False), ("b is not a number", True)]
        messages = PROMPT + model.tool_round(text, calls, results)
        final, second = await ask(model, messages)

    assert final == "Hi! The sum failed."
    assert second.finish_reason == "stop"
    request = llm.requests[1]
    assert request.answer is not None  # accepted: the fake answered it
    assert request.tool_results == [
        (calls[0].call_id, "hi"),
        (calls[1].call_id, "Error: b is not a number"),
    ]
    assert request.tool_calls == [(c.call_id, c.name, c.arguments) for c in calls]
    assert request.messages[1] == {
        "role": "assistant",
        "content": "Let me look.",
        **({"tool_calls": request.body["messages"][1]["tool_calls"]} if api == "chat" else {}),
    }
    # Every round's tokens are counted: the second prompt carries the first round.
    assert first.usage is not None and second.usage is not None
    assert second.usage["prompt_tokens"] > first.usage["prompt_tokens"]


@pytest.mark.parametrize("api", APIS)
async def test_a_round_trip_that_loses_a_result_is_refused_and_tools_stay_on(
    llm: FakeOpenAI, api: Api
) -> None:
    # Without the fake's check of the history, the round trip test above could not fail.
    llm.script(Answer(tool_calls=[Call("echo", {"text": "hi"}), Call("add", {"a": 1})]))
    async with chat_model(llm, api) as model:
        text, first = await ask(model, PROMPT)
        round_trip = model.tool_round(text, first.tool_calls, [("hi", False), ("3", False)])
        with pytest.raises(ModelUnavailable, match="HTTP 400"):
            await ask(model, PROMPT + round_trip[:-1])
        assert model.takes_tools()
    assert len(llm.requests) == 2 and llm.requests[1].answer is None


def test_tool_round_shapes_per_api() -> None:
    calls = [ToolCall("call_1", "echo", '{"text":"hi"}', "fc_1")]
    client = connect_openai("sk-test", "http://127.0.0.1:9/v1")
    chat = ChatModel(client, model="m")
    responses = ChatModel(client, model="m", api="responses")

    assert chat.tool_round("", calls, [("", True)]) == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "echo", "arguments": '{"text":"hi"}'},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_1",
            "content": "Error: the tool failed without a message.",
        },
    ]
    assert responses.tool_round("Looking.", calls, [("hi", False)]) == [
        {"role": "assistant", "content": "Looking."},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "echo",
            "arguments": '{"text":"hi"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "hi"},
    ]
    with pytest.raises(ValueError):
        chat.tool_round("", calls, [])


# -- servers without tools ------------------------------------------------------------------


@pytest.mark.parametrize("style", sorted(TOOL_REFUSALS))
@pytest.mark.parametrize("api", APIS)
async def test_a_server_that_refuses_tools_is_asked_again_without_them_and_remembered(
    llm: FakeOpenAI, api: Api, style: Any
) -> None:
    llm.refuse_tools = style
    llm.script(Answer(text="Five."), Answer(text="Hi."))
    async with chat_model(llm, api, retries=False) as model:
        first_text, first = await ask(model, PROMPT)
        second_text, second = await ask(model, PROMPT)
        assert not model.takes_tools("m")
        assert model.takes_tools("another-model")

    assert (first_text, second_text) == ("Five.", "Hi.")
    assert first.tools_dropped and second.tools_dropped
    assert first.finish_reason == second.finish_reason == "stop"
    refused, retried, later = llm.requests
    assert refused.tools and refused.answer is None
    assert not retried.tools and retried.messages == refused.messages
    assert not later.tools  # remembered: not offered again


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (404, "Unrecognized request argument supplied: tools"),  # Azure OpenAI
        (
            404,
            "No endpoints found that support tool use. To learn more about provider routing, "
            "visit: https://openrouter.ai/docs/provider-routing",
        ),  # OpenRouter
        (400, "Unsupported parameter: 'tools' is not supported with this model."),  # OpenAI o1
        (500, "Unsupported param: tools"),  # llama.cpp before --jinja existed
        (500, "Cannot use tools with stream"),  # llama.cpp before streamed tool calls
        (400, "Model does not support tools."),
    ],
)
async def test_other_wordings_of_a_refusal_of_tools_are_recognised(
    llm: FakeOpenAI, status: int, message: str
) -> None:
    llm.script(Answer(status=status, error_message=message), Answer(text="Five."))
    async with chat_model(llm, "chat", retries=False) as model:
        text, answer = await ask(model, PROMPT)
    assert (text, answer.tools_dropped) == ("Five.", True)
    refused, retried = llm.requests
    assert refused.tools and not retried.tools


@pytest.mark.parametrize(
    "message",
    [
        # OpenAI's context overflow mentions functions; retrying without tools would hide it.
        "This model's maximum context length is 8192 tokens. However, your messages resulted "
        "in 9000 tokens (8000 in the messages, 1000 in the functions). Please reduce the length.",
        "Invalid schema for function 'echo': 'strnig' is not valid under any of the given schemas.",
        "No tool output found for function call call_abc.",
    ],
)
async def test_an_unrelated_400_is_not_taken_for_a_refusal_of_tools(
    llm: FakeOpenAI, message: str
) -> None:
    llm.script(Answer(status=400, error_message=message))
    async with chat_model(llm, "chat") as model:
        with pytest.raises(ModelUnavailable, match="HTTP 400"):
            await ask(model, PROMPT)
        assert model.takes_tools()
    (request,) = llm.requests
    assert request.tools


# -- broken streams and the early signal ----------------------------------------------------


@pytest.mark.parametrize("fault", ["disconnect_after", "truncate_after", "error_after"])
@pytest.mark.parametrize("api", APIS)
async def test_a_stream_broken_among_the_call_fragments_is_interrupted(
    llm: FakeOpenAI, api: Api, fault: str
) -> None:
    # Chunks: "Let " "me l" "ook." | echo's id and name | '{"te' 'xt":' ... — cut in the args.
    calls = [Call("echo", {"text": "a longer text"}), Call("add", {"a": 1})]
    after_text: dict[str, Any] = {fault: 5}
    after_name: dict[str, Any] = {fault: 2}
    llm.script(
        Answer(text="Let me look.", tool_calls=calls, **after_text),
        Answer(tool_calls=calls, **after_name),
    )
    async with chat_model(llm, api) as model:
        shown: list[str] = []
        with pytest.raises(ModelInterrupted):
            async with model.stream(PROMPT, tools=TOOLS) as answer:
                async for delta in answer:
                    shown.append(delta)
        assert "".join(shown) == "Let me look."
        # Only calls, no text yet: still "interrupted", a pending step may be on screen.
        with pytest.raises(ModelInterrupted) as caught:
            await ask(model, PROMPT)
    assert not isinstance(caught.value, ModelUnavailable)
    assert answer.finish_reason is None


@pytest.mark.parametrize("api", APIS)
async def test_on_tool_call_fires_with_the_name_before_the_arguments_arrive(
    llm: FakeOpenAI, api: Api
) -> None:
    # The stream stalls inside echo's arguments: its name must already have been signalled.
    llm.script(
        Answer(tool_calls=[Call("echo", {"text": "x" * 40}), Call("add", {})], stall_after=2)
    )
    seen: list[tuple[str, int]] = []
    named = asyncio.Event()

    def on_tool_call(name: str, index: int) -> None:
        seen.append((name, index))
        named.set()

    async with chat_model(llm, api) as model:
        reading = asyncio.create_task(ask(model, PROMPT, on_tool_call=on_tool_call))
        async with asyncio.timeout(5):
            await named.wait()
        assert not reading.done()
        reading.cancel()
        await asyncio.wait([reading])
        request = llm.requests[0]
        async with asyncio.timeout(5):
            await request.finished.wait()

    assert seen == [("echo", 0)]
    assert request.outcome == "client_gone"


@pytest.mark.parametrize("api", APIS)
async def test_on_tool_call_set_on_the_answer_hears_every_call_in_order(
    llm: FakeOpenAI, api: Api
) -> None:
    llm.script(Answer(tool_calls=[Call("echo", {"text": "hi"}), Call("add", {"a": 1})]))
    seen: list[tuple[str, int, int]] = []  # (name, index, calls begun when it was heard)
    async with chat_model(llm, api) as model:
        answer = model.stream(PROMPT, tools=TOOLS)
        answer.on_tool_call = lambda name, index: seen.append((name, index, len(answer._calls)))
        async with answer:
            async for _ in answer:
                pass
    assert seen == [("echo", 0, 1), ("add", 1, 2)]


async def test_a_failing_on_tool_call_does_not_end_the_answer(llm: FakeOpenAI) -> None:
    llm.script(Answer(tool_calls=[Call("echo", {"text": "hi"})]))

    def broken(name: str, index: int) -> None:
        raise ValueError("a bug in the screen code")

    async with chat_model(llm, "chat") as model:
        _, answer = await ask(model, PROMPT, on_tool_call=broken)
    assert [c.name for c in answer.tool_calls] == ["echo"]


# -- servers that stream calls their own way -----------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serving(path: str, events: list[dict[str, Any]]) -> AsyncIterator[str]:
    """A server answering ``POST path`` with ``events`` as SSE; yields its base URL."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in events:
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        if path.endswith("/chat/completions"):
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post(path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    finally:
        await runner.cleanup()


async def test_whole_calls_without_index_or_id_and_a_stop_finish_are_read(
    llm: FakeOpenAI,
) -> None:
    # Ollama-like: each call whole in one chunk, no index, arguments as an object, and
    # finish_reason "stop"; one call comes without an id.
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events = [
        chunk({"role": "assistant", "content": ""}),
        chunk(
            {
                "tool_calls": [
                    {"id": "call_a", "function": {"name": "echo", "arguments": {"text": "hi"}}}
                ]
            }
        ),
        chunk({"tool_calls": [{"function": {"name": "add", "arguments": '{"a":1}'}}]}),
        chunk({}, "stop"),
    ]
    async with serving("/v1/chat/completions", events) as url:
        client = connect_openai("sk-test", url)
        try:
            _, answer = await ask(ChatModel(client, model="m"), PROMPT)
        finally:
            await client.close()

    assert answer.finish_reason == "tool_calls"
    echo, add = answer.tool_calls
    assert (echo.call_id, echo.name, json.loads(echo.arguments)) == (
        "call_a",
        "echo",
        {"text": "hi"},
    )
    assert (add.name, add.arguments) == ("add", '{"a":1}')
    assert add.call_id.startswith("call_") and answer.tool_calls[1].call_id == add.call_id


async def test_calls_reported_only_in_the_completed_response_are_read(llm: FakeOpenAI) -> None:
    item = {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "echo",
        "arguments": '{"text":"hi"}',
        "status": "completed",
    }
    events = [{"type": "response.completed", "response": {"output": [item], "usage": None}}]
    heard: list[tuple[str, int]] = []
    async with serving("/v1/responses", events) as url:
        client = connect_openai("sk-test", url)
        try:
            model = ChatModel(client, model="m", api="responses")
            _, answer = await ask(model, PROMPT, on_tool_call=lambda *a: heard.append(a))
        finally:
            await client.close()

    assert answer.finish_reason == "tool_calls"
    assert answer.tool_calls == [ToolCall("call_1", "echo", '{"text":"hi"}', "fc_1")]
    assert heard == [("echo", 0)]


def test_arguments_that_are_not_a_json_object_are_repeated_as_an_empty_object() -> None:
    # vLLM and llama.cpp refuse a history whose call arguments are not JSON: the next round
    # would fail although the model was only told its call was malformed.
    client = connect_openai("sk-test", "http://127.0.0.1:9/v1")
    for api in ("chat", "responses"):
        model = ChatModel(client, model="m", api=api)  # type: ignore[arg-type]
        for sent, repeated in (
            ('{"a": 2, "b": ', "{}"),
            ("[1, 2]", "{}"),
            ('{"a": 2}', '{"a": 2}'),
        ):
            calls = [ToolCall("call_1", "add", sent)]
            first = model.tool_round("", calls, [("bad arguments", True)])[0]
            shown = first["tool_calls"][0]["function"] if api == "chat" else first
            assert shown["arguments"] == repeated
