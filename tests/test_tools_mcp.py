"""Tools through MCP servers: the servers file, and the toolbox against a real MCP server
(tests/mcp_servers.py) over streamable HTTP on loopback and over stdio."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from bot.errors import ConfigError
from bot.metrics import Metrics
from bot.tools import Backoff, Toolbox, ToolServer, ToolServers, Toolset, load_tool_servers
from bot.tools.calls import cut, in_full, summarize
from bot.tools.config import HttpTransport, StdioTransport, exposed_name
from tests.mcp_servers import ROOT, McpHttpServer, stdio_command
from tests.redis_server import free_port

FAST = Backoff(first=0.1, maximum=0.5)


# -- the servers file ----------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mcp.toml"
    path.write_text(text)
    return str(path)


def problems(tmp_path: Path, text: str, environ: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_tool_servers(write(tmp_path, text), environ or {})
    return "\n".join(caught.value.problems)


def test_the_file_gives_both_transports_with_secrets_from_the_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        connect_timeout = 3
        [defaults]
        timeout = 20
        [servers.github]
        url = "https://api.example.com/mcp/"
        headers = { Authorization = { env = "GH_TOKEN", prefix = "Bearer " } }
        allow = ["search_issues", "create_issue"]
        confirm = ["create_issue"]
        [servers.files]
        command = "npx"
        args = ["-y", "server-filesystem", "/srv/docs"]
        env = { API_KEY = { env = "FILES_KEY" } }
        cwd = "/srv"
        timeout = 5
        max_result_chars = 1000
        confirm = true
        protocol = "legacy"
        """,
    )
    servers = load_tool_servers(path, {"GH_TOKEN": "ghp_secretvalue123", "FILES_KEY": "k-1"})

    github, files = servers.servers
    assert servers.connect_timeout == 3
    assert isinstance(github.transport, HttpTransport)
    assert github.transport.headers["Authorization"].get_secret_value() == (
        "Bearer ghp_secretvalue123"
    )
    assert "ghp_secretvalue123" not in repr(servers)  # logs of the config show no secret
    assert (github.timeout, github.max_result_chars, github.protocol) == (20, 20_000, "auto")
    assert github.allows("search_issues") and not github.allows("delete_repo")
    assert github.confirms("create_issue") and not github.confirms("search_issues")
    assert isinstance(files.transport, StdioTransport)
    assert files.transport.args == ("-y", "server-filesystem", "/srv/docs")
    assert files.transport.env["API_KEY"].get_secret_value() == "k-1"
    assert files.transport.cwd == Path("/srv")
    assert (files.timeout, files.max_result_chars, files.protocol) == (5, 1000, "legacy")
    assert files.allows("anything") and files.confirms("anything")


def test_trust_lists_tools_that_never_wait_and_contradictions_are_refused(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        """
        [servers.github]
        url = "https://api.example.com/mcp/"
        allow = ["search_issues", "get_issue", "create_issue"]
        confirm = ["create_issue"]
        trust = ["search_issues", "get_issue"]
        """,
    )
    (github,) = load_tool_servers(path, {}).servers
    assert github.trust == {"search_issues", "get_issue"}
    assert github.trusts("get_issue") and not github.trusts("create_issue")
    said = problems(
        tmp_path,
        """
        [servers.both]
        command = "run"
        confirm = ["create_issue", "close_issue"]
        trust = ["close_issue", "search"]
        [servers.everything]
        command = "run"
        confirm = true
        trust = ["search"]
        [servers.outside]
        command = "run"
        allow = ["search"]
        trust = ["search", "delete_repo"]
        [servers.word]
        command = "run"
        trust = true
        """,
    )
    assert "servers.both: close_issue: both in confirm and in trust; pick one" in said
    assert "servers.everything: trust beside confirm = true" in said
    assert "servers.outside: trust names delete_repo, which allow leaves out" in said
    assert "servers.word.trust: Input should be a valid list" in said


