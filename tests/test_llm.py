"""ChatModel against the fake OpenAI server: text, the end of the stream, failures after some
text, and many concurrent answers read in batches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bot.errors import ModelInterrupted, ModelUnavailable
from bot.llm import ChatModel, _rest, _transport_of, connect_openai
from tests.fakes.openai import Answer, FakeOpenAI

PROMPT = [{"role": "user", "content": "hi"}]


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
        transport = _transport_of(response.http_response)
        assert transport is not None and transport.is_reading()


async def test_a_rest_holds_the_socket_so_the_packets_sent_meanwhile_arrive_together() -> None:
    received: list[bytes] = []
    connected = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        connected.set()

    class Counting(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            received.append(data)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await asyncio.get_running_loop().create_connection(Counting, "127.0.0.1", port)
    try:
        await connected.wait()

        async def send_packets() -> None:  # 20 tokens' packets, one every 10 ms
            for i in range(20):
                writers[0].write(b"data: %02d\n\n" % i)
                await writers[0].drain()
                await asyncio.sleep(0.01)

        sender = asyncio.create_task(send_packets())
        await _rest(0.4, transport)  # type: ignore[arg-type]
        assert transport.is_reading()  # reading again after the rest
        await sender
        for _ in range(50):
            if sum(map(len, received)) == 20 * 10:
                break
            await asyncio.sleep(0.01)
        assert b"".join(received) == b"".join(b"data: %02d\n\n" % i for i in range(20))
        assert len(received) <= 2  # one wake-up for all 20 (not one each)
    finally:
        transport.close()
        writers[0].close()
        server.close()
        await server.wait_closed()


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

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = connect_openai("sk-test", f"http://127.0.0.1:{port}/v1")
    try:
        async with ChatModel(client, model="m").stream(PROMPT) as answer:
            text = "".join([delta async for delta in answer])
    finally:
        await client.close()
        await runner.cleanup()
    assert text == "Héllo, world"
    assert answer.finish_reason == "stop"
