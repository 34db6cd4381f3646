"""The model boundary: stream an answer from any OpenAI-compatible server (Chat Completions, or
the Responses API with ``OPENAI_API_MODE=responses``), with or without tools.

    async with model.stream(messages) as answer:
        async for delta in answer:
            reply.append(delta)
    answer.usage          # {'prompt_tokens': …} when the server reported it

With tools, each round is one stream; the calls are assembled while the text streams and the
results go back in the API's own shape::

    async with model.stream(messages, tools=specs, on_tool_call=show_pending) as answer:
        text = "".join([delta async for delta in answer])
    if answer.finish_reason == "tool_calls":
        results = [await run(call) for call in answer.tool_calls]   # (content, is_error)
        messages += model.tool_round(text, answer.tool_calls, results)   # then the next round

``on_tool_call`` is a plain function (not a coroutine), called inside the read. A server or model
that refuses ``tools`` (an HTTP error saying so, see ``_TOOLS_REFUSED``) is asked again without
them, once, and that model is sent no tools for the rest of the process
(``answer.tools_dropped``). Answers offered no tools are read without any tool work per chunk.

Images: a user message's ``content`` may be a list of Chat Completions parts (``text``,
``image_url`` with a data URL, ``file`` for a PDF; bot/conversation.py builds them), worded for
the Responses API (``input_text``, ``input_image``, ``input_file``) when that is the API. With ``vision="auto"`` a model that
refuses images (``_IMAGES_REFUSED``) is asked again with each image replaced by a line saying it
could not be shown, and is sent no images for the rest of the process (``answer.images_dropped``);
``vision="off"`` never sends any.

The SSE lines are read raw and decoded with ``orjson`` (0.5 µs a chunk; ``json`` takes 2.2 µs
and the SDK's typed chunks ~100 µs), which matters with hundreds of concurrent streams. With many
streams open in the process, each stream also reads the network in batches (see
``_read_pause``; between reads its socket is not read at all, see ``_rest``): a read costs
~80 µs of CPU in the HTTP stack whether it brings one event or ten, and a model sends one event
per token. Failures
leave as ``ModelUnavailable`` (nothing streamed yet: no text, no tool call begun),
``ModelInterrupted`` (broken mid-answer, including a stream that ends without ``finish_reason``) or ``ModelIdle`` (no token for
``idle_timeout`` seconds). A healthy stream has no total-duration limit.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
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

# How servers word "this model takes no tools" (only an explicit refusal counts: a bare 400 is as
# often an over-long context or a malformed request, which retrying without tools would hide).
_TOOLS_REFUSED = re.compile(
    r"(?:does not|doesn't|do not) support (?:tools|tool |function)"  # Ollama, LM Studio
    r"|support tool use"  # OpenRouter: "No endpoints found that support tool use"
    r"|tool choice requires"  # vLLM without --enable-auto-tool-choice / --tool-call-parser
    r"|tools param requires"  # llama.cpp without --jinja
    r"|cannot use tools with stream"  # llama.cpp before streamed tool calls
    r"|unsupported param(?:eter)?: *'?(?:tools|functions)\b"  # llama.cpp, OpenAI
    r"|unrecognized request argument supplied: *(?:tools|functions)\b"  # Azure OpenAI
    r"|\b(?:tools|functions|tool use|tool calling|function calling)'? (?:is|are) not supported",
    re.IGNORECASE,
)
# Most refuse with 400; Azure and OpenRouter with 404, llama.cpp with 500 (seen here after the
# SDK's own retries).
_REFUSAL_STATUSES = frozenset({400, 404, 500})

# How servers word "this model takes no images" (again only explicit refusals, and only when
# the request carried images). OpenAI's wording is its documented one; the others are as those
# servers are known to answer, not checked against each of them here.
_IMAGES_REFUSED = re.compile(
    r"image_url is only supported by certain models"  # OpenAI, Azure OpenAI
    r"|image input is not supported"  # llama.cpp without a multimodal projector
    r"|support image input"  # OpenRouter: "No endpoints found that support image input"
    r"|(?:does not|doesn't|do not) support (?:images|image|vision|multimodal)"  # LM Studio …
    r"|is not a multimodal model"  # vLLM
    r"|at most 0 image"  # vLLM: "At most 0 image(s) may be provided in one request"
    r"|unknown variant `image_url`"  # DeepSeek and other text-only Rust servers
    r"|missing data required for image input"  # Ollama, a text-only model
    # Groq: only string content, no parts (a tool message's content is another matter)
    r"|(?<!tool message )(?<!tool )content'? *:? *(?:value )?must be a string"
    # "… is not supported" about the model, not about images in another role's message
    r"|\b(?:images?|image inputs?|vision|multimodal(?: input)?)'? (?:is|are) not supported"
    r"(?! in (?:assistant|system|tool|developer))",
    re.IGNORECASE,
)
IMAGE_NOT_SHOWN = "[An image was attached here, but this model cannot see images.]"
BLIND_FOR_S = 3600.0


class Forgetting:
    """A set of names that forgets each one ``ttl_s`` after it was added."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl_s
        self._clock = clock
        self._until: dict[str, float] = {}

    def add(self, name: str) -> None:
        self._until[name] = self._clock() + self._ttl

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or name not in self._until:
            return False
        if self._clock() >= self._until[name]:
            del self._until[name]
            return False
        return True


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call: its name, what it does, and its arguments as JSON schema."""

    name: str
    description: str
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call the model asked for. ``arguments`` is its JSON text as streamed (``"{}"`` when
    empty; not checked: the tool layer reports bad JSON back to the model). ``item_id`` is the
    Responses API's output item (``fc_…``); ``call_id`` is what the result answers to."""

    call_id: str
    name: str
    arguments: str
    item_id: str | None = None