def test_no_file_means_no_tools(tmp_path: Path) -> None:
    assert load_tool_servers(None, {}) == ToolServers()
    assert load_tool_servers(write(tmp_path, ""), {}).servers == ()
    with pytest.raises(ConfigError, match="cannot read"):
        load_tool_servers(str(tmp_path / "missing.toml"), {})
    assert "not valid TOML" in problems(tmp_path, "[servers.x\n")


def test_a_secret_written_in_the_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    said = problems(
        tmp_path,
        """
        [servers.a]
        url = "https://a.example/mcp"
        headers = { Authorization = "Bearer hunter2hunter2" }
        [servers.b]
        command = "run"
        env = { TOKEN = "hunter3hunter3" }
        [servers.c]
        command = "run"
        args = ["--token=ghp_abcdefghijklmnopqrstuvwxyz012345"]
        [servers.d]
        url = "https://user:pw@d.example/mcp"
        [servers.e]
        url = "https://e.example/mcp?api_key=abc"
        """,
    )
    assert "servers.a.headers: Authorization: a value written in the file" in said
    assert "servers.b.env: TOKEN: a value written in the file" in said
    assert "servers.c.args: argument 1 looks like a secret" in said
    assert "servers.d.url: credentials in the URL" in said
    assert "servers.e.url: the query parameter 'api_key' looks like a secret" in said
    for secret in ("hunter2", "hunter3", "ghp_abc", ":pw@"):
        assert secret not in said


def test_a_missing_variable_is_named_at_start_up(tmp_path: Path) -> None:
    text = """
        [servers.github]
        url = "https://api.example.com/mcp/"
        headers = { Authorization = { env = "GH_TOKEN", prefix = "Bearer " } }
        [servers.files]
        command = "npx"
        env = { KEY = { env = "FILES_KEY" } }
        """
    said = problems(tmp_path, text, {"FILES_KEY": ""})
    assert "servers.github.headers.Authorization: the environment variable GH_TOKEN is not set" in (
        said
    )
    assert "servers.files.env.KEY: the environment variable FILES_KEY is not set" in said


def test_malformed_entries_are_named(tmp_path: Path) -> None:
    said = problems(
        tmp_path,
        """
        [servers.both]
        url = "https://a.example/mcp"
        command = "run"
        [servers.neither]
        allow = ["x"]
        [servers.mixed]
        url = "https://a.example/mcp"
        args = ["x"]
        [servers.typo]
        command = "run"
        timout = 3
        [servers.double__under]
        command = "run"
        [servers.ftp]
        url = "ftp://a.example/mcp"
        """,
    )
    assert "servers.both: give either url (streamable HTTP) or command (stdio)" in said
    assert "servers.neither: give either url" in said
    assert "servers.mixed: args, env and cwd are for a stdio server" in said
    assert "servers.typo.timout: Extra inputs are not permitted" in said
    assert "servers.double__under: use letters, digits" in said
    assert "servers.ftp.url: expected an http:// or https:// URL" in said


def test_exposed_names_fit_openai_function_names() -> None:
    assert exposed_name("github", "search_issues") == "github__search_issues"
    assert exposed_name("fs", "read.file/v2") == "fs__read_file_v2"
    long = exposed_name("server", "t" * 100)
    assert len(long) == 64 and long != exposed_name("server", "t" * 101)


@given(
    server=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}", fullmatch=True),
    tool=st.text(min_size=1, max_size=200),
)
def test_every_tool_name_becomes_a_valid_function_name(server: str, tool: str) -> None:
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", exposed_name(server, tool))


def test_toolsets_name_servers_and_single_tools() -> None:
    toolset = Toolset.of(["github", "files.read_file"])
    assert toolset.admits("github", "anything")
    assert toolset.admits("files", "read_file") and not toolset.admits("files", "write_file")
    assert Toolset().admits("jira", "x") and not Toolset.of([]).admits("jira", "x")
    with pytest.raises(ValueError, match=r"'files\.'"):
        Toolset.of(["files."])
    servers = ToolServers(servers=(ToolServer("github", HttpTransport("http://x", {})),))
    assert servers.toolset_problems(toolset) == [
        "no MCP server named 'files' (tools entry 'files.read_file')"
    ]


