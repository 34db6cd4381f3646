"""A fake OpenAI-compatible server (Chat Completions and Responses) for tests and benchmarks.

It speaks the real wire protocol on loopback, so the production ``AsyncOpenAI`` client runs
unchanged; tests script what the "model" answers and assert on what the fake received::

    async with FakeOpenAI() as llm:
        client = AsyncOpenAI(base_url=llm.base_url, api_key="sk-test", max_retries=0)
        llm.script(Answer(text="Hi there", ttft=0.05), Answer(status=429, retry_after=2))
        stream = await client.chat.completions.create(model="m", messages=[...], stream=True)
        ...
        assert llm.last_messages()[-1]["content"] == "hello"
        await client.close()

Answers are consumed one per request, first in first out; when the script is empty the fake
answers with ``llm.default`` (an ``Answer``, or a ``responder(body) -> Answer`` such as
``echo_last_user``). One ``Answer`` describes the text, its pacing and at most one failure:

======================  =====================================================================
``status=429``          HTTP error before the stream, OpenAI-shaped JSON, ``Retry-After``
``error_after=N``       after N chunks: ``data: {"error": {...}}`` and the end
``disconnect_after=N``  after N chunks: the connection is closed mid-body (``reset``:
                        with a TCP RST instead of a FIN)
``truncate_after=N``    after N chunks: a clean end without a ``finish_reason`` chunk
                        (``[DONE]`` still sent unless ``done_after_truncate=False``)
``stall_after=N``       after N chunks: silence until the client leaves or the fake stops
``corrupt_after=N``     after N chunks: one data line that is not JSON, then carry on
======================  =====================================================================

Chunks are the content chunks, then the tool-call chunks: ``Answer(text="Let me look.",
tool_calls=[Call("echo", {"text": "hi"}), Call("add", {"a": 1})])`` streams its text, then per
call one chunk with its id and name and its JSON arguments in ``chunk_size`` pieces, and ends
with ``finish_reason: "tool_calls"``.

On ``/v1/responses`` the same answer becomes Responses events (calls as ``function_call`` items:
``response.output_item.added``, ``response.function_call_arguments.delta``/``.done``,
``response.output_item.done``); ``error_after`` sends ``response.failed`` (or an ``error``
event, see ``Answer.error_event``), ``finish_reason`` ``"length"``/``"content_filter"`` sends
``response.incomplete``, and ``truncate_after`` ends the stream before any terminal event.

Tools: ``llm.refuse_tools = "ollama"`` (or ``True``, ``"vllm"``, ``"llama.cpp"``, ``"openai"``)
answers every request that offers ``tools`` with that server's refusal (``TOOL_REFUSALS``)
without using a scripted answer. Like OpenAI, the fake rejects (HTTP 400, no answer used) a
history whose tool calls and tool results do not pair up. ``Request.tools``, ``tool_names``,
``tool_calls`` and ``tool_results`` show what a request carried.

Images: ``llm.refuse_images = True`` answers every request whose messages carry an image part
(``image_url`` or ``input_image``) with OpenAI's refusal for a model without vision (HTTP 400,
``IMAGE_REFUSAL``) without using a scripted answer. ``Request.images`` lists the image URLs a
request carried.

Speech: ``/v1/audio/transcriptions`` answers ``{"text": llm.transcript}`` (``llm.transcript =
None``: HTTP 500); its requests are recorded too, the body as ``{"model", "filename",
"mimetype", "size"}`` of the multipart upload.

Every request is recorded (``llm.requests``) with its arrival time and, for benchmarks, the time
and cumulative character count of each content chunk written (``llm.emitted``), measured with the
injectable ``clock``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

__all__ = [
    "IMAGE_REFUSAL",
    "TOOL_REFUSALS",
    "Answer",
    "Call",
    "FakeOpenAI",
    "Request",
    "Responder",
    "echo_last_user",
]

Responder = Callable[[dict[str, Any]], "Answer"]
"""Chooses an answer from the parsed request body."""

Outcome = Literal["open", "done", "client_gone", "stopped"]

_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
}
_DONE = b"data: [DONE]\n\n"
_STALL_POLL = 0.02
_ERROR_DEFAULTS: dict[int, tuple[str, str, str | None]] = {
    400: ("Invalid request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to use this model.", "invalid_request_error", None),
    404: ("The model does not exist.", "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests.", "requests", "rate_limit_exceeded"),
}
_SERVER_ERROR = (
    "The server had an error while processing your request. Sorry about that!",
    "server_error",
    None,
)

RefusalStyle = Literal["ollama", "vllm", "llama.cpp", "openai"]
TOOL_REFUSALS: dict[str, tuple[int, dict[str, Any]]] = {
    # Ollama, for a model whose template has no tools ({model} is the requested name).
    "ollama": (
        400,
        {
            "error": {
                "message": "registry.ollama.ai/library/{model}:latest does not support tools",
                "type": "api_error",
                "param": None,
                "code": None,
            }
        },
    ),
    # vLLM started without --enable-auto-tool-choice (its older error shape, no "error" key).
    "vllm": (
        400,
        {
            "object": "error",
            "message": '"auto" tool choice requires --enable-auto-tool-choice and '
            "--tool-call-parser to be set",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        },
    ),
    # llama.cpp's server without --jinja: a 500, which the SDK retries before it raises.
    "llama.cpp": (
        500,
        {
            "error": {
                "code": 500,
                "message": "tools param requires --jinja flag",
                "type": "server_error",
            }
        },
    ),
    # OpenAI, for a model without function calling (gpt-5-chat-latest).
    "openai": (
        400,
        {
            "error": {
                "message": "tools is not supported in this model. For a list of supported "
                "models, refer to https://platform.openai.com/docs/guides/function-calling"
                "#models-supporting-function-calling.",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
    ),
}
"""How tool-less servers refuse a request with ``tools``: (HTTP status, body)."""

IMAGE_REFUSAL: dict[str, Any] = {
    "error": {
        "message": "Invalid content type. image_url is only supported by certain models.",
        "type": "invalid_request_error",
        "param": "messages.[1].content.[1].type",
        "code": None,
    }
}
"""How OpenAI refuses images sent to a model without vision (with HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Call:
    """One scripted tool call: ``Call("add", {"a": 1, "b": 2})``. ``arguments`` as a string is
    sent as written (corrupt JSON too); ``id`` defaults to one made from the request id."""

    name: str
    arguments: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None

    @property
    def arguments_text(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Answer:
    """One scripted model answer: its text, its pacing and at most one failure.

    ``Answer(text="Hello world")`` streams ``"Hell"``, ``"o wo"``, ``"rld"``;
    ``Answer(chunks=["Hel", "lo"], ttft=0.2, tokens_per_second=50)`` paces explicit chunks;
    ``Answer(text="abc", error_after=1)`` fails mid-stream. Chunk counts (``*_after``) count
    content chunks, then tool-call chunks; a count past the end fires after the last chunk.
    With ``tool_calls`` the default ``finish_reason`` becomes ``"tool_calls"``.
    """

    text: str = ""
    chunks: Sequence[str] | None = None
    tool_calls: Sequence[Call] = ()
    chunk_size: int = 4
    ttft: float = 0.0
    token_delay: float = 0.0
    tokens_per_second: float | None = None
    finish_reason: str = "stop"
    usage: Mapping[str, int] | None = None
    model: str | None = None
    # failures
    status: int | None = None
    retry_after: float | None = None
    error_message: str | None = None
    error_type: str | None = None
    error_code: str | None = None
    error_after: int | None = None
    error_event: Literal["response.failed", "error"] = "response.failed"
    disconnect_after: int | None = None
    reset: bool = False
    truncate_after: int | None = None
    done_after_truncate: bool = True
    stall_after: int | None = None
    corrupt_after: int | None = None

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        if self.tokens_per_second is not None and self.tokens_per_second <= 0:
            raise ValueError("tokens_per_second must be positive")
        if self.status is not None and not 400 <= self.status <= 599:
            raise ValueError("status must be an HTTP error status (4xx or 5xx)")

    def pieces(self) -> list[str]:
        """The content chunks, in order: ``chunks`` if given, else ``text`` split by size."""
        if self.chunks is not None:
            return list(self.chunks)
        size = self.chunk_size
        return [self.text[i : i + size] for i in range(0, len(self.text), size)]

    @property
    def full_text(self) -> str:
        return "".join(self.pieces())

    @property
    def ending(self) -> str:
        """The finish reason sent: ``finish_reason``, or ``"tool_calls"`` for calls."""
        if self.tool_calls and self.finish_reason == "stop":
            return "tool_calls"
        return self.finish_reason

    def argument_pieces(self, call: Call) -> list[str]:
        """A call's JSON arguments as streamed, in ``chunk_size`` pieces."""
        whole = call.arguments_text
        size = self.chunk_size
        return [whole[i : i + size] for i in range(0, len(whole), size)]

    @property
    def interval(self) -> float:
        """Seconds between two content chunks."""
        if self.tokens_per_second is not None:
            return 1.0 / self.tokens_per_second
        return self.token_delay

    def error_body(self, status: int | None = None) -> dict[str, Any]:
        """The OpenAI-shaped ``{"error": {...}}`` body for an HTTP or in-stream failure."""
        message, kind, code = (
            _ERROR_DEFAULTS.get(status, _SERVER_ERROR) if status is not None else _SERVER_ERROR
        )
        return {
            "error": {
                "message": self.error_message or message,
                "type": self.error_type or kind,
                "param": None,
                "code": self.error_code if self.error_code is not None else code,
            }
        }

    def _terminal_fault(self, count: int) -> tuple[str, int] | None:
        # Ties go to the first kind listed; corrupt_after is not terminal.
        faults = [
            (kind, min(at, count))
            for kind, at in (
                ("error", self.error_after),
                ("disconnect", self.disconnect_after),
                ("truncate", self.truncate_after),
                ("stall", self.stall_after),
            )
            if at is not None
        ]
        return min(faults, key=lambda fault: fault[1]) if faults else None


def echo_last_user(body: dict[str, Any]) -> Answer:
    """A responder that answers with the text of the last user message (chat or responses)."""
    for message in reversed(_messages_of(body)):
        if message.get("role") == "user":
            return Answer(text=_text_of(message.get("content")))
    return Answer(text="")


@dataclass(slots=True)
class Request:
    """One request the fake received, and what it did with it."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float
    request_id: str = ""
    answer: Answer | None = None
    emitted: list[tuple[float, int]] = field(default_factory=list)
    """(clock time, cumulative characters) after each content chunk was written."""
    outcome: Outcome = "open"
    """``done`` when the scripted answer was fully played (failures included),
    ``client_gone`` when the client hung up first, ``stopped`` when the fake stopped first."""
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)
    """Set when the handler is done: ``async with asyncio.timeout(5): await r.finished.wait()``."""

    @property
    def messages(self) -> list[dict[str, Any]]:
        return _messages_of(self.body)

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The ``tools`` offered, as sent."""
        tools = self.body.get("tools")
        return tools if isinstance(tools, list) else []

    @property
    def tool_names(self) -> list[str]:
        """The names of the tools offered (either API's shape)."""
        names = []
        for tool in self.tools:
            function = tool.get("function") if isinstance(tool, dict) else None
            name = (function or tool).get("name") if isinstance(tool, dict) else None
            names.append(str(name))
        return names

    @property
    def tool_calls(self) -> list[tuple[str, str, str]]:
        """(call id, name, arguments) of the model's earlier calls the history carries."""
        return _calls_of(self.body)

    @property
    def tool_results(self) -> list[tuple[str, str]]:
        """(call id, content) of the tool results the history carries."""
        return _results_of(self.body)

    @property
    def images(self) -> list[str]:
        """The image URLs (data URLs) the messages carry, in order (either API's shape)."""
        return _images_of(self.body)


class FakeOpenAI:
    """An OpenAI-compatible HTTP server on ``127.0.0.1`` and a free port.

    ``async with FakeOpenAI() as llm:`` starts it; ``llm.base_url`` is ``http://127.0.0.1:P/v1``.
    Leaving the block cancels every open stream (stalled ones included) and closes the port.
    ``start()`` / ``stop()`` do the same for benchmarks that manage the lifetime themselves.
    """

    def __init__(
        self,
        *,
        api_key: str = "sk-test",
        default: Answer | Responder | None = None,
        clock: Callable[[], float] = time.monotonic,
        shutdown_timeout: float = 0.5,
        refuse_tools: bool | RefusalStyle = False,
        refuse_images: bool = False,
    ) -> None:
        self.api_key = api_key
        self.default: Answer | Responder = default or Answer(text="Hello from the fake model.")
        self.clock = clock
        self.refuse_tools: bool | RefusalStyle = refuse_tools
        """A tool-less server: requests offering ``tools`` get its refusal (see TOOL_REFUSALS)."""
        self.refuse_images = refuse_images
        self.transcript: str | None = "Hello from the fake transcriber."
        """What ``/audio/transcriptions`` hears in any clip (None: it fails with HTTP 500)."""
        """A model without vision: requests carrying images get ``IMAGE_REFUSAL``."""
        self.requests: list[Request] = []
        self._script: deque[Answer | Responder] = deque()
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._arrived: asyncio.Condition | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("FakeOpenAI is already running")
        self._arrived = asyncio.Condition()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self._shutdown_timeout)
        await runner.setup()
        # A deep backlog: benchmarks open a thousand connections at once.
        site = web.TCPSite(runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Release stalled and sleeping streams now instead of waiting out shutdown_timeout.
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=self._shutdown_timeout)
        await runner.cleanup()

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeOpenAI is not running; use `async with FakeOpenAI() as llm`")
        return f"http://127.0.0.1:{self._port}/v1"

    # -- scripting and records ------------------------------------------------------------

    def script(self, *answers: Answer | Responder) -> None:
        """Queue answers for the next requests, one per request, in order."""
        self._script.extend(answers)

    @property
    def pending_answers(self) -> int:
        """Scripted answers not yet consumed."""
        return len(self._script)

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [request.body for request in self.requests]

    @property
    def emitted(self) -> list[list[tuple[float, int]]]:
        """Per request, ``(time, cumulative characters)`` after each content chunk."""
        return [request.emitted for request in self.requests]

    @property
    def open_streams(self) -> int:
        """Requests whose handler is still running (streams not yet finished)."""
        return len(self._handlers)

    def last_messages(self) -> list[dict[str, Any]]:
        """The ``messages`` (chat) or ``input`` as messages (responses) of the last request."""
        if not self.requests:
            raise AssertionError("the fake has received no request")
        return self.requests[-1].messages

    async def wait_requests(self, count: int) -> list[Request]:
        """Wait until at least ``count`` requests have arrived; bound it with ``asyncio.timeout``."""
        condition = self._arrived
        if condition is None:
            raise RuntimeError("FakeOpenAI is not running")
        async with condition:
            await condition.wait_for(lambda: len(self.requests) >= count)
        return self.requests

    # -- HTTP handlers --------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.json_response(Answer().error_body(401), status=401)
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}],
            }
        )

    async def _transcriptions(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        upload = form.get("file")
        body: dict[str, Any] = {"model": str(form.get("model", ""))}
        if isinstance(upload, web.FileField):
            data = upload.file.read()
            body.update(filename=upload.filename, mimetype=upload.content_type, size=len(data))
        record = Request(
            path=request.path,
            body=body,
            headers={key.lower(): value for key, value in request.headers.items()},
            at=self.clock(),
            request_id=f"req_fake{len(self.requests) + 1:06d}",
        )
        self.requests.append(record)
        record.outcome = "done"
        record.finished.set()
        await self._announce()
        if not self._authorized(request):
            return _error_response(record, 401, Answer().error_body(401))
        if self.transcript is None:
            return _error_response(record, 500, Answer().error_body(500))
        return web.json_response({"text": self.transcript})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._stream_chat, _chat_completion)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._stream_response, _response_object)

    async def _serve(
        self,
        request: web.Request,
        stream: Callable[[web.Request, Request, Answer, str], Awaitable[web.StreamResponse]],
        whole: Callable[[Request, Answer, str], dict[str, Any]],
    ) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        record: Request | None = None
        try:
            try:
                body = await request.json()
            except ValueError:
                body = None
            record = Request(
                path=request.path,
                body=body if isinstance(body, dict) else {},
                headers={key.lower(): value for key, value in request.headers.items()},
                at=self.clock(),
                request_id=f"req_fake{len(self.requests) + 1:06d}",
            )
            self.requests.append(record)
            await self._announce()
            if not self._authorized(request):
                return _error_response(record, 401, Answer().error_body(401))
            if not isinstance(body, dict):
                return _error_response(record, 400, Answer().error_body(400))
            if self.refuse_tools and body.get("tools"):
                style = "ollama" if self.refuse_tools is True else self.refuse_tools
                status, refusal = _refusal(style, str(body.get("model")))
                return _error_response(record, status, refusal)
            if self.refuse_images and _images_of(body):
                return _error_response(record, 400, json.loads(json.dumps(IMAGE_REFUSAL)))
            invalid = _invalid_tool_history(body)
            if invalid is not None:
                return _error_response(record, 400, _invalid_request(*invalid))
            answer = self._next_answer(body)
            record.answer = answer
            if answer.status is not None:
                error = answer.error_body(answer.status)
                return _error_response(record, answer.status, error, answer.retry_after)
            model = answer.model or str(body.get("model") or "fake-model")
            if body.get("stream"):
                return await stream(request, record, answer, model)
            return await self._whole(request, record, answer, whole(record, answer, model))
        except asyncio.CancelledError:
            if record is not None and record.outcome == "open":
                record.outcome = "stopped"
            raise
        finally:
            self._handlers.discard(task)
            if record is not None:
                if record.outcome == "open":
                    record.outcome = "done"
                record.finished.set()

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _next_answer(self, body: dict[str, Any]) -> Answer:
        scripted = self._script.popleft() if self._script else self.default
        return scripted if isinstance(scripted, Answer) else scripted(body)

    async def _announce(self) -> None:
        if self._arrived is not None:
            async with self._arrived:
                self._arrived.notify_all()

    async def _whole(
        self, request: web.Request, record: Request, answer: Answer, payload: dict[str, Any]
    ) -> web.StreamResponse:
        """A non-streaming answer: ``ttft`` is the whole latency; stall and disconnect apply."""
        if answer.ttft > 0:
            await asyncio.sleep(answer.ttft)
        if answer.stall_after is not None:
            await self._stall(request, record)
            return web.StreamResponse()
        if answer.disconnect_after is not None:
            _drop(request, answer.reset)
            return web.StreamResponse()
        record.emitted.append((self.clock(), len(answer.full_text)))
        return web.json_response(payload, headers={"x-request-id": record.request_id})

    # -- streaming ------------------------------------------------------------------------

    async def _stream_chat(
        self, request: web.Request, record: Request, answer: Answer, model: str
    ) -> web.StreamResponse:
        body = record.body
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        head = (
            b'data: {"id":"chatcmpl-'
            + record.request_id.encode()
            + b'","object":"chat.completion.chunk","created":'
            + str(int(time.time())).encode()
            + b',"model":'
            + _dumps(model)
            + b',"system_fingerprint":null,"choices":'
        )
        tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"
        open_choice = b'[{"index":0,"delta":'
        close_choice = b',"logprobs":null,"finish_reason":null}]'
        pieces = answer.pieces()
        frames = [
            head + open_choice + b'{"content":' + _dumps(piece) + b"}" + close_choice + tail
            for piece in pieces
        ]
        if answer.tool_calls:
            for index, (call, call_id) in enumerate(_call_ids(record, answer)):
                # As OpenAI: the id and name first (empty arguments), then argument pieces.
                opening = {"name": call.name, "arguments": ""}
                first = {"index": index, "id": call_id, "type": "function", "function": opening}
                fragments: list[dict[str, Any]] = [first] + [
                    {"index": index, "function": {"arguments": piece}}
                    for piece in answer.argument_pieces(call)
                ]
                frames += [
                    head
                    + open_choice
                    + b'{"tool_calls":['
                    + _dumps(fragment)
                    + b"]}"
                    + close_choice
                    + tail
                    for fragment in fragments
                ]
            pieces = pieces + [""] * (len(frames) - len(pieces))
        corrupt = head + b'[{"index":0,"delta":{"content":"\n\n'

        resp = web.StreamResponse(headers={**_SSE_HEADERS, "x-request-id": record.request_id})
        await resp.prepare(request)
        try:
            role = b'{"role":"assistant","content":"","refusal":null}'
            await resp.write(head + open_choice + role + close_choice + tail)
            fault = answer._terminal_fault(len(frames))
            await self._play(record, resp, answer, frames, pieces, fault, corrupt)
            kind = fault[0] if fault is not None else None
            if kind == "error":
                await resp.write(b"data: " + _dumps(answer.error_body()) + b"\n\n")
            elif kind == "truncate":
                if answer.done_after_truncate:
                    await resp.write(_DONE)
            elif kind == "disconnect":
                _drop(request, answer.reset)
            elif kind == "stall":
                await self._stall(request, record)
                return resp
            else:
                finish = (
                    b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":'
                    + _dumps(answer.ending)
                    + b"}]"
                )
                await resp.write(head + finish + tail)
                if include_usage:
                    usage = _chat_usage(record, answer)
                    await resp.write(head + b'[],"usage":' + _dumps(usage) + b"}\n\n")
                await resp.write(_DONE)
        except ConnectionError:
            record.outcome = "client_gone"
        return resp

    async def _stream_response(
        self, request: web.Request, record: Request, answer: Answer, model: str
    ) -> web.StreamResponse:
        response_id = f"resp_{record.request_id}"
        item_id = f"msg_{record.request_id}"
        base = _response_object(record, answer, model, status="in_progress", output=[])
        base["id"] = response_id
        number = 0

        def event(kind: str, payload: dict[str, Any]) -> bytes:
            nonlocal number
            data = {"type": kind, **payload, "sequence_number": number}
            number += 1
            return b"event: " + kind.encode() + b"\ndata: " + _dumps(data) + b"\n\n"

        pieces = answer.pieces()
        calls = _call_items(record, answer)
        # OpenAI opens a message item only for text; an answer of calls alone has none.
        has_message = bool(pieces) or not calls
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}

        def message_done(text: str) -> bytes:
            """The events that close the message item."""
            message = _response_object(record, answer, model, text=text)["output"][0]
            return (
                event("response.output_text.done", {**where, "text": text})
                + event("response.content_part.done", {**where, "part": {**part, "text": text}})
                + event("response.output_item.done", {"output_index": 0, "item": message})
            )

        resp = web.StreamResponse(headers={**_SSE_HEADERS, "x-request-id": record.request_id})
        await resp.prepare(request)
        try:
            await resp.write(event("response.created", {"response": base}))
            await resp.write(event("response.in_progress", {"response": base}))
            if has_message:
                item = {
                    "id": item_id,
                    "type": "message",
                    "status": "in_progress",
                    "role": "assistant",
                    "content": [],
                }
                added = {"output_index": 0, "item": item}
                await resp.write(event("response.output_item.added", added))
                await resp.write(event("response.content_part.added", {**where, "part": part}))

            first = number
            head = (
                b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                b'"item_id":' + _dumps(item_id) + b',"output_index":0,"content_index":0,'
                b'"logprobs":[],"delta":'
            )
            frames = [
                head + _dumps(piece) + b',"sequence_number":' + str(first + i).encode() + b"}\n\n"
                for i, piece in enumerate(pieces)
            ]
            number = first + len(frames)
            after = list(range(first + 1, number + 1))  # the sequence number after each frame
            closing = b""  # events that close the last item, sent after its last chunk
            if calls:
                closing = message_done(answer.full_text) if has_message else b""
                offset = 1 if has_message else 0
                for index, (call, item) in enumerate(zip(answer.tool_calls, calls, strict=True)):
                    at = {"item_id": item["id"], "output_index": offset + index}
                    opened = {**item, "status": "in_progress", "arguments": ""}
                    added = {"output_index": offset + index, "item": opened}
                    frames.append(closing + event("response.output_item.added", added))
                    after.append(number)
                    for piece in answer.argument_pieces(call):
                        delta = {**at, "delta": piece}
                        frames.append(event("response.function_call_arguments.delta", delta))
                        after.append(number)
                    arguments = {**at, "name": item["name"], "arguments": item["arguments"]}
                    done = {"output_index": offset + index, "item": item}
                    closing = event("response.function_call_arguments.done", arguments) + event(
                        "response.output_item.done", done
                    )
                pieces = pieces + [""] * (len(frames) - len(pieces))
            corrupt = head + b'"\n\n'
            fault = answer._terminal_fault(len(frames))
            sent = await self._play(record, resp, answer, frames, pieces, fault, corrupt)
            kind = fault[0] if fault is not None else None
            if kind is not None:
                number = after[sent - 1] if sent else first
            if kind == "error":
                error = answer.error_body()["error"]
                if answer.error_event == "error":
                    payload = {k: error[k] for k in ("code", "message", "param")}
                    await resp.write(event("error", payload))
                else:
                    failed = _response_object(record, answer, model, status="failed", output=[])
                    failed["id"] = response_id
                    failed["error"] = {
                        "code": error["code"] or "server_error",
                        "message": error["message"],
                    }
                    await resp.write(event("response.failed", {"response": failed}))
            elif kind == "disconnect":
                _drop(request, answer.reset)
            elif kind == "stall":
                await self._stall(request, record)
                return resp
            elif kind is None:
                await resp.write(closing if calls else message_done("".join(pieces)))
                final = _response_object(record, answer, model)
                final["id"] = response_id
                terminal = (
                    "response.completed"
                    if final["status"] == "completed"
                    else "response.incomplete"
                )
                await resp.write(event(terminal, {"response": final}))
            # kind == "truncate": the stream just ends, before any terminal event
        except ConnectionError:
            record.outcome = "client_gone"
        return resp

    async def _play(
        self,
        record: Request,
        resp: web.StreamResponse,
        answer: Answer,
        frames: list[bytes],
        pieces: list[str],
        fault: tuple[str, int] | None,
        corrupt: bytes,
    ) -> int:
        """Write the content frames on schedule; return how many were written."""
        stop_at = fault[1] if fault is not None else None
        corrupt_at = (
            min(answer.corrupt_after, len(frames)) if answer.corrupt_after is not None else None
        )
        if answer.ttft > 0:
            await asyncio.sleep(answer.ttft)
        loop = asyncio.get_running_loop()
        interval = answer.interval
        started = loop.time()
        clock = self.clock
        emitted = record.emitted
        characters = 0
        for index, frame in enumerate(frames):
            if index == corrupt_at:
                await resp.write(corrupt)
            if index == stop_at:
                return index
            if interval > 0 and index:
                # An absolute schedule, so per-chunk overhead does not accumulate as drift.
                delay = started + index * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await resp.write(frame)
            characters += len(pieces[index])
            emitted.append((clock(), characters))
        if corrupt_at == len(frames):
            await resp.write(corrupt)
        return len(frames)

    async def _stall(self, request: web.Request, record: Request) -> None:
        # aiohttp does not cancel handlers when the peer leaves, so watch the transport.
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                record.outcome = "client_gone"
                return
            await asyncio.sleep(_STALL_POLL)