class _Assembly:
    """A tool call being streamed: its fragments so far."""

    __slots__ = ("call_id", "item_id", "name", "parts", "whole")

    def __init__(self, call_id: str = "", name: str = "", item_id: str | None = None) -> None:
        self.call_id = call_id
        self.name = name
        self.item_id = item_id
        self.parts: list[str] = []
        self.whole: str | None = None  # the server's own complete text, once it sent one

    def freeze(self) -> ToolCall:
        if not self.call_id:  # some servers send none; the result must still answer to one
            self.call_id = f"call_{uuid.uuid4().hex[:24]}"
        arguments = self.whole if self.whole is not None else "".join(self.parts)
        return ToolCall(self.call_id, self.name, arguments.strip() or "{}", self.item_id)


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

    ``stream`` returns an ``AnswerStream``: use it as ``async with`` and iterate text deltas;
    ``tool_round`` turns one round's calls and their results into the next round's messages.
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
        vision: Literal["auto", "on", "off"] = "auto",
    ) -> None:
        self._client = client
        self._api = api
        self._vision = vision
        self._max_tokens = max_answer_tokens
        # OpenAI's own API wants max_completion_tokens (its reasoning models refuse
        # max_tokens); OpenAI-compatible servers (vLLM, Ollama, llama.cpp) know max_tokens.
        hosted = str(client.base_url).startswith("https://api.openai.com/")
        self._max_tokens_field = "max_completion_tokens" if hosted else "max_tokens"
        self._model = model
        self._temperature = temperature
        self._idle_timeout = idle_timeout
        self._open = _OpenStreams()
        self._toolless: set[str] = set()  # models whose server refused tools
        # Models whose server refused images, for an hour: a refusal is read from the error's
        # words, and a misreading must not leave a model without images until a restart.
        self._blind = Forgetting(BLIND_FOR_S)

    @property
    def default_model(self) -> str:
        return self._model

    @property
    def default_temperature(self) -> float | None:
        return self._temperature

    def takes_tools(self, model: str | None = None) -> bool:
        """False once this model's server has refused tools (for the rest of the process)."""
        return (model or self._model) not in self._toolless

    def sees_images(self, model: str | None = None) -> bool:
        """False with ``vision="off"``, or once this model's server has refused images."""
        return self._vision != "off" and (model or self._model) not in self._blind

    def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        model: str | None = None,
        temperature: float | None = None,
        tools: Sequence[ToolSpec] = (),
        on_tool_call: Callable[[str, int], object] | None = None,
    ) -> AnswerStream:
        """One answer (one round). ``tools`` are offered unless this model refused them before
        (then ``answer.tools_dropped``); ``on_tool_call(name, index)`` runs as soon as a call's
        name has arrived, before its arguments have."""
        name = model or self._model
        body: dict[str, Any] = {"model": name, "stream": True}
        blind = not self.sees_images(name) and _has_images(messages)
        if blind:
            messages = _without_images(messages)
        if self._api == "responses":
            # Role/content messages are valid Responses input; content parts have names of
            # their own there.
            body["input"] = [_responses_message(message) for message in messages]
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
        dropped = bool(tools) and name in self._toolless
        if tools and not dropped:
            body["tools"] = [self._tool_shape(spec) for spec in tools]
        answer = AnswerStream(
            self._client,
            body,
            self._idle_timeout,
            api=self._api,
            streams=self._open,
            toolless=self._toolless,
            blind=self._blind if self._vision == "auto" else None,
        )
        answer.tools_dropped = dropped
        answer.images_dropped = blind
        answer.on_tool_call = on_tool_call
        return answer

    def tool_round(
        self, text: str, calls: Sequence[ToolCall], results: Sequence[tuple[str, bool]]
    ) -> list[dict[str, Any]]:
        """The messages that carry one round to the next: what the model said and asked for,
        then each result (``(content, is_error)``, in the order of ``calls``)."""
        if len(calls) != len(results):
            raise ValueError(f"{len(calls)} tool calls but {len(results)} results")
        outputs = [_result_text(content, failed) for content, failed in results]
        if self._api == "responses":
            items: list[dict[str, Any]] = []
            if text:
                items.append({"role": "assistant", "content": text})
            # Without the item id: an fc_… id ties the call to a reasoning item of the same
            # response, which OpenAI then requires too ("provided without its required
            # 'reasoning' item").
            items += [
                {
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": _replayable(call.arguments),
                }
                for call in calls
            ]
            items += [
                {"type": "function_call_output", "call_id": call.call_id, "output": output}
                for call, output in zip(calls, outputs, strict=True)
            ]
            return items
        assistant: dict[str, Any] = {
            "role": "assistant",
            "content": text or None,
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": _replayable(call.arguments)},
                }
                for call in calls
            ],
        }
        return [
            assistant,
            *(
                {"role": "tool", "tool_call_id": call.call_id, "content": output}
                for call, output in zip(calls, outputs, strict=True)
            ),
        ]

    def _tool_shape(self, spec: ToolSpec) -> dict[str, Any]:
        if self._api == "responses":
            # The Responses API makes tools strict unless told otherwise, and strict mode
            # refuses most schemas MCP servers publish (optional properties, no
            # additionalProperties: false).
            return {
                "type": "function",
                "name": spec.name,
                "description": spec.description,
                "parameters": dict(spec.parameters),
                "strict": False,
            }
        return {
            "type": "function",
            "function": {
                "name": spec.name,
                "description": spec.description,
                "parameters": dict(spec.parameters),
            },
        }


