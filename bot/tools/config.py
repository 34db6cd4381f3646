"""The MCP servers the bot may use, from the TOML file named by ``MCP_SERVERS_FILE``.

    servers = load_tool_servers("mcp.toml", os.environ)   # ConfigError lists every problem
    servers.servers[0].name                               # 'github'
    Toolset.of(["github", "files.read_file"])             # what one channel may use

File format::

    connect_timeout = 10             # seconds for each server at start-up (and each reconnect)

    [defaults]                       # every server's, unless it says otherwise
    timeout = 60                     # seconds per tool call
    max_result_chars = 20000         # a longer result is cut, with a note to the model

    [servers.github]                 # streamable HTTP: a url
    url = "https://api.githubcopilot.com/mcp/"
    headers = { Authorization = { env = "GITHUB_MCP_TOKEN", prefix = "Bearer " } }
    allow = ["search_issues", "get_issue", "create_issue"]   # absent: every tool
    confirm = ["create_issue"]       # run only after a person approves; true: every tool
    trust = ["search_issues"]        # run without approval, whatever the server says of them

    [servers.files]                  # stdio: a command, run as a child process
    command = "npx"
    args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv/docs"]
    env = { API_KEY = { env = "FILES_API_KEY" } }
    cwd = "/srv"
    timeout = 10
    protocol = "legacy"              # skip the 2026 protocol's discovery probe (default "auto")

Which calls wait for a person's approval: every tool of a server, unless the server annotates
it ``readOnlyHint: true`` or ``destructiveHint: false`` (MCP's defaults make an unlabelled tool
possibly destructive), or the file names it in ``trust``; a tool in ``confirm`` always waits.
A tool both in ``confirm`` and ``trust``, or ``trust`` beside ``confirm = true``, is refused.

Header and ``env`` values always name an environment variable of the bot: secrets are never
written in this file, and one that looks written (a token in ``args`` or in the url) is refused.
A variable that is not set is a start-up error naming it (never its value).

The model sees a tool as ``<server>__<tool>`` (``github__search_issues``): OpenAI's function
names allow ``[a-zA-Z0-9_-]{1,64}``, so other characters become ``_`` and a long name is
shortened with a hash; ``bot/tools/mcp.py`` maps it back.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bot.errors import ConfigError

SETTING = "MCP_SERVERS_FILE"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RESULT_CHARS = 20_000
DEFAULT_CONNECT_TIMEOUT = 10.0

_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_-]")
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
_SEPARATOR = "__"

# Names under which a value is a credential, and values that look like one (token prefixes of
# common services, HTTP auth schemes, JWTs). Used to refuse secrets written in the file and to
# keep argument values out of the summaries shown in Slack.
SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[-_]?key|access[-_]?key|private[-_]?key|auth"
    r"|credential|cookie|session|signature|bearer|otp|^pin$|^key$",
    re.IGNORECASE,
)
_SECRET_VALUE = re.compile(
    r"^(bearer|basic|token)\s+\S+"
    r"|^(ghp|gho|ghu|ghs|ghr|github_pat|glpat|xox[abprs]|xapp|sk|sk-proj|sk-ant|hf|npm|pypi)[-_]\w{8,}"
    r"|^AKIA[0-9A-Z]{12,}|^AIza[\w-]{20,}|^eyJ[\w-]+\.[\w-]+\.",
    re.IGNORECASE,
)
_OPAQUE = re.compile(r"^[A-Za-z0-9+/=_.-]{24,}$")


def looks_secret(value: str) -> bool:
    """Whether ``value`` looks like a credential: a known token shape, or a long opaque string
    mixing upper case, lower case and digits (hex ids and UUIDs do not count)."""
    value = value.strip()
    if _SECRET_VALUE.search(value):
        return True
    return bool(
        _OPAQUE.match(value)
        and re.search(r"[a-z]", value)
        and re.search(r"[A-Z]", value)
        and re.search(r"[0-9]", value)
    )


@dataclass(frozen=True, slots=True)
class HttpTransport:
    """A server reached over streamable HTTP; header values came from the environment."""

    url: str
    headers: Mapping[str, SecretStr]


@dataclass(frozen=True, slots=True)
class StdioTransport:
    """A server run as a child process speaking over its stdin and stdout."""

    command: str
    args: tuple[str, ...]
    env: Mapping[str, SecretStr]  # on top of a minimal inherited environment (PATH, HOME…)
    cwd: Path | None


@dataclass(frozen=True, slots=True)
class ToolServer:
    """One MCP server: how to reach it and what of it the bot uses."""

    name: str
    transport: HttpTransport | StdioTransport
    allow: frozenset[str] | None = None  # the server's tool names; None: every tool
    confirm: frozenset[str] = frozenset()  # tools that run only after a person approves
    confirm_all: bool = False
    trust: frozenset[str] = frozenset()  # tools that never wait for approval
    timeout: float = DEFAULT_TIMEOUT
    max_result_chars: int = DEFAULT_MAX_RESULT_CHARS
    protocol: Literal["auto", "legacy"] = "auto"

    def allows(self, tool: str) -> bool:
        return self.allow is None or tool in self.allow

    def confirms(self, tool: str) -> bool:
        return self.confirm_all or tool in self.confirm

    def trusts(self, tool: str) -> bool:
        return tool in self.trust and not self.confirms(tool)


@dataclass(frozen=True, slots=True)
class ToolServers:
    """Every configured server, in the file's order; empty when ``MCP_SERVERS_FILE`` is unset."""

    servers: tuple[ToolServer, ...] = ()
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    def toolset_problems(self, toolset: Toolset) -> list[str]:
        """The entries of ``toolset`` that name no configured server (for a start-up check)."""
        known = {server.name for server in self.servers}
        return [
            f"no MCP server named {entry.split('.', 1)[0]!r} (tools entry {entry!r})"
            for entry in sorted(toolset.entries or ())
            if entry.split(".", 1)[0] not in known
        ]


