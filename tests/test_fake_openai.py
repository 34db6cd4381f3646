"""The fake OpenAI server, exercised through the real ``AsyncOpenAI`` client.

These tests pin down what the SDK (openai 3.x on httpx2) does with each scripted behaviour, so
the model boundary can map exactly those exceptions.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pytest
from openai import AsyncOpenAI

from tests.fakes.openai import Answer, Call, FakeOpenAI, echo_last_user

MESSAGES: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hello"},
]


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx2 honours proxy variables and the SDK reads OPENAI_*: neither may leak in.
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def client(llm: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    sdk = AsyncOpenAI(base_url=llm.base_url, api_key="sk-test", max_retries=0)
    yield sdk
    await sdk.close()


async def stream_chat(client: AsyncOpenAI, **kwargs: Any) -> list[Any]:
    stream = await client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, **kwargs
    )
    async with stream:
        return [chunk async for chunk in stream]


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finish_reasons(chunks: list[Any]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


async def raw_lines(client: AsyncOpenAI, **kwargs: Any) -> list[str]:
    async with client.chat.completions.with_streaming_response.create(
        model="gpt-test", messages=MESSAGES, stream=True, **kwargs
    ) as response:
        return [line async for line in response.iter_lines()]


async def stream_response(client: AsyncOpenAI) -> list[Any]:
    stream = await client.responses.create(model="gpt-test", input="Say hello", stream=True)
    async with stream:
        return [event async for event in stream]


# -- chat completions: the happy path ----------------------------------------------------------


async def test_default_answer_streams_text_then_finish_reason(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    chunks = await stream_chat(client)

    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert text_of(chunks) == "Hello from the fake model."
    assert [c.choices[0].delta.content for c in chunks[1:3]] == ["Hell", "o fr"]
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.object == "chat.completion.chunk" and c.model == "gpt-test" for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert llm.requests[0].outcome == "done"


async def test_scripted_answers_are_used_in_order_then_the_default(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(chunks=["one ", "two"]), Answer(text="abcdefg", chunk_size=3))

    first = await stream_chat(client)
    second = await stream_chat(client)
    third = await stream_chat(client)

    assert [c.choices[0].delta.content for c in first[1:-1]] == ["one ", "two"]
    assert [c.choices[0].delta.content for c in second[1:-1]] == ["abc", "def", "g"]
    assert text_of(third) == "Hello from the fake model."
    assert llm.pending_answers == 0


async def test_finish_reason_and_model_are_scriptable(llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    llm.script(Answer(text="cut", finish_reason="length", model="gpt-real-name"))

    chunks = await stream_chat(client)

    assert finish_reasons(chunks) == ["length"]
    assert chunks[0].model == "gpt-real-name"


async def test_usage_chunk_is_sent_only_when_include_usage_is_requested(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    without = await stream_chat(client)
    with_usage = await stream_chat(client, stream_options={"include_usage": True})
    llm.script(
        Answer(text="x", usage={"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8})
    )
    scripted = await stream_chat(client, stream_options={"include_usage": True})

    assert all(c.usage is None and c.choices for c in without)
    last = with_usage[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens > 0 and last.usage.prompt_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert finish_reasons(with_usage) == ["stop"]
    assert all(c.usage is None for c in with_usage[:-1])
    assert scripted[-1].usage is not None
    assert scripted[-1].usage.model_dump(include={"prompt_tokens", "total_tokens"}) == {
        "prompt_tokens": 7,
        "total_tokens": 8,
    }


async def test_non_streaming_request_returns_a_whole_completion(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(text="All at once."))

    completion = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)

    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "All at once."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert llm.requests[0].body.get("stream") is None


async def test_models_endpoint_lists_a_model(client: AsyncOpenAI) -> None:
    models = [model.id async for model in client.models.list()]

    assert models == ["fake-model"]


# -- recording ---------------------------------------------------------------------------------


async def test_requests_are_recorded_with_body_headers_and_time() -> None:
    ticks = iter(range(100, 200))
    async with FakeOpenAI(clock=lambda: float(next(ticks))) as llm:
        sdk = AsyncOpenAI(base_url=llm.base_url, api_key="sk-test", max_retries=0)
        llm.script(Answer(chunks=["ab", "cde"]))
        await stream_chat(sdk, temperature=0.2)
        await sdk.close()

    [request] = llm.requests
    assert request.path == "/v1/chat/completions"
    assert request.body["temperature"] == 0.2
    assert request.body["stream"] is True
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.at == 100.0
    assert llm.emitted == [[(101.0, 2), (102.0, 5)]]
    assert llm.last_messages() == MESSAGES
    assert llm.bodies == [request.body]
    assert request.request_id.startswith("req_")


async def test_a_responder_can_answer_from_the_prompt(llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    llm.default = echo_last_user

    chunks = await stream_chat(client)

    assert text_of(chunks) == "Say hello"


async def test_wait_requests_returns_once_enough_requests_arrived(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(text="slow", ttft=0.2))
    task = asyncio.create_task(stream_chat(client))

    async with asyncio.timeout(5):
        [request] = await llm.wait_requests(1)
    assert request.outcome == "open"
    assert text_of(await task) == "slow"


async def test_ttft_and_pace_are_respected_and_timed(llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    llm.script(Answer(chunks=["a", "bb", "ccc", "d"], ttft=0.1, tokens_per_second=50))

    started = time.monotonic()
    await stream_chat(client)

    [emitted] = llm.emitted
    assert [characters for _, characters in emitted] == [1, 3, 6, 7]
    assert emitted[0][0] - llm.requests[0].at >= 0.099
    assert emitted[-1][0] - emitted[0][0] >= 3 * 0.02 - 0.002
    assert time.monotonic() - started >= 0.155


async def test_many_concurrent_streams_all_complete(llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    llm.default = echo_last_user

    async def one(index: int) -> str:
        stream = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": f"n{index} " * 10}], stream=True
        )
        async with stream:
            return "".join([c.choices[0].delta.content or "" async for c in stream])

    answers = await asyncio.gather(*(one(i) for i in range(300)))

    assert answers == [f"n{i} " * 10 for i in range(300)]
    assert len(llm.requests) == 300
    assert {r.outcome for r in llm.requests} == {"done"}


async def test_closing_a_stream_early_is_seen_by_the_fake(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(text="x" * 400, chunk_size=1, token_delay=0.01))

    stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    async with stream:
        async for chunk in stream:
            if chunk.choices[0].delta.content:
                break

    request = llm.requests[0]
    async with asyncio.timeout(5):
        await request.finished.wait()
    assert request.outcome == "client_gone"
    assert len(request.emitted) < 400


# -- chat completions: failures through the typed stream --------------------------------------


async def test_wrong_api_key_raises_authentication_error(llm: FakeOpenAI) -> None:
    sdk = AsyncOpenAI(base_url=llm.base_url, api_key="sk-wrong", max_retries=0)
    try:
        with pytest.raises(openai.AuthenticationError) as caught:
            await sdk.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    finally:
        await sdk.close()

    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert llm.requests[0].headers["authorization"] == "Bearer sk-wrong"
    assert llm.requests[0].answer is None


async def test_429_raises_rate_limit_error_with_retry_after(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(status=429, retry_after=2))

    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)

    error = caught.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "2"
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    assert error.request_id == llm.requests[0].request_id
    assert len(llm.requests) == 1  # max_retries=0: no retry


async def test_500_raises_internal_server_error(llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    llm.script(Answer(status=500, error_message="boom"))

    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)

    assert caught.value.status_code == 500
    assert caught.value.message == "Error code: 500 - boom"
    assert caught.value.type == "server_error"


async def test_error_event_mid_stream_raises_plain_api_error(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(text="abcdefgh", error_after=1, error_code="server_error"))
    received: list[str] = []

    stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError) as caught:
        async with stream:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")

    error = caught.value
    assert type(error) is openai.APIError  # neither a status nor a connection error
    assert error.message.startswith("The server had an error")
    assert error.code == "server_error"
    assert error.type == "server_error"
    assert received == ["", "abcd"]


async def test_disconnect_raises_api_connection_error_from_remote_protocol_error(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(text="abcdefgh", disconnect_after=1))
    received: list[str] = []

    stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIConnectionError) as caught:
        async with stream:
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")

    assert type(caught.value) is openai.APIConnectionError
    assert isinstance(caught.value.__cause__, httpx2.RemoteProtocolError)
    assert received == ["", "abcd"]


async def test_reset_raises_api_connection_error_from_read_error(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(text="abcdefgh", disconnect_after=1, reset=True))

    with pytest.raises(openai.APIConnectionError) as caught:
        await stream_chat(client)

    assert isinstance(caught.value.__cause__, httpx2.ReadError)


async def test_truncated_stream_ends_without_finish_reason_or_exception(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(
        Answer(text="abcdefgh", truncate_after=1),
        Answer(text="abcdefgh", truncate_after=1, done_after_truncate=False),
    )

    with_done = await stream_chat(client)
    without_done = await stream_chat(client)

    for chunks in (with_done, without_done):
        assert text_of(chunks) == "abcd"
        assert finish_reasons(chunks) == []


async def test_stall_is_caught_by_a_client_deadline_and_the_fake_sees_the_hangup(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(text="abcdefgh", stall_after=1))
    received: list[str] = []

    stream = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
    with pytest.raises(TimeoutError):
        async with stream, asyncio.timeout(0.3):
            async for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")

    assert received == ["", "abcd"]
    request = llm.requests[0]
    async with asyncio.timeout(5):
        await request.finished.wait()
    assert request.outcome == "client_gone"


async def test_stall_trips_the_sdk_read_timeout_as_api_timeout_error(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(text="abcdefgh", stall_after=1))

    with pytest.raises(openai.APITimeoutError) as caught:
        await stream_chat(client.with_options(timeout=0.3))

    assert isinstance(caught.value.__cause__, httpx2.ReadTimeout)


async def test_stopping_the_fake_releases_a_stalled_stream_quickly() -> None:
    async with FakeOpenAI() as fake:
        sdk = AsyncOpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
        fake.script(Answer(text="abcdefgh", stall_after=1))
        stream = await sdk.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        first = await anext(stream)
        started = time.monotonic()
        await fake.stop()
        stop_took = time.monotonic() - started
        with pytest.raises(openai.APIConnectionError):
            async with asyncio.timeout(5):
                async for _ in stream:
                    pass
        await sdk.close()

    assert first.choices[0].delta.role == "assistant"
    assert stop_took < 0.4
    assert fake.requests[0].outcome == "stopped"


async def test_corrupt_chunk_raises_json_decode_error(llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    llm.script(Answer(text="abcdefgh", corrupt_after=1))

    with pytest.raises(json.JSONDecodeError):
        await stream_chat(client)


# -- chat completions: raw lines through with_streaming_response -------------------------------


async def test_raw_lines_carry_the_same_stream(llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    llm.script(Answer(text="Hello there"))

    lines = await raw_lines(client, stream_options={"include_usage": True})

    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    assert all(line in ("",) or line.startswith("data: ") for line in lines)
    chunks = [json.loads(item) for item in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello there"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


async def test_raw_lines_pass_error_events_and_corrupt_lines_through(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(
        Answer(text="abcdefgh", error_after=1),
        Answer(text="abcdefgh", corrupt_after=1),
        Answer(text="abcdefgh", truncate_after=1, done_after_truncate=False),
    )

    errored = await raw_lines(client)
    corrupt = await raw_lines(client)
    truncated = await raw_lines(client)

    assert json.loads(errored[-2].removeprefix("data: "))["error"]["type"] == "server_error"
    assert "[DONE]" not in "".join(errored)
    broken = [line for line in corrupt if line.startswith("data: {") and not line.endswith("}")]
    assert len(broken) == 1
    assert corrupt[-2] == "data: [DONE]"
    assert "[DONE]" not in "".join(truncated)
    assert 'finish_reason":"stop' not in "".join(truncated)


async def test_raw_lines_raise_httpx2_errors_on_disconnect(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(
        Answer(text="abcdefgh", disconnect_after=1),
        Answer(text="abcdefgh", disconnect_after=1, reset=True),
    )

    with pytest.raises(httpx2.RemoteProtocolError):
        await raw_lines(client)
    with pytest.raises(httpx2.ReadError):
        await raw_lines(client)


async def test_raw_lines_raise_status_errors_on_entering(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(status=429), Answer(status=503))

    with pytest.raises(openai.RateLimitError):
        await raw_lines(client)
    with pytest.raises(openai.InternalServerError):
        await raw_lines(client)


async def test_raw_lines_stall_is_caught_by_a_client_deadline(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(text="abcdefgh", stall_after=1))

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await raw_lines(client)

    async with asyncio.timeout(5):
        await llm.requests[0].finished.wait()
    assert llm.requests[0].outcome == "client_gone"


async def test_raw_lines_stall_trips_the_read_timeout_as_httpx2_read_timeout(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(text="abcdefgh", stall_after=1))

    with pytest.raises(httpx2.ReadTimeout):
        await raw_lines(client.with_options(timeout=0.3))


# -- responses API -----------------------------------------------------------------------------


async def test_responses_stream_text_and_usage(llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    llm.script(Answer(text="Hello there"))

    events = await stream_response(client)

    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "Hello there"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == "Hello there"
    completed = events[-1].response
    assert completed.status == "completed"
    assert completed.output_text == "Hello there"
    assert completed.usage is not None
    assert completed.usage.output_tokens == 3
    assert completed.usage.total_tokens == completed.usage.input_tokens + 3
    assert llm.last_messages() == [{"role": "user", "content": "Say hello"}]


async def test_responses_non_streaming(llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    llm.script(Answer(text="Whole"))

    response = await client.responses.create(model="gpt-test", input="Say hello")

    assert response.output_text == "Whole"
    assert response.usage is not None and response.usage.output_tokens == 2


async def test_responses_length_finish_becomes_incomplete(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(text="Hello there", finish_reason="length"))

    events = await stream_response(client)

    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details is not None
    assert last.response.incomplete_details.reason == "max_output_tokens"


async def test_responses_error_after_yields_failed_or_error_events(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(
        Answer(text="abcdefgh", error_after=1),
        Answer(text="abcdefgh", error_after=1, error_event="error", error_code="server_error"),
    )

    failed = await stream_response(client)
    errored = await stream_response(client)

    assert failed[-1].type == "response.failed"
    assert failed[-1].response.status == "failed"
    assert failed[-1].response.error is not None
    assert failed[-1].response.error.code == "server_error"
    assert errored[-1].type == "error"
    assert errored[-1].code == "server_error"
    assert errored[-1].message.startswith("The server had an error")
    for events in (failed, errored):
        assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["abcd"]
        assert [e.sequence_number for e in events] == list(range(len(events)))


async def test_responses_truncation_ends_without_terminal_event(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(text="abcdefgh", truncate_after=1))

    events = await stream_response(client)

    assert events[-1].type == "response.output_text.delta"
    terminal = {"response.completed", "response.failed", "response.incomplete", "error"}
    assert not terminal & {e.type for e in events}


async def test_responses_transport_failures_raise(llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    llm.script(
        Answer(status=429),
        Answer(text="abcdefgh", disconnect_after=1),
        Answer(text="abcdefgh", corrupt_after=1),
        Answer(text="abcdefgh", stall_after=1),
    )

    with pytest.raises(openai.RateLimitError):
        await stream_response(client)
    with pytest.raises(openai.APIConnectionError):
        await stream_response(client)
    with pytest.raises(json.JSONDecodeError):
        await stream_response(client)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await stream_response(client)


# -- tool calls --------------------------------------------------------------------------------

CHAT_TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {"name": "echo", "parameters": {"type": "object", "properties": {}}},
    }
]
RESPONSE_TOOLS: list[Any] = [
    {"type": "function", "name": "echo", "parameters": None, "strict": False},
]


async def test_tool_calls_stream_as_chat_deltas_after_the_text(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(
        Answer(
            text="Let me look.", tool_calls=[Call("echo", {"text": "hi"}), Call("add", {"a": 2})]
        )
    )

    chunks = await stream_chat(client, tools=CHAT_TOOLS)

    assert text_of(chunks) == "Let me look."
    fragments = [f for c in chunks if c.choices for f in c.choices[0].delta.tool_calls or ()]
    firsts = [f for f in fragments if f.id is not None]
    assert [(f.index, f.type, f.function and f.function.name) for f in firsts] == [
        (0, "function", "echo"),
        (1, "function", "add"),
    ]
    assert firsts[0].id != firsts[1].id
    arguments = {
        index: "".join(
            f.function.arguments or "" for f in fragments if f.index == index and f.function
        )
        for index in (0, 1)
    }
    assert arguments == {0: '{"text":"hi"}', 1: '{"a":2}'}
    assert sum(1 for f in fragments if f.index == 0) > 2  # the arguments came in pieces
    assert finish_reasons(chunks) == ["tool_calls"]
    assert llm.requests[0].tool_names == ["echo"]


async def test_tool_calls_stream_as_function_call_items_of_a_response(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(text="Looking.", tool_calls=[Call("echo", {"text": "hi"}, id="call_x")]))

    stream = await client.responses.create(
        model="gpt-test", input="Say hello", tools=RESPONSE_TOOLS, stream=True
    )
    async with stream:
        events: list[Any] = [event async for event in stream]

    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # The message item is closed before the call's item opens.
    assert kinds.index("response.output_item.done") < kinds.index("response.output_item.added", 3)
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [(e.output_index, e.item.type) for e in added] == [(0, "message"), (1, "function_call")]
    call = added[1].item
    assert (call.name, call.call_id, call.arguments) == ("echo", "call_x", "")
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(deltas) > 1 and "".join(deltas) == '{"text":"hi"}'
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert (done.item_id, done.arguments) == (call.id, '{"text":"hi"}')
    completed = events[-1].response
    assert events[-1].type == "response.completed"
    assert [item.type for item in completed.output] == ["message", "function_call"]
    assert completed.output_text == "Looking."
    assert completed.tools[0].name == "echo"


async def test_a_fault_among_the_call_chunks_keeps_the_response_events_in_sequence(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    llm.script(Answer(tool_calls=[Call("echo", {"text": "hi"})], error_after=2))

    events = await stream_response(client)

    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events][2:] == [
        "response.output_item.added",  # a call alone: no message item before it
        "response.function_call_arguments.delta",
        "response.failed",
    ]


async def test_whole_answers_carry_their_tool_calls(llm: FakeOpenAI, client: AsyncOpenAI) -> None:
    llm.script(
        Answer(tool_calls=[Call("echo", {"text": "hi"})]),
        Answer(tool_calls=[Call("echo", {"text": "hi"})]),
    )

    completion = await client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, tools=CHAT_TOOLS
    )
    response: Any = await client.responses.create(
        model="gpt-test", input="hi", tools=RESPONSE_TOOLS
    )

    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.content is None and message.tool_calls is not None
    assert message.tool_calls[0].type == "function"
    assert message.tool_calls[0].function.arguments == '{"text":"hi"}'
    assert [(item.type, getattr(item, "name", None)) for item in response.output] == [
        ("function_call", "echo")
    ]


@pytest.mark.parametrize(
    ("style", "error", "words"),
    [
        ("ollama", openai.BadRequestError, "gpt-test:latest does not support tools"),
        ("vllm", openai.BadRequestError, "tool choice requires --enable-auto-tool-choice"),
        ("llama.cpp", openai.InternalServerError, "tools param requires --jinja flag"),
        ("openai", openai.BadRequestError, "tools is not supported in this model"),
    ],
)
async def test_a_tool_less_server_refuses_requests_with_tools_only(
    llm: FakeOpenAI, client: AsyncOpenAI, style: Any, error: type[Exception], words: str
) -> None:
    llm.refuse_tools = style
    llm.script(Answer(text="plain"))

    with pytest.raises(error) as caught:
        await stream_chat(client, tools=CHAT_TOOLS)
    assert llm.pending_answers == 1  # the refusal used no scripted answer
    chunks = await stream_chat(client)

    assert words in str(caught.value)
    assert text_of(chunks) == "plain"


async def test_a_history_whose_calls_and_results_do_not_pair_is_rejected(
    llm: FakeOpenAI, client: AsyncOpenAI
) -> None:
    asked = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "echo", "arguments": "{}"}}
        ],
    }
    answered = {"role": "tool", "tool_call_id": "call_1", "content": "hi"}
    call = {"type": "function_call", "call_id": "call_1", "name": "echo", "arguments": "{}"}
    output = {"type": "function_call_output", "call_id": "call_1", "output": "hi"}
    user = {"role": "user", "content": "hi"}
    rejected: list[str] = []
    for messages in ([user, asked, user], [user, answered], [user, asked, answered]):
        try:
            await client.chat.completions.create(model="gpt-test", messages=messages)  # type: ignore[arg-type]
        except openai.BadRequestError as exc:
            rejected.append(str(exc.message))
    for items in ([user, call], [user, output], [user, call, output]):
        try:
            await client.responses.create(model="gpt-test", input=items)  # type: ignore[arg-type]
        except openai.BadRequestError as exc:
            rejected.append(str(exc.message))

    assert len(rejected) == 4
    assert "did not have response messages: call_1" in rejected[0]
    assert "must be a response to a preceeding message with 'tool_calls'" in rejected[1]
    assert "No tool output found for function call call_1." in rejected[2]
    assert "No tool call found for function call output with call_id call_1." in rejected[3]
    accepted = [r for r in llm.requests if r.answer is not None]
    assert [r.tool_results for r in accepted] == [[("call_1", "hi")], [("call_1", "hi")]]
    assert [r.tool_calls for r in accepted] == [[("call_1", "echo", "{}")]] * 2