class Transcriptions:
    """Speech to text through the server's ``/audio/transcriptions`` (``TRANSCRIBE_MODEL``): the
    ``Transcriber`` that reads voice clips and audio files shared in Slack (bot/files).

        text = await Transcriptions(client, model="whisper-1").transcribe(
            clip, filename="memo.m4a", mimetype="audio/mp4")
    """

    def __init__(self, client: openai.AsyncOpenAI, *, model: str, timeout: float = 120.0) -> None:
        self._client = client
        self._model = model
        self._timeout = timeout

    async def transcribe(self, audio: bytes, *, filename: str, mimetype: str) -> str:
        """The clip's words; ``ModelUnavailable`` when the server would not say."""
        try:
            result = await self._client.audio.transcriptions.create(
                model=self._model, file=(filename, audio, mimetype), timeout=self._timeout
            )
        except openai.APIStatusError as exc:
            raise ModelUnavailable(f"transcription: HTTP {exc.status_code}") from exc
        except (openai.APIError, httpx2.HTTPError) as exc:
            raise ModelUnavailable(f"transcription: {type(exc).__name__}") from exc
        text = result if isinstance(result, str) else getattr(result, "text", "")
        return text if isinstance(text, str) else ""


def _replayable(arguments: str) -> str:
    """A call's arguments as the next round repeats them: the model's JSON when it is an
    object, else ``{}`` (servers such as vLLM and llama.cpp refuse a history whose call
    arguments are not JSON; the call's result already told the model what was wrong)."""
    try:
        value = orjson.loads(arguments)
    except ValueError:
        return "{}"
    return arguments if isinstance(value, dict) else "{}"