@dataclass(frozen=True, slots=True)
class Toolset:
    """The tools one channel offers the model: every tool (``entries`` None), or the tools of
    the named servers (``"github"``) and single tools (``"github.search_issues"``, the server's
    own tool name after the first dot).

        Toolset.of(["github", "files.read_file"]).admits("files", "read_file")   # True
        Toolset().admits("files", "write_file")                                  # True: all
        Toolset.of([]).admits("github", "get_issue")                             # False: none
    """

    entries: frozenset[str] | None = None

    @classmethod
    def of(cls, entries: Iterable[str]) -> Toolset:
        """A toolset of named servers and tools; ``ValueError`` names a malformed entry."""
        checked = []
        for entry in entries:
            server, _, tool = entry.partition(".")
            if not _SERVER_NAME.match(server) or (entry != server and not tool):
                raise ValueError(
                    f"tools entry {entry!r}: expected a server name or 'server.tool_name'"
                )
            checked.append(entry)
        return cls(frozenset(checked))

    def admits(self, server: str, tool: str) -> bool:
        if self.entries is None:
            return True
        return server in self.entries or f"{server}.{tool}" in self.entries


def exposed_name(server: str, tool: str) -> str:
    """The name the model calls a server's tool by: ``server__tool``, within OpenAI's rules."""
    raw = f"{server}{_SEPARATOR}{tool}"
    name = _NOT_IN_NAME.sub("_", raw)
    if len(name) > 64:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = f"{name[:55]}_{digest}"
    assert _FUNCTION_NAME.match(name)
    return name


def load_tool_servers(path: str | None, environ: Mapping[str, str]) -> ToolServers:
    """The servers of ``path`` (None: no servers), header and env values taken from ``environ``;
    ``ConfigError`` lists every problem in the file."""
    if not path:
        return ToolServers()
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{SETTING}: cannot read {path}: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{SETTING}: {path} is not valid TOML: {exc}"]) from None
    declared = raw.get("servers")
    problems = [
        f"{SETTING} {path}: servers.{name}: use letters, digits, '-' and single '_' in a "
        "server's name (at most 32 characters): the model sees it in every tool's name"
        for name in (declared if isinstance(declared, dict) else ())
        if not _SERVER_NAME.match(name) or _SEPARATOR in name
    ]
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(problems + [_describe(path, err) for err in exc.errors()]) from None
    servers = tuple(
        _resolve(name, entry, parsed.defaults, environ, problems, f"{SETTING} {path}: servers.")
        for name, entry in parsed.servers.items()
    )
    if problems:
        raise ConfigError(problems)
    return ToolServers(servers=servers, connect_timeout=parsed.connect_timeout)