# -- helpers ----------------------------------------------------------------------------------


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _error_response(
    record: Request, status: int, body: dict[str, Any], retry_after: float | None = None
) -> web.Response:
    headers = {"x-request-id": record.request_id}
    if retry_after is not None:
        headers["Retry-After"] = (
            str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
        )
    return web.json_response(body, status=status, headers=headers)


def _drop(request: web.Request, reset: bool) -> None:
    """Close the connection mid-body: a FIN after the buffered bytes, or an RST right away."""
    transport = request.transport
    if transport is None:
        return
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _messages_of(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if isinstance(messages, list):
        return messages
    given = body.get("input")
    if isinstance(given, str):
        return [{"role": "user", "content": given}]
    if isinstance(given, list):
        return [item for item in given if isinstance(item, dict) and "role" in item]
    return []


def _images_of(body: Mapping[str, Any]) -> list[str]:
    urls: list[str] = []
    for message in _messages_of(body):
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, dict):
                continue
            image = part.get("image_url")
            if part.get("type") == "image_url" and isinstance(image, dict):
                urls.append(str(image.get("url")))
            elif part.get("type") == "input_image":
                urls.append(str(image))
    return urls


def _rough_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _prompt_tokens(body: Mapping[str, Any]) -> int:
    messages = _messages_of(body)
    instructions = body.get("instructions")
    extra = _rough_tokens(instructions) if isinstance(instructions, str) else 0
    extra += sum(_rough_tokens(arguments) for _, _, arguments in _calls_of(body))
    # Chat tool results are messages (counted there); Responses ones are items without a role.
    if "input" in body:
        extra += sum(4 + _rough_tokens(output) for _, output in _results_of(body))
    return extra + sum(4 + _rough_tokens(_text_of(m.get("content"))) for m in messages)


