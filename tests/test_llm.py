"""ChatModel against the fake OpenAI server: text, the end of the stream, failures after some
text, and many concurrent answers read in batches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web

import bot.llm
from bot.errors import ModelInterrupted, ModelUnavailable
from bot.llm import ChatModel, _aiohttp_response, _rest, connect_openai
from tests.fakes.openai import Answer, FakeOpenAI

PROMPT = [{"role": "user", "content": "hi"}]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def model(llm: FakeOpenAI) -> AsyncIterator[ChatModel]:
    client = connect_openai(llm.api_key, llm.base_url)
    yield ChatModel(client, model="m", idle_timeout=10)
    await client.close()


async def read(model: ChatModel) -> tuple[list[str], ChatModel]:
    deltas = []
    async with model.stream(PROMPT) as answer:
        async for delta in answer:
            deltas.append(delta)
    assert answer.finish_reason == "stop"
    return deltas, model


@asynccontextmanager
async def serving(method: str, path: str, handler: Handler) -> AsyncIterator[str]:
    """An aiohttp server on a free loopback port answering ``method path`` with ``handler``;
    yields its base URL."""
    app = web.Application()
    app.router.add_route(method, path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_an_answer_streams_as_written_with_its_usage(
    llm: FakeOpenAI, model: ChatModel
) -> None:
    llm.script(Answer(text="Hello there, how are you?", usage={"prompt_tokens": 3}))
    async with model.stream(PROMPT) as answer:
        deltas = [delta async for delta in answer]
    assert "".join(deltas) == "Hello there, how are you?"
    assert answer.finish_reason == "stop"
    assert answer.usage is not None and answer.usage["prompt_tokens"] == 3


async def test_text_before_a_corrupt_chunk_is_kept(llm: FakeOpenAI, model: ChatModel) -> None:
    llm.script(Answer(text="abcdefghijkl", corrupt_after=2))
    deltas: list[str] = []
    with pytest.raises(ModelInterrupted):
        async with model.stream(PROMPT) as answer:
            async for delta in answer:
                deltas.append(delta)
    assert "".join(deltas) == "abcdefgh"


async def test_an_error_before_any_text_is_unavailable(llm: FakeOpenAI, model: ChatModel) -> None:
    llm.script(Answer(text="abcd", error_after=0))
    with pytest.raises(ModelUnavailable):
        async with model.stream(PROMPT) as answer:
            async for _ in answer:
                pass


async def test_many_concurrent_answers_are_read_in_batches_and_arrive_whole(
    llm: FakeOpenAI, model: ChatModel
) -> None:
    # 150 streams open at once: each rests between reads, so one delta carries several chunks.
    texts = [f"answer {i:03d} " + "word " * 40 for i in range(150)]
    llm.script(*(Answer(text=text, tokens_per_second=200) for text in texts))
    results = await asyncio.gather(*(read(model) for _ in texts))
    received = sorted("".join(deltas) for deltas, _ in results)
    assert received == sorted(texts)
    chunks = sum(len(Answer(text=text).pieces()) for text in texts)
    assert sum(len(deltas) for deltas, _ in results) < chunks / 2


async def test_the_sdk_response_exposes_its_socket(llm: FakeOpenAI, model: ChatModel) -> None:
    # Resting without reading needs the socket under the SDK's aiohttp transport; it is reached
    # through private attributes, so an SDK upgrade that moves them must fail here.
    llm.script(Answer(text="Hello there", tokens_per_second=5))  # still streaming when read
    endpoint = model._client.chat.completions.with_streaming_response
    async with endpoint.create(model="m", messages=PROMPT, stream=True) as response:
        body = _aiohttp_response(response.http_response)
        assert body is not None and body.connection is not None
        assert body.connection.transport is not None and body.connection.transport.is_reading()


async def test_a_rest_holds_the_socket_so_the_packets_sent_meanwhile_arrive_together() -> None:
    # 20 tokens' packets sent during a 1 s rest (one every 5 ms) reach the HTTP stack together.
    sent = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await asyncio.sleep(0.2)  # the client is resting by now
        for i in range(20):
            await response.write(b"data: %02d\n\n" % i)
            await asyncio.sleep(0.005)
        sent.set()
        await response.write_eof()
        return response

    async with serving("GET", "/", handler) as url, aiohttp.ClientSession() as session:
        async with session.get(url + "/") as body:
            assert await body.content.readuntil(b"\n\n") == b"data: first\n\n"
            transport = body.connection.transport if body.connection else None
            assert transport is not None
            resting = asyncio.create_task(_rest(1.0, body))
            await asyncio.sleep(0.1)
            assert not transport.is_reading()  # held while resting
            await asyncio.wait_for(sent.wait(), 5.0)
            assert body.content.total_bytes == len(b"data: first\n\n")  # nothing taken in
            await resting
            assert transport.is_reading()  # and read again after it
            rest = await body.content.read()
    assert rest == b"".join(b"data: %02d\n\n" % i for i in range(20))


async def test_a_stream_never_rests_on_a_connection_it_has_finished_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Responses API streams end without [DONE]: when the last text and the completion arrive
    # together, aiohttp has already handed the connection back to its pool, and a rest there
    # would hold the socket of whichever request takes it next.
    def event(kind: str, **payload: object) -> bytes:
        return b"event: %s\ndata: %s\n\n" % (
            kind.encode(),
            json.dumps({"type": kind, **payload}).encode(),
        )

    def delta(text: str) -> bytes:
        return event("response.output_text.delta", delta=text)

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(3):
            await response.write(delta(f"t{i} "))
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        await response.write(delta("last") + event("response.completed", response={}))
        return response

    # One stream rests as many would: 0.1 s between reads.
    monkeypatch.setattr(bot.llm, "_BATCH_FROM_STREAMS", 1)
    monkeypatch.setattr(bot.llm, "_READS_PER_SECOND", 10.0)
    rests: list[tuple[bool, bool]] = []  # (connection still the stream's, socket held)
    real_rest = bot.llm._rest

    async def watched_rest(seconds: float, body: aiohttp.ClientResponse | None) -> None:
        assert body is not None  # the SDK's aiohttp response was found
        live = body.connection is not None and not body.content.is_eof()
        resting = asyncio.create_task(real_rest(seconds, body))
        await asyncio.sleep(0)
        transport = body.connection.transport if body.connection else None
        rests.append((live, transport is not None and not transport.is_reading()))
        await resting

    monkeypatch.setattr(bot.llm, "_rest", watched_rest)
    async with serving("POST", "/v1/responses", handler) as url:
        client = connect_openai("sk-test", url + "/v1")
        try:
            async with ChatModel(client, model="m", api="responses").stream(PROMPT) as answer:
                text = "".join([piece async for piece in answer])
        finally:
            await client.close()
    assert text == "t0 t1 t2 last"
    assert rests, "the stream never rested: the test does not exercise resting"
    assert all(live for live, _ in rests)  # never on a finished connection
    assert all(held for _, held in rests)  # and while resting, the socket is not read


async def test_sse_lines_split_anywhere_and_any_line_ending_read_the_same() -> None:
    # A server whose bytes arrive cut mid-line, with CRLF and CR line endings, a keep-alive
    # comment, and a last line without a line break.
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{"index": 0, "delta": {"content": "Hé"}}]},
        {"choices": [{"index": 0, "delta": {"content": "llo, "}}]},
        {"choices": [{"index": 0, "delta": {"content": "world"}, "finish_reason": "stop"}]},
    ]
    body = (
        b": keep-alive\r\n\r\n"
        + b"".join(
            b"data: "
            + json.dumps(e, ensure_ascii=False).encode()
            + (b"\r\n\r\n", b"\n\n", b"\r\r")[i % 3]
            for i, e in enumerate(events)
        )
        + b"data: [DONE]"
    )
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            await asyncio.sleep(0.001)
        await response.write_eof()
        return response

    async with serving("POST", "/v1/chat/completions", handler) as url:
        client = connect_openai("sk-test", url + "/v1")
        try:
            async with ChatModel(client, model="m").stream(PROMPT) as answer:
                text = "".join([delta async for delta in answer])
        finally:
            await client.close()
    assert text == "Héllo, world"
    assert answer.finish_reason == "stop"
