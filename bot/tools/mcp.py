"""The MCP boundary: a connection to every configured server, their tools, and calls to them.

    async with Toolbox(load_tool_servers(path, environ), metrics=metrics) as toolbox:
        toolbox.specs(Toolset.of(["github"]))      # the tools offered to the model here
        toolbox.needs_approval("github__create_issue")   # True: a person approves first
        toolbox.approval_text("github__create_issue", '{"title": "x"}')   # what they see
        result = await toolbox.call("github__search_issues", '{"query": "login bug"}')
        result.text, result.is_error, result.summary
        toolbox.status()                           # which servers are up, for /readyz

Only this module imports the ``mcp`` SDK (it speaks the protocol: both of its eras, streamable
HTTP and stdio). Each server's connection lives in a task of its own, because the SDK's task
groups must be entered and left by one task and a transport failure cancels that task: the
task connects, lists the tools, holds the connection and refreshes the list when the server
says it changed; when the connection fails it tries again with backoff, and meanwhile that
server's tools are missing. Nothing a server does raises out of ``call``: errors, timeouts and
lost connections come back as error results for the model. Cancelling ``call`` (Stop) cancels
the call on the server too (the SDK sends ``notifications/cancelled``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from importlib import metadata
from types import TracebackType
from typing import Any, Literal

import httpx2
import mcp.types as types
from mcp.client import Client, IncomingMessage
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ListenNotSupportedError
from mcp.shared.exceptions import MCPError

from bot.metrics import Metrics
from bot.tools.calls import (
    Outcome,
    ToolResult,
    ToolSpec,
    cut,
    in_full,
    parse_arguments,
    summarize,
)
from bot.tools.config import (
    HttpTransport,
    ToolServer,
    ToolServers,
    Toolset,
    exposed_name,
)

log = logging.getLogger(__name__)


def _version() -> str:
    try:
        return metadata.version("slack-stream-bot")
    except metadata.PackageNotFoundError:
        return "0"


State = Literal["connecting", "up", "down"]

_CLIENT_INFO = types.Implementation(name="slack-stream-bot", version=_version())
_MAX_PAGES = 100  # of a tool list: a server that pages forever cannot hang the bot
_CLOSE_TIMEOUT = 10.0  # a stdio server gets a few seconds to exit on its own; then it is killed
_PROBLEM_CHARS = 200
_STABLE = 60.0  # seconds up after which a dropped connection is retried without backoff
_EVERY_TOOL = Toolset()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between attempts to reach a server that is down: ``first`` seconds, ``factor``
    times longer after each failure, at most ``maximum``; each wait varies by ±``jitter``."""

    first: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0
    jitter: float = 0.2


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """One server as /readyz and the logs tell it; ``problem`` is the last failure, if down."""

    name: str
    state: State
    tools: int
    problem: str | None


