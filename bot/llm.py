"""The model boundary: stream an answer from any OpenAI-compatible server (Chat Completions, or
the Responses API with ``OPENAI_API_MODE=responses``).

    async with model.stream(messages) as answer:
        async for delta in answer:
            reply.append(delta)
    answer.usage          # {'prompt_tokens': …} when the server reported it

The SSE lines are read raw and decoded with ``orjson`` (0.5 µs a chunk; ``json`` takes 2.2 µs
and the SDK's typed chunks ~100 µs), which matters with hundreds of concurrent streams. With many
streams open in the process, each stream also reads the network in batches (see
``_read_pause``; between reads its socket is not read at all, see ``_rest``): a read costs
~80 µs of CPU in the HTTP stack whether it brings one event or ten, and a model sends one event
per token. Failures
leave as ``ModelUnavailable`` (nothing streamed yet), ``ModelInterrupted`` (broken mid-answer,
including a stream that ends without ``finish_reason``) or ``ModelIdle`` (no token for
``idle_timeout`` seconds). A healthy stream has no total-duration limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Literal

import aiohttp
import httpx2
import openai
import orjson

from bot.errors import ModelError, ModelIdle, ModelInterrupted, ModelUnavailable

log = logging.getLogger(__name__)

# Batched reading (see _read_pause): below this many open streams every event is read at once;
# above it, each stream rests between network reads so that the process makes at most about
# _READS_PER_SECOND of them, resting at most _MAX_PAUSE (a character then becomes visible
# about half a pause later, next to edits that are a second or more apart).
_BATCH_FROM_STREAMS = 100
_READS_PER_SECOND = 2000.0
_MAX_PAUSE = 0.5
# A read that took longer than this waited for the network (one served from buffered bytes
# does not suspend): the stream has caught up, and the next read may rest first.
_WAITED = 0.002


def connect_openai(api_key: str, base_url: str | None) -> openai.AsyncOpenAI:
    """The SDK client; retries (429/5xx/connection, before a stream starts) stay the SDK's.

    It runs on the SDK's aiohttp transport (``openai.DefaultAioHttpClient``, same defaults as
    its own; proxies from the environment still apply): reading through it instead of the
    default httpx2/httpcore2/anyio stack took the bot's CPU per 1,000 streamed tokens from
    0.065 to 0.053 s with 1,000 streams open (bench/README.md).
    """
    return openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        max_retries=2,
        http_client=openai.DefaultAioHttpClient(),
    )


class ChatModel:
    """One configured model endpoint.

    ``stream`` returns an ``AnswerStream``: use it as ``async with`` and iterate text deltas.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        *,
        model: str,
        temperature: float | None = None,
        idle_timeout: float = 60.0,
        api: Literal["chat", "responses"] = "chat",
        max_answer_tokens: int = 0,
    ) -> None:
        self._client = client
        self._api = api
        self._max_tokens = max_answer_tokens
        # OpenAI's own API wants max_completion_tokens (its reasoning models refuse
        # max_tokens); OpenAI-compatible servers (vLLM, Ollama, llama.cpp) know max_tokens.
        hosted = str(client.base_url).startswith("https://api.openai.com/")
        self._max_tokens_field = "max_completion_tokens" if hosted else "max_tokens"
        self._model = model
        self._temperature = temperature
        self._idle_timeout = idle_timeout
        self._open = _OpenStreams()

    @property
    def default_model(self) -> str:
        return self._model

    @property
    def default_temperature(self) -> float | None:
        return self._temperature

    def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        temperature: float | None = None,
    ) -> AnswerStream:
        body: dict[str, Any] = {"model": model or self._model, "stream": True}
        if self._api == "responses":
            body["input"] = messages  # role/content messages are valid Responses input
            if self._max_tokens:
                body["max_output_tokens"] = self._max_tokens
        else:
            body["messages"] = messages
            body["stream_options"] = {"include_usage": True}
            if self._max_tokens:
                body[self._max_tokens_field] = self._max_tokens
        temperature = temperature if temperature is not None else self._temperature
        if temperature is not None:
            body["temperature"] = temperature
        return AnswerStream(
            self._client, body, self._idle_timeout, api=self._api, streams=self._open
        )


class _OpenStreams:
    """How many of one model's answers are being read now (for batched reading)."""

    count = 0