def _chat_usage(record: Request, answer: Answer) -> dict[str, int]:
    if answer.usage is not None:
        return dict(answer.usage)
    prompt = _prompt_tokens(record.body)
    completion = _rough_tokens(answer.full_text) + sum(
        _rough_tokens(call.arguments_text) for call in answer.tool_calls
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _responses_usage(record: Request, answer: Answer) -> dict[str, Any]:
    usage = dict(answer.usage) if answer.usage is not None else _chat_usage(record, answer)
    given = usage.get("input_tokens", usage.get("prompt_tokens", 0))
    produced = usage.get("output_tokens", usage.get("completion_tokens", 0))
    return {
        "input_tokens": given,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": produced,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens", given + produced),
    }


def _chat_completion(record: Request, answer: Answer, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.full_text, "refusal": None}
    if answer.tool_calls:
        message["content"] = answer.full_text or None
        message["tool_calls"] = [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_text},
            }
            for call, call_id in _call_ids(record, answer)
        ]
    return {
        "id": f"chatcmpl-{record.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": answer.ending,
            }
        ],
        "usage": _chat_usage(record, answer),
    }


_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _response_object(
    record: Request,
    answer: Answer,
    model: str,
    *,
    status: str | None = None,
    output: list[dict[str, Any]] | None = None,
    text: str | None = None,
) -> dict[str, Any]:
    """A Responses API ``response`` object; by default the finished one."""
    reason = _INCOMPLETE_REASONS.get(answer.finish_reason)
    final = status is None
    if status is None:
        status = "incomplete" if reason else "completed"
    if output is None:
        content = answer.full_text if text is None else text
        calls = _call_items(record, answer)
        output = (
            []
            if calls and not content
            else [
                {
                    "id": f"msg_{record.request_id}",
                    "type": "message",
                    "status": status,
                    "role": "assistant",
                    "content": [
                        {"type": "output_text", "text": content, "annotations": [], "logprobs": []}
                    ],
                }
            ]
        )
        output += calls
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": reason} if final and reason else None,
        "instructions": record.body.get("instructions"),
        "max_output_tokens": record.body.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": record.body.get("tools") or [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": _responses_usage(record, answer) if final else None,
        "user": None,
        "metadata": {},
    }