def test_summaries_show_keys_and_short_values_never_secrets() -> None:
    line = summarize(
        "github",
        "search",
        '{"query": "login\\nbug", "limit": 5, "api_key": "plain", "note": "'
        + "ghp_abcdefghijklmnop1234567890"
        + '", "opaque": "Zx9Qw8Er7Ty6Ui5Op4As3Df2", "labels": ["a", "b"], "long": "'
        + "y" * 100
        + '"}',
    )
    assert line.startswith('github.search(query="login bug", limit=5, api_key=[hidden], ')
    assert "note=[hidden]" in line and "opaque=[hidden]" in line and "labels=[2 items]" in line
    assert "plain" not in line and "ghp_" not in line and "Zx9Q" not in line
    assert "\n" not in line and len(line) <= 200
    assert summarize("web", "echo", '{"text": "hi", "password": "pw123456"}') == (
        'web.echo(text="hi", password=[hidden])'
    )
    sha, uuid = "0123456789abcdef0123456789abcdef01234567", "123e4567-e89b-12d3-a456-426614174000"
    ids = json.dumps({"sha": sha, "id": uuid})
    assert "[hidden]" not in summarize("git", "show", ids)  # ids are not secrets
    assert summarize("s", "t", "not json") == "s.t(…)"
    assert len(summarize("s", "t", '{"a": "' + "b c " * 200 + '"}')) <= 200


def test_cut_says_how_much_was_left_out() -> None:
    assert cut("short", 10) == "short"
    assert cut("x" * 12_355, 10) == "x" * 10 + "\n[cut: 12,345 more characters]"


def test_the_call_in_full_hides_only_what_looks_secret_at_any_depth() -> None:
    arguments = {
        "query": "login bug",
        "note": "ghp_abcdefghijklmnop1234567890",
        "auth": {"user": "ann", "password": "pw"},
        "headers": [{"api_key": "plain"}, "Zx9Qw8Er7Ty6Ui5Op4As3Df2"],
        "limit": 5,
    }
    text = in_full("github", "search", json.dumps(arguments))
    assert text == (
        "```\ngithub.search({\n"
        '  "query": "login bug",\n'
        '  "note": "[hidden]",\n'
        '  "auth": "[hidden]",\n'
        '  "headers": [\n    {\n      "api_key": "[hidden]"\n    },\n    "[hidden]"\n  ],\n'
        '  "limit": 5\n'
        "})\n```"
    )
    for secret in ("ghp_", "plain", "Zx9Q", '"pw"'):
        assert secret not in text


def test_the_call_in_full_cannot_break_out_of_its_block() -> None:
    arguments = {"sql": "SELECT 1```\n<!channel> *bold* & `x`", "x": "a\u202eb\u200bc"}
    text = in_full("db", "run_sql", json.dumps(arguments))
    assert text.count("```") == 2 and text.startswith("```\n") and text.endswith("\n```")
    assert "\\u0060\\u0060\\u0060\\n&lt;!channel&gt; *bold* &amp; \\u0060x\\u0060" in text
    assert "a\\u202eb\\u200bc" in text  # a bidi override or a zero-width space shows as such
    # What is shown is the arguments exactly: unescaped for mrkdwn, it is their JSON.
    inner = text.removeprefix("```\ndb.run_sql(").removesuffix(")\n```")
    assert json.loads(inner.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")) == (
        arguments
    )