def _result_text(content: str, failed: bool) -> str:
    """A tool's result as the model reads it; a failure says so in its first word."""
    if failed and not content.startswith("Error"):
        return f"Error: {content}" if content else "Error: the tool failed without a message."
    return content


class _OpenStreams:
    """How many of one model's answers are being read now (for batched reading)."""

    count = 0


class AnswerStream(AbstractAsyncContextManager["AnswerStream"]):
    """One streamed answer; always closes its HTTP response, also when the reader stops early.

    Iterating yields text. After it, ``finish_reason`` is ``"tool_calls"`` when the model asked
    for tools, and ``tool_calls`` lists those calls (after a failure: the ones begun so far).
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        body: dict[str, Any],
        idle: float,
        *,
        api: Literal["chat", "responses"] = "chat",
        streams: _OpenStreams | None = None,
        toolless: set[str] | None = None,
        blind: Forgetting | None = None,
    ) -> None:
        self._client = client
        self._body = body
        self._idle = idle
        self._open = streams or _OpenStreams()
        self._toolless = toolless if toolless is not None else set()
        # Where to note a model that refuses images; None: no retry without them (vision on).
        self._blind = blind
        # Text-only answers read with the plain absorbers: no tool work per chunk.
        self._text_absorb = (
            self._absorb_response_event if api == "responses" else self._absorb_chunk
        )
        if "tools" not in body:
            self._absorb = self._text_absorb
        elif api == "responses":
            self._absorb = self._absorb_response_event_with_tools
        else:
            self._absorb = self._absorb_chunk_with_tools
        self._endpoint = (
            client.responses.with_streaming_response
            if api == "responses"
            else client.chat.completions.with_streaming_response
        )
        self._response_cm: Any = None
        self.finish_reason: str | None = None
        self.usage: dict[str, int] | None = None
        self.chars = 0
        self.tools_dropped = False
        """Tools were asked for, but this answer was made without them (the model refuses them)."""
        self.images_dropped = False
        """The messages carried images, but this answer was made without them (the model
        refuses them)."""
        self.on_tool_call: Callable[[str, int], object] | None = None
        """Called with (name, index in ``tool_calls``) as soon as a call's name is known."""
        self._calls: list[_Assembly] = []
        self._call_keys: dict[object, _Assembly] = {}
        self._last_key: object = 0

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [call.freeze() for call in self._calls]

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
        while True:
            try:
                async with asyncio.timeout(self._idle):
                    # The idle clock covers the time to first byte too.
                    # The transport's read timeout ends a silent stream without a timer per line.
                    self._response_cm = self._endpoint.create(
                        **self._body,
                        timeout=httpx2.Timeout(self._idle, connect=min(10.0, self._idle)),
                    )
                    response = await self._response_cm.__aenter__()
                break
            except TimeoutError:
                raise ModelUnavailable("no response within the idle timeout") from None
            except openai.APIStatusError as exc:
                if "tools" in self._body and _refuses_tools(exc):
                    self._drop_tools(exc)
                    continue  # nothing was streamed: the same question again, without tools
                if self._blind is not None and _refuses_images(exc, self._body):
                    self._drop_images(exc)
                    continue  # the same question again, each image replaced by a line
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
        if self._calls and self.finish_reason == "stop":
            self.finish_reason = "tool_calls"  # servers that end a call with "stop" (Ollama)

    def _drop_tools(self, refusal: openai.APIStatusError) -> None:
        model = str(self._body.get("model"))
        log.warning(
            "model %s refused tools (HTTP %s); it is sent none from now on",
            model,
            refusal.status_code,
        )
        self._toolless.add(model)
        self._body = {
            key: value
            for key, value in self._body.items()
            if key not in ("tools", "tool_choice", "parallel_tool_calls")
        }
        self._absorb = self._text_absorb
        self.tools_dropped = True

    def _drop_images(self, refusal: openai.APIStatusError) -> None:
        model = str(self._body.get("model"))
        log.warning(
            "model %s refused images (HTTP %s); it is sent none for the next hour",
            model,
            refusal.status_code,
        )
        assert self._blind is not None
        self._blind.add(model)
        key = "input" if "input" in self._body else "messages"
        self._body = {**self._body, key: _without_images(self._body[key])}
        self.images_dropped = True

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

    def _absorb_chunk_with_tools(self, chunk: Any) -> str:
        """``_absorb_chunk`` that also takes the tool-call fragments (with tools offered; the
        text-only path does no tool work per chunk)."""
        text = self._absorb_chunk(chunk)
        for choice in chunk.get("choices") or () if isinstance(chunk, dict) else ():
            fragments = (choice.get("delta") or {}).get("tool_calls")
            if fragments and isinstance(fragments, list):
                for fragment in fragments:
                    if isinstance(fragment, dict):
                        self._take_chat_fragment(fragment)
        return text

    def _take_chat_fragment(self, fragment: dict[str, Any]) -> None:
        # OpenAI numbers the calls (``index``) and sends id and name once, then argument
        # pieces; servers without an index send each call whole, told apart by its id (or,
        # with no id either, by a second name).
        call_id = fragment.get("id")
        index = fragment.get("index")
        function = fragment.get("function")
        if not isinstance(function, dict):
            function = {}
        key: object
        if isinstance(index, int):
            key = index
        elif isinstance(call_id, str) and call_id:
            key = call_id
        else:
            last = self._call_keys.get(self._last_key)
            named = last is not None and last.name and function.get("name")
            key = len(self._calls) if named else self._last_key
        self._last_key = key
        call = self._call_keys.get(key)
        if call is None:
            call = self._call_keys[key] = _Assembly()
            self._calls.append(call)
        if isinstance(call_id, str) and call_id and not call.call_id:
            call.call_id = call_id
        name = function.get("name")
        if isinstance(name, str) and name and not call.name:
            call.name = name
            self._announce(call)
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            call.parts.append(arguments)
        elif isinstance(arguments, dict):  # a few servers send the object itself
            call.parts.append(orjson.dumps(arguments).decode())

    def _absorb_response_event_with_tools(self, event: Any) -> str:
        """``_absorb_response_event``, and the function calls among the output items."""
        if not isinstance(event, dict):
            return ""
        kind = event.get("type")
        if kind == "response.output_text.delta":
            delta = event.get("delta")
            return delta if isinstance(delta, str) else ""
        if kind == "response.function_call_arguments.delta":
            call = self._item_call(event)
            delta = event.get("delta")
            if call is not None and isinstance(delta, str):
                call.parts.append(delta)
        elif kind == "response.function_call_arguments.done":
            call = self._item_call(event)
            arguments = event.get("arguments")
            if call is not None and isinstance(arguments, str):
                call.whole = arguments
        elif kind in ("response.output_item.added", "response.output_item.done"):
            item = event.get("item")
            if isinstance(item, dict) and item.get("type") == "function_call":
                self._take_function_call(_item_key(event), item)
        elif kind in ("response.completed", "response.incomplete"):
            # A server that sent no item events still lists the calls in its output.
            response = event.get("response")
            output = response.get("output") if isinstance(response, dict) else None
            if not self._calls and isinstance(output, list):
                for position, item in enumerate(output):
                    if isinstance(item, dict) and item.get("type") == "function_call":
                        self._take_function_call(item.get("id") or position, item)
            text = self._absorb_response_event(event)
            if self._calls and self.finish_reason == "stop":
                self.finish_reason = "tool_calls"
            return text
        else:
            return self._absorb_response_event(event)
        return ""

    def _item_call(self, event: dict[str, Any]) -> _Assembly | None:
        return self._call_keys.get(_item_key(event)) or self._call_keys.get(event.get("item_id"))

    def _take_function_call(self, key: object, item: dict[str, Any]) -> None:
        call = self._call_keys.get(key)
        if call is None:
            call = self._call_keys[key] = _Assembly()
            self._calls.append(call)
        call_id, item_id = item.get("call_id"), item.get("id")
        if isinstance(call_id, str) and call_id:
            call.call_id = call_id
        if isinstance(item_id, str) and item_id:
            call.item_id = item_id
            self._call_keys.setdefault(item_id, call)  # events may name it by id alone
        arguments = item.get("arguments")
        if isinstance(arguments, str) and (arguments or item.get("status") == "completed"):
            call.whole = arguments
        name = item.get("name")
        if isinstance(name, str) and name and not call.name:
            call.name = name
            self._announce(call)

    def _announce(self, call: _Assembly) -> None:
        callback = self.on_tool_call
        if callback is None:
            return
        try:
            callback(call.name, self._calls.index(call))
        except Exception:
            # A hint for the screen: its failure must not end the model's answer.
            log.exception("on_tool_call failed")

    def _broken(
        self, kind: type[ModelInterrupted], why: str
    ) -> ModelInterrupted | ModelUnavailable:
        # Nothing shown yet: the user gets the "model unavailable" note, not "interrupted".
        # A tool call under way counts as shown (its pending step may be on screen).
        if self.chars == 0 and not self._calls:
            return ModelUnavailable(why)
        return kind(why)