# -- tools ------------------------------------------------------------------------------------


def _call_ids(record: Request, answer: Answer) -> list[tuple[Call, str]]:
    """Each scripted call with its call id (its own, or one made from the request id)."""
    stem = record.request_id.removeprefix("req_")
    return [(call, call.id or f"call_{stem}_{i}") for i, call in enumerate(answer.tool_calls)]


def _call_items(record: Request, answer: Answer) -> list[dict[str, Any]]:
    """The Responses API ``function_call`` output items of the scripted calls."""
    stem = record.request_id.removeprefix("req_")
    return [
        {
            "id": f"fc_{stem}_{i}",
            "type": "function_call",
            "status": "completed",
            "arguments": call.arguments_text,
            "call_id": call_id,
            "name": call.name,
        }
        for i, (call, call_id) in enumerate(_call_ids(record, answer))
    ]


def _refusal(style: RefusalStyle, model: str) -> tuple[int, dict[str, Any]]:
    status, body = TOOL_REFUSALS[style]
    body = json.loads(json.dumps(body))
    error = body.get("error")
    if isinstance(error, dict):
        error["message"] = str(error["message"]).replace("{model}", model)
    return status, body


def _calls_of(body: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    found: list[tuple[str, str, str]] = []
    for item in _history(body):
        if item.get("type") == "function_call":
            found.append(
                (str(item.get("call_id")), str(item.get("name")), str(item.get("arguments")))
            )
        for call in item.get("tool_calls") or () if item.get("role") == "assistant" else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                found.append(
                    (str(call.get("id")), str(function.get("name")), str(function.get("arguments")))
                )
    return found


def _results_of(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for item in _history(body):
        if item.get("role") == "tool":
            found.append((str(item.get("tool_call_id")), _text_of(item.get("content"))))
        elif item.get("type") == "function_call_output":
            found.append((str(item.get("call_id")), _text_of(item.get("output"))))
    return found


def _history(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    given = body.get("messages", body.get("input"))
    return [item for item in given if isinstance(item, dict)] if isinstance(given, list) else []


def _invalid_request(message: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
    }


def _invalid_tool_history(body: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """What OpenAI would refuse in the history's tool calls and results (message, param)."""
    if isinstance(body.get("messages"), list):
        return _invalid_chat_tools(body["messages"])
    if isinstance(body.get("input"), list):
        return _invalid_response_tools(body["input"])
    return None


def _invalid_chat_tools(messages: list[Any]) -> tuple[str, str | None] | None:
    waiting: list[str] = []  # call ids the next messages must answer
    for at, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if waiting and role != "tool":
            break
        if role == "assistant" and message.get("tool_calls"):
            calls = message["tool_calls"]
            if not isinstance(calls, list):
                return f"Invalid type for 'messages[{at}].tool_calls'.", f"messages[{at}]"
            for n, call in enumerate(calls):
                function = call.get("function") if isinstance(call, dict) else None
                if (
                    not isinstance(function, dict)
                    or call.get("type") != "function"
                    or not isinstance(call.get("id"), str)
                    or not isinstance(function.get("name"), str)
                    or not isinstance(function.get("arguments"), str)
                ):
                    where = f"messages[{at}].tool_calls[{n}]"
                    return f"Invalid value for '{where}'.", where
                waiting.append(call["id"])
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in waiting:
                return (
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                    f"messages.[{at}].role",
                )
            if not isinstance(message.get("content"), str | list):
                return f"Invalid type for 'messages[{at}].content'.", f"messages[{at}].content"
            waiting.remove(call_id)
    if waiting:
        return (
            "An assistant message with 'tool_calls' must be followed by tool messages responding "
            "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
            + ", ".join(waiting),
            "messages",
        )
    return None


def _invalid_response_tools(items: list[Any]) -> tuple[str, str | None] | None:
    calls: list[str] = []
    outputs: list[str] = []
    for at, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            for key in ("call_id", "name", "arguments"):
                if not isinstance(item.get(key), str):
                    where = f"input[{at}].{key}"
                    return f"Missing required parameter: '{where}'.", where
            calls.append(item["call_id"])
        elif item.get("type") == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                where = f"input[{at}].call_id"
                return f"Missing required parameter: '{where}'.", where
            if not isinstance(item.get("output"), str | list):
                where = f"input[{at}].output"
                return f"Invalid type for '{where}'.", where
            if item["call_id"] not in calls:
                return (
                    f"No tool call found for function call output with call_id {item['call_id']}.",
                    "input",
                )
            outputs.append(item["call_id"])
    for call_id in calls:
        if call_id not in outputs:
            return f"No tool output found for function call {call_id}.", "input"
    return None
