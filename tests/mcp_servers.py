"""A real MCP server for the tool tests, built on the ``mcp`` SDK, run as a child process.

    server = McpHttpServer.start_new()     # streamable HTTP on a free loopback port
    server.url                             # 'http://127.0.0.1:PORT/mcp'
    server.stop(); server.start()          # same port: an outage and a recovery

    python -m tests.mcp_servers --stdio                 # what a stdio server entry runs
    python -m tests.mcp_servers --http 8123             # what McpHttpServer runs

Tools: ``echo`` and ``add`` (fast), ``slow`` (sleeps; records ``slow:started`` and
``slow:cancelled`` in ``events``), ``fail`` (raises: an ``isError`` result), ``big`` (a long
text), ``delete_everything`` (annotated destructive), ``env`` (a variable of the server's
environment), ``header`` (a request header the server received, HTTP only), ``crash`` (ends
the process), ``grow`` / ``shrink`` (add / remove the tool ``extra`` and say the tool list
changed), ``events`` (what ``slow`` recorded), ``note`` (no annotations), ``remember``
(annotated, but says nothing of being destructive), ``run_sql`` (echoes its query; no
annotations).

Annotations, for the approval rule: the tools that only read are ``readOnlyHint: true``;
``grow``, ``shrink`` and ``crash`` are ``destructiveHint: false``; ``delete_everything`` is
``destructiveHint: true``; ``note``, ``remember`` and ``run_sql`` leave it unsaid (so the bot
must ask before each call).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
READ_ONLY = ToolAnnotations(read_only_hint=True)
UNDOABLE = ToolAnnotations(read_only_hint=False, destructive_hint=False)


def build_server() -> MCPServer:
    server = MCPServer("test-tools")
    events: list[str] = []

    @server.tool(description="Repeat the text.", annotations=READ_ONLY)
    def echo(text: str) -> str:
        return text

    @server.tool(description="Add two integers.", annotations=READ_ONLY)
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(description="Sleep for a while, then answer.", annotations=READ_ONLY)
    async def slow(seconds: float) -> str:
        events.append("slow:started")
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            events.append("slow:cancelled")
            raise
        events.append("slow:finished")
        return f"slept {seconds}"

    @server.tool(description="What the slow tool recorded.", annotations=READ_ONLY)
    def events_seen() -> str:
        return ",".join(events)

    @server.tool(description="Always fails.", annotations=READ_ONLY)
    def fail(reason: str = "broken on purpose") -> str:
        raise RuntimeError(reason)

    @server.tool(description="A long text of n characters.", annotations=READ_ONLY)
    def big(n: int) -> str:
        return "x" * n

    @server.tool(
        description="Delete everything.",
        annotations=ToolAnnotations(destructive_hint=True, read_only_hint=False),
    )
    def delete_everything(confirm: bool = False) -> str:
        return "deleted" if confirm else "nothing deleted"

    @server.tool(description="A variable of this server's environment.", annotations=READ_ONLY)
    def env(name: str) -> str:
        return os.environ.get(name, "<unset>")

    @server.tool(description="A header of this request (HTTP only).", annotations=READ_ONLY)
    def header(name: str, ctx: Context) -> str:
        return (ctx.headers or {}).get(name.lower(), "<none>")

    @server.tool(description="End this server's process at once (a crash).", annotations=UNDOABLE)
    def crash() -> str:
        os._exit(3)

    @server.tool(description="Add the tool 'extra' and announce the change.", annotations=UNDOABLE)
    async def grow(ctx: Context) -> str:
        if not any(tool.name == "extra" for tool in await server.list_tools()):
            server.add_tool(
                lambda: "extra!", name="extra", description="Appeared later.", annotations=READ_ONLY
            )
        # The 2026 protocol delivers the change to listeners; the 2025 one as a notification.
        await ctx.notify_tools_changed()
        await ctx.session.send_tool_list_changed()
        return "grown"

    @server.tool(
        description="Remove the tool 'extra' and announce the change.", annotations=UNDOABLE
    )
    async def shrink(ctx: Context) -> str:
        if any(tool.name == "extra" for tool in await server.list_tools()):
            server.remove_tool("extra")
        await ctx.notify_tools_changed()
        await ctx.session.send_tool_list_changed()
        return "shrunk"

    @server.tool(description="Keep a note.")
    def note(text: str) -> str:
        return f"noted: {text}"

    @server.tool(
        description="Remember a fact.",
        annotations=ToolAnnotations(title="Remember", read_only_hint=False),
    )
    def remember(fact: str) -> str:
        return f"remembered: {fact}"

    @server.tool(description="Run a SQL statement (here: say which).")
    def run_sql(sql: str, params: list[str] | None = None) -> str:
        return f"ran: {sql}"

    # The tool's name is what the model sees; the Python name avoids shadowing the list.
    server.remove_tool("events_seen")
    server.add_tool(
        events_seen,
        name="events",
        description="What the slow tool recorded.",
        annotations=READ_ONLY,
    )
    return server


class McpHttpServer:
    """The test server as a child process on a loopback port that survives stop/start."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start_new(cls) -> McpHttpServer:
        server = cls()
        server.start()
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self, timeout: float = 20.0) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.mcp_servers", "--http", str(self.port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the MCP test server exited ({self._process.returncode})")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the MCP test server did not listen on port {self.port}")

    def stop(self) -> None:
        """An outage: the process is killed (a graceful stop waits for open event streams)."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait()
        self._process = None


def lab_tools(folder: Path, url: str, *, timeout: float) -> str:
    """An MCP_SERVERS_FILE naming the server at ``url`` as ``lab``; its path."""
    path = folder / f"mcp-{timeout:g}.toml"
    path.write_text(
        f'connect_timeout = 10\n[servers.lab]\nurl = "{url}"\ntimeout = {timeout:g}\n',
        encoding="utf-8",
    )
    return str(path)


def stdio_command() -> tuple[str, list[str]]:
    """The command and arguments of a stdio server entry that runs this module."""
    return sys.executable, ["-m", "tests.mcp_servers", "--stdio"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--stdio", action="store_true")
    mode.add_argument("--http", type=int, metavar="PORT")
    args = parser.parse_args()
    # A failing tool is logged with its traceback by the SDK; the tests expect the failures.
    logging.disable(logging.CRITICAL)
    server = build_server()
    if args.stdio:
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.http)


if __name__ == "__main__":
    main()