class Toolbox:
    """The tools of every configured MCP server, for the model to call (see the module doc).

    Entering connects to every server at once and waits up to the file's ``connect_timeout``;
    a server that is down does not stop the bot: it is retried in the background. Leaving
    closes every connection (a stdio server's process ends)."""

    def __init__(
        self,
        config: ToolServers,
        *,
        metrics: Metrics,
        backoff: Backoff = Backoff(),
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._links = {
            server.name: _Link(
                server,
                connect_timeout=config.connect_timeout,
                backoff=backoff,
                rand=rand,
                metrics=metrics,
                on_change=self._reindex,
                clock=clock,
            )
            for server in config.servers
        }
        self._index: dict[str, _Entry] = {}

    async def __aenter__(self) -> Toolbox:
        for link in self._links.values():
            link.start()
        try:
            async with asyncio.timeout(self._config.connect_timeout + 1.0):
                await asyncio.gather(*(link.settled() for link in self._links.values()))
        except TimeoutError:
            pass  # each link bounds its own attempt; this is a backstop
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    def specs(self, toolset: Toolset = _EVERY_TOOL) -> tuple[ToolSpec, ...]:
        """The tools to offer the model: those of connected servers, within their allow-lists
        and ``toolset``, in the file's order."""
        return tuple(
            entry.spec
            for entry in self._index.values()
            if entry.link.state != "down" and toolset.admits(entry.spec.server, entry.spec.tool)
        )

    def needs_approval(self, name: str) -> bool:
        """Whether the tool runs only after a person approves: ``confirm`` in the file, or
        neither does the file ``trust`` it nor does the server annotate it ``readOnlyHint:
        true`` or ``destructiveHint: false`` (see ``_needs_approval``)."""
        entry = self._index.get(name)
        return entry is not None and entry.spec.needs_approval

    def summary(self, name: str, arguments_json: str) -> str:
        """The one line ``call`` would give as ``summary`` (for an approval prompt)."""
        entry = self._index.get(name)
        if entry is None:
            return summarize("unknown", name[:64], "")
        return summarize(entry.spec.server, entry.spec.tool, arguments_json)

    def approval_text(self, name: str, arguments_json: str) -> str:
        """The call in full, for the person who approves it: mrkdwn, ready to post (see
        ``bot.tools.calls.in_full``)."""
        entry = self._index.get(name)
        if entry is None:
            return in_full("unknown", name[:64], "")
        return in_full(entry.spec.server, entry.spec.tool, arguments_json)

    async def call(
        self,
        name: str,
        arguments_json: str,
        *,
        toolset: Toolset = _EVERY_TOOL,
        approved: bool = False,
    ) -> ToolResult:
        """Call the tool the model named, within its server's timeout; every failure is an
        error result, never an exception. A tool outside ``toolset`` is unknown; one that
        needs approval runs only with ``approved``. Cancelling this cancels the call."""
        entry = self._index.get(name)
        if entry is None or not toolset.admits(entry.spec.server, entry.spec.tool):
            self._metrics.tool_calls.labels(server="unknown", tool="unknown", outcome="error").inc()
            return ToolResult(
                f"There is no tool named {name[:64]!r} here.", "error", self.summary(name, "")
            )
        spec, server = entry.spec, entry.link.server
        summary = summarize(spec.server, spec.tool, arguments_json)
        try:  # first: a call that cannot run is not put to anyone for approval
            arguments = parse_arguments(arguments_json)
        except ValueError as exc:
            self._metrics.tool_calls.labels(
                server=spec.server, tool=spec.tool, outcome="error"
            ).inc()
            return ToolResult(str(exc), "error", summary)
        if spec.needs_approval and not approved:
            self._metrics.tool_calls.labels(
                server=spec.server, tool=spec.tool, outcome="error"
            ).inc()
            return ToolResult("This tool runs only after a person approves it.", "error", summary)
        started = self._clock()
        text = ""
        outcome: Outcome = "error"
        try:
            async with asyncio.timeout(server.timeout):
                result = await entry.link.call(spec.tool, arguments)
            text = _result_text(result)
            outcome = "error" if result.is_error else "ok"
        except TimeoutError:
            text = (
                f"The tool did not answer within {server.timeout:g} seconds; the call was "
                "cancelled."
            )
            outcome = "timeout"
        except asyncio.CancelledError:
            self._observe(spec, "cancelled", started)
            raise
        except _Unavailable as exc:
            text = str(exc)
        except MCPError as exc:
            text = f"The tool's server refused the call: {exc.message}"
        except Exception as exc:  # the SDK's own checks (a result off its schema…): one call lost
            log.warning("MCP tool %s.%s failed: %s", spec.server, spec.tool, _problem(exc))
            text = f"The call failed: {_problem(exc)}"
        self._observe(spec, outcome, started)
        return ToolResult(cut(text, server.max_result_chars), outcome, summary)

    def status(self) -> tuple[ServerStatus, ...]:
        return tuple(
            ServerStatus(
                name=link.server.name,
                state=link.state,
                tools=len(link.tools) if link.state != "down" else 0,
                problem=link.problem if link.state != "up" else None,
            )
            for link in self._links.values()
        )

    def readiness(self) -> dict[str, Callable[[], Awaitable[bool]]]:
        """One check per server (``mcp:<name>``, true while it is connected), for /readyz."""

        def check(link: _Link) -> Callable[[], Awaitable[bool]]:
            async def up() -> bool:
                return link.state == "up"

            return up

        return {f"mcp:{name}": check(link) for name, link in self._links.items()}

    def _observe(self, spec: ToolSpec, outcome: str, started: float) -> None:
        self._metrics.tool_calls.labels(server=spec.server, tool=spec.tool, outcome=outcome).inc()
        self._metrics.tool_call_seconds.labels(server=spec.server).observe(
            max(0.0, self._clock() - started)
        )

    def _reindex(self) -> None:
        index: dict[str, _Entry] = {}
        # A server that went down keeps its last tools here (not in ``specs``): a call to one
        # of them, from a conversation that saw it, tries to reconnect.
        for link in self._links.values():
            for tool in link.tools:
                name = exposed_name(link.server.name, tool.name)
                if name in index:
                    log.warning(
                        "MCP tools %s.%s and %s.%s would both be %s; only the first is offered",
                        index[name].spec.server,
                        index[name].spec.tool,
                        link.server.name,
                        tool.name,
                        name,
                    )
                    continue
                index[name] = _Entry(link, _spec(name, link.server, tool))
        self._index = index

    async def _close(self) -> None:
        await asyncio.gather(*(link.close() for link in self._links.values()))


@dataclass(frozen=True, slots=True)
class _Entry:
    link: _Link
    spec: ToolSpec


class _Unavailable(Exception):
    """The tool's server cannot be reached now; the message says so to the model."""


class _Link:
    """One server's connection, kept by a task of its own (see the module doc)."""

    def __init__(
        self,
        server: ToolServer,
        *,
        connect_timeout: float,
        backoff: Backoff,
        rand: Callable[[], float],
        metrics: Metrics,
        on_change: Callable[[], None],
        clock: Callable[[], float],
    ) -> None:
        self.server = server
        self._clock = clock
        self.state: State = "connecting"
        self.tools: tuple[types.Tool, ...] = ()
        self.problem: str | None = None
        self._connect_timeout = connect_timeout
        self._backoff = backoff
        self._rand = rand
        self._up = metrics.tool_server_up.labels(server=server.name)
        self._on_change = on_change
        self._client: Client | None = None
        self._up_since: float | None = None  # while connected
        self._dropped_for: str | None = None  # why this side dropped the connection
        self._attempts = 0  # attempts that ended, connected or not
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self._stale = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._up.set(0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mcp-{self.server.name}")

    async def settled(self) -> None:
        """Return once the first attempt to connect has ended, either way."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._attempts > 0 or self._closing)

    async def call(self, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        client = await self._connected()
        try:
            return await client.call_tool(tool, arguments)
        except MCPError as exc:
            if exc.code == types.CONNECTION_CLOSED:
                self._drop(client, "connection closed")
                raise _Unavailable(
                    f"The connection to the tool's server was lost ({exc.message}); the bot "
                    "is reconnecting. The call may or may not have run."
                ) from None
            if exc.code == types.INVALID_REQUEST and "session" in exc.message.lower():
                # The server no longer knows this session (it restarted or expired it): the
                # call did not run, so it is safe to send once more on a new session.
                self._drop(client, f"session gone: {exc.message}")
                client = await self._connected()
                return await client.call_tool(tool, arguments)
            raise

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        async with self._changed:
            self._changed.notify_all()
        task = self._task
        if task is None:
            return
        if self._client is None:
            task.cancel()  # connecting or waiting to: nothing to close gracefully
        done, _ = await asyncio.wait([task], timeout=_CLOSE_TIMEOUT)
        if not done:
            log.warning("MCP server %s did not close in time; cancelling", self.server.name)
            task.cancel()
            await asyncio.wait([task], timeout=_CLOSE_TIMEOUT)
        if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("MCP server %s: its connection task failed: %s", self.server.name, exc)

    async def _connected(self) -> Client:
        """The live client; when there is none, try now (skipping any backoff) and wait for
        that attempt's end."""
        if self._client is not None:
            return self._client
        seen = self._attempts
        self._wake.set()
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._client is not None or self._attempts > seen or self._closing
            )
        if self._client is None:
            raise _Unavailable(
                f"The tool's server {self.server.name!r} is not reachable right now"
                f" ({self.problem or 'closing'})."
            )
        return self._client

    def _drop(self, client: Client, reason: str) -> None:
        if self._client is client:
            self._client, self._dropped_for = None, reason
            self._wake.set()

    def _mark_stale(self) -> None:
        self._stale = True
        self._wake.set()

    async def _run(self) -> None:
        delay = self._backoff.first
        while not self._closing:
            self._wake.clear()
            self._dropped_for = None
            problem = "closed by the server"
            try:
                await self._session()
            except BaseException as exc:  # the SDK's task groups raise groups of anything
                if _cancelling() or isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise  # closing: this task itself was cancelled
                problem = _problem(exc)
            problem = self._dropped_for or problem
            up_since, self._up_since, self._client = self._up_since, None, None
            self._up.set(0)
            if self._closing:
                break
            if up_since is not None:
                # It was up: its tools stay offered while it reconnects (at once for a call).
                log.warning(
                    "MCP server %s: connection lost (%s); reconnecting", self.server.name, problem
                )
                self.state, self.problem = "connecting", problem
                if self._clock() - up_since >= _STABLE:
                    delay = self._backoff.first  # (one that keeps dropping soon keeps backing off)
            elif self.state != "down":
                log.warning(
                    "MCP server %s is not reachable (%s); its tools are missing until it is, "
                    "retrying in the background",
                    self.server.name,
                    problem,
                )
            else:
                log.debug("MCP server %s still not reachable: %s", self.server.name, problem)
            if up_since is None:
                self.state, self.problem = "down", problem  # its last tools stay callable
                self._attempts += 1
                self._on_change()
                async with self._changed:
                    self._changed.notify_all()
            await self._sleep(delay)
            delay = min(delay * self._backoff.factor, self._backoff.maximum)

    async def _session(self) -> None:
        """Connect, list the tools, then hold the connection until it drops or we close."""
        watcher: asyncio.Task[None] | None = None
        try:
            async with AsyncExitStack() as stack:
                async with asyncio.timeout(self._connect_timeout):
                    client = await stack.enter_async_context(await self._open(stack))
                    tools = await self._list(client)
                self._client, self._up_since = client, self._clock()
                self.state, self.problem, self.tools = "up", None, tools
                self._stale = False
                self._attempts += 1
                self._up.set(1)
                self._on_change()
                async with self._changed:
                    self._changed.notify_all()
                log.info(
                    "MCP server %s connected (protocol %s): %d tools",
                    self.server.name,
                    client.protocol_version,
                    len(tools),
                )
                if client.protocol_version not in types.version.HANDSHAKE_PROTOCOL_VERSIONS:
                    watcher = asyncio.create_task(
                        self._watch(client), name=f"mcp-{self.server.name}-listen"
                    )
                while not self._closing and self._client is client:
                    await self._wake.wait()
                    self._wake.clear()
                    if self._stale and self._client is client and not self._closing:
                        self._stale = False
                        await self._refresh(client)
                if watcher is not None:
                    watcher.cancel()  # before the session closes, so the listen ends cleanly
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.wait([watcher])

    async def _open(self, stack: AsyncExitStack) -> Client:
        transport = self.server.transport
        if isinstance(transport, HttpTransport):
            http = await stack.enter_async_context(
                httpx2.AsyncClient(
                    headers={k: v.get_secret_value() for k, v in transport.headers.items()},
                    # Reads wait as long as a call may: every call has its own timeout.
                    timeout=httpx2.Timeout(self._connect_timeout, read=None),
                )
            )
            stream = streamable_http_client(transport.url, http_client=http)
        else:
            stream = stdio_client(
                StdioServerParameters(
                    command=transport.command,
                    args=list(transport.args),
                    env={k: v.get_secret_value() for k, v in transport.env.items()},
                    cwd=transport.cwd,
                )
            )
        return Client(
            stream,
            mode=self.server.protocol,
            message_handler=self._on_message,
            client_info=_CLIENT_INFO,
            cache=None,  # the tool list is kept here and refreshed when the server says so
        )

    async def _list(self, client: Client) -> tuple[types.Tool, ...]:
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        offered = {tool.name for tool in tools}
        for key, named in (
            ("allow", self.server.allow or frozenset()),
            ("confirm", self.server.confirm),
            ("trust", self.server.trust),
        ):
            if missing := named - offered:
                log.warning(
                    "MCP server %s offers no tool named %s (in its %s list)",
                    self.server.name,
                    ", ".join(sorted(missing)),
                    key,
                )
        return tuple(tool for tool in tools if self.server.allows(tool.name))

    async def _refresh(self, client: Client) -> None:
        try:
            async with asyncio.timeout(self._connect_timeout):
                tools = await self._list(client)
        except Exception as exc:
            log.warning(
                "MCP server %s: cannot refresh its tool list (%s); reconnecting",
                self.server.name,
                _problem(exc),
            )
            self._drop(client, "tool list unreadable")
            return
        before = {tool.name for tool in self.tools}
        self.tools = tools
        self._on_change()
        log.info(
            "MCP server %s: tool list changed: %d tools (%s)",
            self.server.name,
            len(tools),
            _difference(before, {tool.name for tool in tools}),
        )

    async def _watch(self, client: Client) -> None:
        """Keep a ``subscriptions/listen`` stream open for tool list changes (the 2026 protocol
        sends them only there); the events themselves arrive through ``_on_message``."""
        delay = self._backoff.first
        while self._client is client:
            try:
                async with AsyncExitStack() as stack:
                    async with asyncio.timeout(self._connect_timeout):
                        subscription = await stack.enter_async_context(
                            client.listen(tools_list_changed=True)
                        )
                    if not subscription.honored.tools_list_changed:
                        return
                    async for _ in subscription:
                        self._mark_stale()
                return  # the server closed the stream: it will send no more
            except ListenNotSupportedError:
                return
            except MCPError as exc:
                if exc.code == types.METHOD_NOT_FOUND:
                    return  # the server announces no changes
                problem = _problem(exc)
            except Exception as exc:
                problem = _problem(exc)
            log.debug("MCP server %s: listening again (%s)", self.server.name, problem)
            self._mark_stale()  # a change may have been missed meanwhile
            await asyncio.sleep(delay)
            delay = min(delay * self._backoff.factor, self._backoff.maximum)

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self._mark_stale()
        elif isinstance(message, Exception):
            log.debug("MCP server %s: transport problem: %s", self.server.name, message)

    async def _sleep(self, delay: float) -> None:
        """Wait ``delay`` (jittered), or less when a call or shutdown wakes the link."""
        jittered = delay * (1 + self._backoff.jitter * (2 * self._rand() - 1))
        try:
            async with asyncio.timeout(jittered):
                await self._wake.wait()
        except TimeoutError:
            pass


def _spec(name: str, server: ToolServer, tool: types.Tool) -> ToolSpec:
    parameters: dict[str, Any] = dict(tool.input_schema)
    parameters["type"] = "object"
    parameters.setdefault("properties", {})
    return ToolSpec(
        name=name,
        description=(tool.description or tool.title or "").strip(),
        parameters=parameters,
        server=server.name,
        tool=tool.name,
        needs_approval=_needs_approval(server, tool),
    )


def _needs_approval(server: ToolServer, tool: types.Tool) -> bool:
    """``confirm`` in the file, else not when the file trusts the tool, else unless the server
    says it changes nothing (``readOnlyHint``) or nothing it cannot undo (``destructiveHint:
    false``). MCP's defaults (read-only false, destructive true) make a tool the server says
    nothing about possibly destructive: it waits for approval."""
    if server.confirms(tool.name):
        return True
    if server.trusts(tool.name):
        return False
    hints = tool.annotations
    if hints is None:
        return True
    return not (hints.read_only_hint is True or hints.destructive_hint is False)


def _result_text(result: types.CallToolResult) -> str:
    """The content of a result as text for the model; what is not text is named."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.ImageContent | types.AudioContent):
            parts.append(f"[{block.type}: {block.mime_type}, {len(block.data) * 3 // 4:,} bytes]")
        elif isinstance(block, types.ResourceLink):
            parts.append(f"[resource link: {block.uri} ({block.name})]")
        elif isinstance(block, types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, types.TextResourceContents):
                parts.append(resource.text)
            else:
                parts.append(f"[resource: {resource.uri} ({resource.mime_type or 'binary'})]")
    if not parts and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False, default=str)
    return "\n\n".join(parts)


def _problem(exc: BaseException) -> str:
    """A short description of a failure: the innermost cause of an exception group."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = next(
            (e for e in exc.exceptions if not isinstance(e, asyncio.CancelledError)),
            exc.exceptions[0],
        )
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= _PROBLEM_CHARS else text[: _PROBLEM_CHARS - 1] + "…"


def _difference(before: set[str], after: set[str]) -> str:
    added, removed = sorted(after - before), sorted(before - after)
    parts = [f"+{name}" for name in added] + [f"-{name}" for name in removed]
    return ", ".join(parts) or "same names"


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