class AnswerStream(AbstractAsyncContextManager["AnswerStream"]):
    """One streamed answer; always closes its HTTP response, also when the reader stops early."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        body: dict[str, Any],
        idle: float,
        *,
        api: Literal["chat", "responses"] = "chat",
        streams: _OpenStreams | None = None,
    ) -> None:
        self._client = client
        self._body = body
        self._idle = idle
        self._open = streams or _OpenStreams()
        self._absorb = self._absorb_response_event if api == "responses" else self._absorb_chunk
        self._endpoint = (
            client.responses.with_streaming_response
            if api == "responses"
            else client.chat.completions.with_streaming_response
        )
        self._response_cm: Any = None
        self.finish_reason: str | None = None
        self.usage: dict[str, int] | None = None
        self.chars = 0

    async def __aenter__(self) -> AnswerStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        cm, self._response_cm = self._response_cm, None
        if cm is not None:
            try:
                await cm.__aexit__(None, None, None)
            except (httpx2.HTTPError, openai.OpenAIError):
                pass  # the connection is being discarded anyway

    async def __aiter__(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._idle):
                # The idle clock covers the time to first byte too.
                # The transport's read timeout ends a silent stream without a timer per line.
                self._response_cm = self._endpoint.create(
                    **self._body, timeout=httpx2.Timeout(self._idle, connect=min(10.0, self._idle))
                )
                response = await self._response_cm.__aenter__()
        except TimeoutError:
            raise ModelUnavailable("no response within the idle timeout") from None
        except openai.APIStatusError as exc:
            raise ModelUnavailable(f"HTTP {exc.status_code}") from exc
        except (openai.APIError, httpx2.HTTPError) as exc:
            raise ModelUnavailable(type(exc).__name__) from exc

        chunks = response.http_response.aiter_bytes().__aiter__()
        body = _aiohttp_response(response.http_response)
        deadline = loop.time() + self._idle
        rest = b""  # a line not yet ended
        pending = ""  # text read but not yet handed on (batched reading)
        done = False
        broken: ModelError | None = None
        self._open.count += 1
        try:
            while not done:
                asked = time.perf_counter()  # uvloop's loop clock counts whole milliseconds
                try:
                    data = await chunks.__anext__()
                except StopAsyncIteration:
                    if not rest:
                        break
                    data, done = b"\n", True  # the last line had no line break
                now = loop.time()
                if now > deadline:
                    raise TimeoutError  # bytes, but no token (keep-alive comments, empty deltas)
                lines = (rest + data).splitlines(keepends=True)
                ended = not lines or lines[-1].endswith((b"\n", b"\r"))
                rest = b"" if ended else lines.pop()
                text = ""
                failure: ModelError | None = None
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue  # blank separators, ': keep-alive' comments, 'event:' names
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        break
                    try:
                        piece = self._absorb(orjson.loads(payload))
                    except ValueError as exc:  # orjson.JSONDecodeError (also for bytes not UTF-8)
                        failure = self._broken(ModelInterrupted, "corrupt chunk")
                        failure.__cause__ = exc
                        break
                    except ModelError as exc:
                        failure = exc
                        break
                    text += piece
                    self.chars += len(piece)
                if text:
                    deadline = now + self._idle
                    pending += text
                if not pending:
                    if failure is not None:
                        raise failure
                    continue
                # Batched (many streams, and the first text already out): hand on the text
                # once the read has caught up with the model, i.e. had to wait for it, then
                # rest before the next read. Reads from buffered bytes do not wait.
                pause = self._read_pause() if self.chars > len(pending) else 0.0
                waited = time.perf_counter() - asked > _WAITED
                if pause and not waited and not done and failure is None:
                    continue
                yield pending  # what came before a failure is shown too
                pending = ""
                if failure is not None:
                    raise failure
                if pause and not done and not _all_received(body):
                    await _rest(pause, body)
        except (TimeoutError, httpx2.ReadTimeout):
            broken = self._broken(ModelIdle, "no token within the idle timeout")
        except (httpx2.HTTPError, openai.OpenAIError) as exc:
            broken = self._broken(ModelInterrupted, type(exc).__name__)
            broken.__cause__ = exc
        finally:
            self._open.count -= 1
            await self._close()
        if pending:  # read before the end or a failure: shown too
            yield pending
        if broken is not None:
            raise broken
        if self.finish_reason is None:
            raise self._broken(ModelInterrupted, "stream ended without finish_reason")

    def _read_pause(self) -> float:
        """Seconds to rest before the next network read: none while few streams are open;
        with many, long enough that several events arrive together (one read, not one per
        token) — the CPU that reading costs then stops growing with the number of streams."""
        streams = self._open.count
        if streams < _BATCH_FROM_STREAMS:
            return 0.0
        # The socket is not read while resting: a rest stays well inside the idle timeout,
        # which the transport also applies to reads.
        return min(_MAX_PAUSE, streams / _READS_PER_SECOND, self._idle / 4)

    def _absorb_response_event(self, event: Any) -> str:
        """Text of one Responses API event; records the end and usage; raises on failures."""
        if not isinstance(event, dict):
            return ""
        kind = event.get("type")
        if kind == "response.output_text.delta":
            delta = event.get("delta")
            return delta if isinstance(delta, str) else ""
        if kind in ("response.completed", "response.incomplete"):
            response = event.get("response") or {}
            usage = response.get("usage") if isinstance(response, dict) else None
            if isinstance(usage, dict):
                self.usage = {
                    "prompt_tokens": int(usage.get("input_tokens") or 0),
                    "completion_tokens": int(usage.get("output_tokens") or 0),
                    "total_tokens": int(usage.get("total_tokens") or 0),
                }
            # An incomplete response (max tokens, content filter) is an answer cut by the
            # server on purpose, like finish_reason "length": shown as it is.
            self.finish_reason = "stop" if kind == "response.completed" else "length"
        elif kind in ("response.failed", "error"):
            raise self._broken(ModelInterrupted, f"{kind} event in stream")
        return ""

    def _absorb_chunk(self, chunk: Any) -> str:
        """Text of one decoded chunk; records finish_reason and usage; raises on error events."""
        if not isinstance(chunk, dict):
            return ""
        if chunk.get("error"):
            raise self._broken(ModelInterrupted, "error event in stream")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = {k: v for k, v in usage.items() if isinstance(v, int)}
        text = ""
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str):
                text += content
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        return text

    def _broken(
        self, kind: type[ModelInterrupted], why: str
    ) -> ModelInterrupted | ModelUnavailable:
        # Nothing shown yet: the user gets the "model unavailable" note, not "interrupted".
        if self.chars == 0:
            return ModelUnavailable(why)
        return kind(why)


def _aiohttp_response(response: httpx2.Response) -> aiohttp.ClientResponse | None:
    """The aiohttp response under a response read through the SDK's aiohttp transport (None
    for any other transport). Reached through two private attributes (the SDK's stream
    wrapper, then the vendored httpx-aiohttp stream): tests/test_llm.py fails if an SDK
    upgrade moves them, and without it the reader still works, only resting without holding
    the socket."""
    stream = getattr(getattr(response, "stream", None), "_stream", None)
    found = getattr(stream, "_aiohttp_response", None)
    return found if isinstance(found, aiohttp.ClientResponse) else None


def _all_received(body: aiohttp.ClientResponse | None) -> bool:
    """The whole body is buffered (aiohttp has then handed the connection back to its pool):
    nothing more can come, so there is nothing to rest for."""
    return body is not None and body.content.is_eof()


async def _rest(seconds: float, body: aiohttp.ClientResponse | None) -> None:
    """Wait ``seconds`` without reading the socket: what the model sends meanwhile waits in
    the kernel and the next read takes it in one go. Left reading, the event loop would wake
    for every token's packet and the HTTP stack would handle each (parsed, fed to the buffer,
    a timer rescheduled) although the stream reads them only after the rest. Over TLS the
    TLS layer goes on reading the socket into its own buffer; what is saved there is the
    HTTP stack's work per packet. A socket that aiohttp itself holds (its buffer is full) is
    left alone."""
    connection = body.connection if body is not None else None
    transport = connection.transport if connection is not None else None
    held = transport is not None and transport.is_reading()
    if held:
        assert transport is not None
        transport.pause_reading()
    try:
        await asyncio.sleep(seconds)
    finally:
        if held and transport is not None and not transport.is_closing():
            transport.resume_reading()