def test_a_long_call_in_full_is_cut_with_a_line_saying_how_much() -> None:
    text = in_full("db", "run_sql", json.dumps({"sql": "<" * 3000}))
    head = 'db.run_sql({\n  "sql": "'
    shown = (2500 - len(head)) // 4  # each "<" is posted as "&lt;"
    assert text == (
        f"```\n{head}{'&lt;' * shown}\n```\n"
        f"[… {3000 - shown + len(chr(34) + chr(10) + '})'):,} more characters not shown]"
    )
    assert 2500 < len(text) < 2600
    assert "not shown" not in in_full("db", "run_sql", json.dumps({"sql": "x" * 2400}))


def test_unreadable_arguments_are_named_not_shown() -> None:
    assert in_full("s", "t", "not json") == (
        "```\ns.t(…)\n```\nThe call cannot run: The arguments are not valid JSON "
        "(Expecting value: line 1 column 1 (char 0))."
    )
    assert in_full("s", "t", "") == "```\ns.t({})\n```"


# -- a live server ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def mcp_http() -> Iterator[McpHttpServer]:
    """The test MCP server over streamable HTTP, shared by the session (the tests leave its
    tool list as they found it)."""
    server = McpHttpServer.start_new()
    yield server
    server.stop()


def http_server(url: str, protocol: Literal["auto", "legacy"] = "auto") -> ToolServer:
    return ToolServer("web", HttpTransport(url, {}), protocol=protocol)


def stdio_server(
    protocol: Literal["auto", "legacy"] = "auto", env: Mapping[str, str] | None = None
) -> ToolServer:
    command, args = stdio_command()
    secrets = {name: SecretStr(value) for name, value in (env or {}).items()}
    return ToolServer(
        "local", StdioTransport(command, tuple(args), secrets, ROOT), protocol=protocol
    )


@asynccontextmanager
async def toolbox(*servers: ToolServer, metrics: Metrics | None = None) -> AsyncIterator[Toolbox]:
    config = ToolServers(servers=servers, connect_timeout=10.0)
    async with Toolbox(config, metrics=metrics or Metrics(), backoff=FAST) as box:
        yield box


EVERY_TOOL = Toolset()


def names(box: Toolbox, toolset: Toolset = EVERY_TOOL) -> set[str]:
    return {spec.name for spec in box.specs(toolset)}