def _item_key(event: dict[str, Any]) -> object:
    """Which output item a Responses event is about (by its position, else its id)."""
    index = event.get("output_index")
    return index if isinstance(index, int) else event.get("item_id")


def _refuses_tools(error: openai.APIStatusError) -> bool:
    """The server said this model takes no tools (see ``_TOOLS_REFUSED``)."""
    if error.status_code not in _REFUSAL_STATUSES:
        return False
    return any(_TOOLS_REFUSED.search(text) for text in _error_texts(error))


_IMAGE_PARTS = frozenset({"image_url", "input_image"})
_TEXT_PART = {"image_url": "text", "input_image": "input_text"}  # the text part of each API
_TEXT_PARTS = frozenset(_TEXT_PART.values())


def _has_images(messages: object) -> bool:
    """Whether any message's content holds an image part (either API's shape)."""
    if not isinstance(messages, list):
        return False
    return any(
        isinstance(message, dict)
        and isinstance(message.get("content"), list)
        and any(isinstance(p, dict) and p.get("type") in _IMAGE_PARTS for p in message["content"])
        for message in messages
    )


def _without_images(messages: list[Any]) -> list[Any]:
    """``messages`` with each image replaced by a line saying it could not be shown; content
    that is then only text becomes one string again (text-only servers may take nothing else)."""
    plain: list[Any] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            plain.append(message)
            continue
        parts = [
            {"type": _TEXT_PART[part["type"]], "text": IMAGE_NOT_SHOWN}
            if part.get("type") in _IMAGE_PARTS
            else part
            for part in content
            if isinstance(part, dict)
        ]
        if all(part.get("type") in _TEXT_PARTS for part in parts):
            text = "\n\n".join(str(part.get("text", "")) for part in parts)
            plain.append({**message, "content": text})
        else:  # a file part (a PDF) stays: the message keeps its parts
            plain.append({**message, "content": parts})
    return plain


def _responses_message(message: dict[str, Any]) -> dict[str, Any]:
    """A chat message as Responses input: content parts renamed (``input_text``,
    ``input_image`` whose ``image_url`` is the URL itself, ``input_file`` with ``filename``
    and ``file_data``); string content as it is."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append({"type": "input_text", "text": part.get("text", "")})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append({"type": "input_image", "image_url": url})
        elif kind == "file":
            file = part.get("file")
            parts.append({"type": "input_file", **(file if isinstance(file, dict) else {})})
        else:
            parts.append(part)
    return {**message, "content": parts}


def _refuses_images(error: openai.APIStatusError, body: dict[str, Any]) -> bool:
    """The server said this model takes no images, and the request carried some."""
    if error.status_code not in _REFUSAL_STATUSES | {422}:
        return False
    if not _has_images(body.get("input", body.get("messages"))):
        return False
    return any(_IMAGES_REFUSED.search(text) for text in _error_texts(error))


def _error_texts(error: openai.APIStatusError) -> list[str]:
    texts = [error.message]
    body = error.body
    detail = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(detail, dict):
        detail = detail.get("message")
    if isinstance(detail, str):
        texts.append(detail)
    return texts


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