class _EnvRef(BaseModel):
    """``{ env = "NAME", prefix = "Bearer " }``: the value of the bot's variable NAME."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    env: str = Field(pattern=_ENV_NAME)
    prefix: str = ""


class _Defaults(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0, le=3600)
    max_result_chars: int = Field(default=DEFAULT_MAX_RESULT_CHARS, ge=200, le=1_000_000)


class _Server(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = None
    headers: dict[str, _EnvRef] = {}
    command: str | None = Field(default=None, min_length=1)
    args: list[str] = []
    env: dict[str, _EnvRef] = {}
    cwd: Path | None = None
    allow: list[str] | None = None
    confirm: bool | list[str] = False
    trust: list[str] = []
    timeout: float | None = Field(default=None, gt=0, le=3600)
    max_result_chars: int | None = Field(default=None, ge=200, le=1_000_000)
    protocol: Literal["auto", "legacy"] = "auto"

    @field_validator("headers", "env", mode="before")
    @classmethod
    def _refuse_literals(cls, values: object) -> object:
        if isinstance(values, Mapping):
            for key, value in values.items():
                if isinstance(value, str):
                    raise ValueError(
                        f"{key}: a value written in the file; name an environment variable "
                        'instead, e.g. { env = "NAME" } (secrets are never written in '
                        "MCP_SERVERS_FILE)"
                    )
        return values

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, _EnvRef]) -> dict[str, _EnvRef]:
        for name in env:
            if not re.match(_ENV_NAME, name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return env

    @field_validator("url")
    @classmethod
    def _url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("credentials in the URL; send them in a header from the environment")
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if SECRET_NAME.search(key) or looks_secret(value):
                raise ValueError(
                    f"the query parameter {key!r} looks like a secret; "
                    "send it in a header from the environment"
                )
        return url

    @field_validator("args")
    @classmethod
    def _args(cls, args: list[str]) -> list[str]:
        for n, arg in enumerate(args):
            value = arg.split("=", 1)[1] if arg.startswith("-") and "=" in arg else arg
            if looks_secret(value):
                raise ValueError(
                    f"argument {n + 1} looks like a secret; pass it through env instead "
                    '(env = { NAME = { env = "BOT_VARIABLE" } })'
                )
        return args

    @model_validator(mode="after")
    def _one_transport(self) -> _Server:
        if (self.url is None) == (self.command is None):
            raise ValueError("give either url (streamable HTTP) or command (stdio), not both")
        if self.url is not None and (self.args or self.env or self.cwd):
            raise ValueError("args, env and cwd are for a stdio server (command)")
        if self.command is not None and self.headers:
            raise ValueError("headers are for an HTTP server (url)")
        return self

    @model_validator(mode="after")
    def _one_answer_per_tool(self) -> _Server:
        """A tool waits for approval or not: the file may not say both."""
        if self.trust and self.confirm is True:
            raise ValueError(
                "trust beside confirm = true (every tool waits for approval): "
                "list the tools to confirm instead, or drop trust"
            )
        confirmed = set(self.confirm) if isinstance(self.confirm, list) else set()
        both = sorted(confirmed & set(self.trust))
        if both:
            raise ValueError(f"{', '.join(both)}: both in confirm and in trust; pick one")
        if self.allow is not None and (outside := sorted(set(self.trust) - set(self.allow))):
            raise ValueError(f"trust names {', '.join(outside)}, which allow leaves out")
        return self


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    connect_timeout: float = Field(default=DEFAULT_CONNECT_TIMEOUT, gt=0, le=300)
    defaults: _Defaults = Field(default_factory=_Defaults)
    servers: dict[str, _Server] = {}


def _resolve(
    name: str,
    entry: _Server,
    defaults: _Defaults,
    environ: Mapping[str, str],
    problems: list[str],
    where: str,
) -> ToolServer:
    def secrets(kind: str, refs: Mapping[str, _EnvRef]) -> dict[str, SecretStr]:
        resolved = {}
        for key, ref in refs.items():
            value = environ.get(ref.env)
            if not value:
                problems.append(
                    f"{where}{name}.{kind}.{key}: the environment variable {ref.env} is not set"
                )
                continue
            resolved[key] = SecretStr(ref.prefix + value)
        return resolved

    transport: HttpTransport | StdioTransport
    if entry.url is not None:
        transport = HttpTransport(url=entry.url, headers=secrets("headers", entry.headers))
    else:
        assert entry.command is not None  # one of the two, checked by _Server
        transport = StdioTransport(
            command=entry.command,
            args=tuple(entry.args),
            env=secrets("env", entry.env),
            cwd=entry.cwd,
        )
    return ToolServer(
        name=name,
        transport=transport,
        allow=None if entry.allow is None else frozenset(entry.allow),
        confirm=frozenset(entry.confirm) if isinstance(entry.confirm, list) else frozenset(),
        confirm_all=entry.confirm is True,
        trust=frozenset(entry.trust),
        timeout=entry.timeout if entry.timeout is not None else defaults.timeout,
        max_result_chars=(
            entry.max_result_chars
            if entry.max_result_chars is not None
            else defaults.max_result_chars
        ),
        protocol=entry.protocol,
    )


def _describe(path: str, err: Mapping[str, Any]) -> str:
    # The message never echoes the input: it may be a secret.
    loc = ".".join(str(part) for part in err.get("loc", ()))
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{SETTING} {path}: {loc or 'file'}: {msg}"