def calls(metrics: Metrics, server: str, tool: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "slackbot_tool_calls_total", {"server": server, "tool": tool, "outcome": outcome}
    )
    return value or 0.0


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await _value(condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _value(value: bool | Awaitable[bool]) -> bool:
    return value if isinstance(value, bool) else await value


async def events_seen(box: Toolbox, event: str) -> int:
    """How often the server's ``slow`` tool recorded ``event`` (started, cancelled…)."""
    return (await box.call("web__events", "")).text.split(",").count(f"slow:{event}")


async def test_http_server_tools_are_listed_and_called(
    tmp_path: Path, mcp_http: McpHttpServer
) -> None:
    servers = load_tool_servers(
        write(
            tmp_path,
            f"""
            [servers.web]
            url = "{mcp_http.url}"
            headers = {{ X-Team-Token = {{ env = "TEAM_TOKEN", prefix = "team " }} }}
            """,
        ),
        {"TEAM_TOKEN": "s3cr3t"},
    )
    metrics = Metrics()
    async with Toolbox(servers, metrics=metrics) as box:
        (status,) = box.status()
        assert (status.name, status.state, status.problem) == ("web", "up", None)
        assert {"web__echo", "web__add", "web__slow", "web__delete_everything"} <= names(box)
        add = next(spec for spec in box.specs() if spec.name == "web__add")
        assert (add.server, add.tool, add.description) == ("web", "add", "Add two integers.")
        assert add.parameters["type"] == "object"
        assert set(add.parameters["properties"]) == {"a", "b"}
        assert await box.readiness()["mcp:web"]()

        result = await box.call("web__add", '{"a": 2, "b": 40}')
        assert (result.text, result.is_error, result.summary) == ("42", False, "web.add(a=2, b=40)")
        header = await box.call("web__header", '{"name": "X-Team-Token"}')
        assert header.text == "team s3cr3t"  # the header from the environment reached the server
        token = "ghp_abcdefghijklmnop1234567890"
        echoed = await box.call("web__echo", f'{{"text": "{token}"}}')
        assert echoed.text == token and echoed.summary == "web.echo(text=[hidden])"
    assert calls(metrics, "web", "add", "ok") == 1
    assert (
        metrics.registry.get_sample_value("slackbot_tool_call_seconds_count", {"server": "web"})
        == 3
    )


async def test_allow_list_and_toolset_limit_what_the_model_gets(mcp_http: McpHttpServer) -> None:
    server = replace(http_server(mcp_http.url), allow=frozenset({"echo", "add", "not_offered"}))
    async with toolbox(server) as box:
        assert names(box) == {"web__echo", "web__add"}
        assert names(box, Toolset.of(["web.echo"])) == {"web__echo"}
        assert names(box, Toolset.of([])) == set()

        outside_allow = await box.call("web__fail", "{}")
        assert outside_allow.is_error and "no tool named 'web__fail'" in outside_allow.text
        outside_toolset = await box.call("web__add", '{"a":1,"b":1}', toolset=Toolset.of([]))
        assert outside_toolset.is_error and "no tool named" in outside_toolset.text
        assert (await box.call("web__echo", '{"text": "hi"}')).text == "hi"


async def test_tool_failures_come_back_as_error_results(mcp_http: McpHttpServer) -> None:
    metrics = Metrics()
    async with toolbox(http_server(mcp_http.url), metrics=metrics) as box:
        failed = await box.call("web__fail", '{"reason": "disk full"}')
        assert (failed.outcome, failed.text) == ("error", "Error executing tool fail")
        invalid = await box.call("web__add", '{"a": "two"}')
        assert invalid.is_error and "validation error" in invalid.text
        not_json = await box.call("web__add", "{a: 1")
        assert not_json.is_error and "not valid JSON" in not_json.text
        not_object = await box.call("web__add", "[1, 2]")
        assert not_object.is_error and "JSON object" in not_object.text
        unknown = await box.call("web__nope", "{}")
        assert unknown.is_error and "no tool named 'web__nope'" in unknown.text
        assert (await box.call("web__echo", '{"text": "still fine"}')).text == "still fine"
    assert calls(metrics, "web", "fail", "error") == 1
    assert calls(metrics, "web", "add", "error") == 3
    assert calls(metrics, "unknown", "unknown", "error") == 1


async def test_a_big_result_is_cut_with_a_note(mcp_http: McpHttpServer) -> None:
    async with toolbox(replace(http_server(mcp_http.url), max_result_chars=1000)) as box:
        result = await box.call("web__big", '{"n": 5000}')
    assert not result.is_error
    assert result.text == "x" * 1000 + "\n[cut: 4,000 more characters]"


async def test_a_call_past_its_timeout_is_an_error_and_stops_on_the_server(
    mcp_http: McpHttpServer,
) -> None:
    metrics = Metrics()
    async with toolbox(replace(http_server(mcp_http.url), timeout=0.5), metrics=metrics) as box:
        cancelled = await events_seen(box, "cancelled")
        result = await box.call("web__slow", '{"seconds": 30}')
        assert (result.outcome, result.is_error) == ("timeout", True)
        assert "did not answer within 0.5 seconds" in result.text
        await until(lambda: more(events_seen(box, "cancelled"), cancelled))
    assert calls(metrics, "web", "slow", "timeout") == 1


async def test_stop_cancels_a_running_call_on_the_server(mcp_http: McpHttpServer) -> None:
    metrics = Metrics()
    async with toolbox(http_server(mcp_http.url), metrics=metrics) as box:
        started, cancelled = await events_seen(box, "started"), await events_seen(box, "cancelled")
        running = asyncio.create_task(box.call("web__slow", '{"seconds": 30}'))
        await until(lambda: more(events_seen(box, "started"), started))
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        await until(lambda: more(events_seen(box, "cancelled"), cancelled))
    assert calls(metrics, "web", "slow", "cancelled") == 1


async def more(count: Awaitable[int], than: int) -> bool:
    return await count > than


async def test_a_tool_waits_for_approval_unless_the_server_says_it_is_safe(
    mcp_http: McpHttpServer,
) -> None:
    async with toolbox(http_server(mcp_http.url)) as box:
        assert not box.needs_approval("web__echo")  # readOnlyHint: true
        assert not box.needs_approval("web__grow")  # destructiveHint: false
        assert box.needs_approval("web__delete_everything")  # destructiveHint: true
        assert box.needs_approval("web__note")  # no annotations: may be destructive
        assert box.needs_approval("web__remember")  # annotated, destructiveness unsaid
        assert not box.needs_approval("web__nope")  # unknown: refused by the call anyway
        assert {spec.name for spec in box.specs() if spec.needs_approval} == {
            "web__delete_everything",
            "web__note",
            "web__remember",
            "web__run_sql",
        }
        refused = await box.call("web__note", '{"text": "hi"}')
        assert refused.is_error and "approves" in refused.text
        assert (await box.call("web__note", '{"text": "hi"}', approved=True)).text == "noted: hi"


async def test_confirm_forces_approval_and_trust_lifts_it(mcp_http: McpHttpServer) -> None:
    server = replace(
        http_server(mcp_http.url),
        confirm=frozenset({"echo"}),
        trust=frozenset({"note", "delete_everything"}),
    )
    async with toolbox(server) as box:
        assert box.needs_approval("web__echo")  # read-only, but confirm in the file
        assert not box.needs_approval("web__note")  # unlabelled, but trusted
        assert not box.needs_approval("web__delete_everything")  # the admin's word wins
        assert box.needs_approval("web__remember")  # not named: the rule stands
        refused = await box.call("web__echo", '{"text": "hi"}')
        assert refused.is_error and "approves" in refused.text
        assert (await box.call("web__note", '{"text": "hi"}')).text == "noted: hi"
        assert (await box.call("web__delete_everything", "{}")).text == "nothing deleted"
    async with toolbox(replace(http_server(mcp_http.url), confirm_all=True)) as box:
        assert all(spec.needs_approval for spec in box.specs())


async def test_the_approval_text_shows_the_call_in_full(mcp_http: McpHttpServer) -> None:
    query = "DELETE FROM users WHERE created_at < now() - interval '90 days' OR 1=1"
    arguments = json.dumps({"sql": query, "params": ["a", "b"]})
    async with toolbox(http_server(mcp_http.url)) as box:
        assert box.summary("web__run_sql", arguments) == (
            'web.run_sql(sql="DELETE FROM users WHERE created_at < no…", params=[2 items])'
        )
        assert box.approval_text("web__run_sql", arguments) == (
            "```\nweb.run_sql({\n"
            '  "sql": "DELETE FROM users WHERE created_at &lt; now() - interval \'90 days\''
            ' OR 1=1",\n'
            '  "params": [\n    "a",\n    "b"\n  ]\n'
            "})\n```"
        )
        assert box.approval_text("web__nope", "{}") == "```\nunknown.web__nope({})\n```"


@pytest.mark.parametrize(
    ("transport", "protocol"), [("http", "auto"), ("http", "legacy"), ("stdio", "legacy")]
)
async def test_the_tool_list_refreshes_when_the_server_says_it_changed(
    mcp_http: McpHttpServer, transport: str, protocol: Literal["auto", "legacy"]
) -> None:
    # The 2026 protocol announces changes on a subscription, the 2025 one as notifications.
    server = http_server(mcp_http.url, protocol) if transport == "http" else stdio_server(protocol)
    extra = f"{server.name}__extra"
    async with toolbox(server) as box:
        assert extra not in names(box)
        try:
            assert (await box.call(f"{server.name}__grow", "")).text == "grown"
            await until(lambda: extra in names(box))
            assert (await box.call(extra, "")).text == "extra!"
        finally:
            await box.call(f"{server.name}__shrink", "")
        await until(lambda: extra not in names(box))


async def test_stdio_server_tools_are_listed_and_called_with_env_from_the_bot() -> None:
    async with toolbox(stdio_server(env={"TEAM_TOKEN": "s3cr3t"})) as box:
        assert {"local__echo", "local__add", "local__slow"} <= names(box)
        assert (await box.call("local__add", '{"a": 1, "b": 2}')).text == "3"
        assert (await box.call("local__env", '{"name": "TEAM_TOKEN"}')).text == "s3cr3t"
        # Only what the file names reaches the child, on top of a minimal environment.
        assert (await box.call("local__env", '{"name": "PYTEST_CURRENT_TEST"}')).text == "<unset>"


async def test_a_crashed_stdio_server_is_restarted_by_the_next_call() -> None:
    async with toolbox(stdio_server()) as box:
        crashed = await box.call("local__crash", "{}")
        assert crashed.is_error and "connection to the tool's server was lost" in crashed.text
        again = await box.call("local__add", '{"a": 2, "b": 2}')
        assert (again.text, again.is_error) == ("4", False)
        assert box.status()[0].state == "up"


async def test_a_server_down_at_start_up_does_not_stop_the_bot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    later = McpHttpServer(port=free_port())
    metrics = Metrics()
    try:
        async with toolbox(http_server(later.url), stdio_server(), metrics=metrics) as box:
            web, local = box.status()
            assert (web.state, web.tools, local.state) == ("down", 0, "up")
            assert web.problem and "ConnectError" in web.problem
            assert not await box.readiness()["mcp:web"]()
            assert up(metrics) == 0
            assert "MCP server web is not reachable" in caplog.text
            assert not any(name.startswith("web__") for name in names(box))
            unknown = await box.call("web__add", '{"a": 1, "b": 1}')
            assert unknown.is_error and "no tool named" in unknown.text

            await asyncio.to_thread(later.start)
            await until(lambda: "web__add" in names(box))  # retried in the background
            assert box.status()[0].state == "up"
            assert await box.readiness()["mcp:web"]() and up(metrics) == 1
            assert (await box.call("web__add", '{"a": 1, "b": 1}')).text == "2"
    finally:
        later.stop()


def up(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("slackbot_tool_server_up", {"server": "web"})


async def test_a_server_that_never_answers_holds_start_up_only_for_connect_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts the connection and the request, answers nothing
        writer.close()

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    config = ToolServers(
        servers=(http_server(f"http://127.0.0.1:{port}/mcp"),), connect_timeout=0.5
    )
    started = time.monotonic()
    async with listener, Toolbox(config, metrics=Metrics(), backoff=FAST) as box:
        (status,) = box.status()
        assert (status.state, status.problem) == ("down", "no answer in time")
        result = await box.call("web__add", "{}")
        assert result.is_error
    assert time.monotonic() - started < 5  # entering, and leaving while it retries


@pytest.mark.parametrize("protocol", ["auto", "legacy"])
async def test_a_restarted_http_server_is_reached_again_on_the_next_call(
    protocol: Literal["auto", "legacy"],
) -> None:
    restarting = McpHttpServer.start_new()
    try:
        async with toolbox(http_server(restarting.url, protocol)) as box:
            assert (await box.call("web__add", '{"a": 1, "b": 1}')).text == "2"
            await asyncio.to_thread(restarting.stop)
            await asyncio.to_thread(restarting.start)
            # The legacy protocol's session died with the old process: the call did not run
            # there, so it is sent again on a new session; the 2026 protocol has no session.
            result = await box.call("web__add", '{"a": 2, "b": 2}')
            assert (result.text, result.is_error) == ("4", False)
    finally:
        restarting.stop()
