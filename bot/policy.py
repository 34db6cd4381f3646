"""Per-channel behaviour and access, from an optional TOML file named by ``CHANNELS_FILE``.

    policy = load_policy("channels.toml", default=Profile("Be helpful.", "gpt-4o-mini", None))
    policy.profile("C0SUPPORT").model      # 'gpt-4o' when the file says so
    policy.allows(channel="C1", user="U1")

File format (every part optional)::

    [defaults]                       # overrides SYSTEM_PROMPT / OPENAI_MODEL / OPENAI_TEMPERATURE
    model = "gpt-4o-mini"

    [channels.C0SUPPORT]
    system_prompt = "You are the support desk's assistant."
    model = "gpt-4o"
    temperature = 0.2
    tools = ["tickets", "wiki.search"]  # MCP servers / single tools offered here (default: all
                                        # of MCP_SERVERS_FILE; [] : none)

    [access]
    allow_channels = ["C0SUPPORT"]   # when non-empty, only these channels (DMs count as channels)
    deny_channels = []
    allow_users = []                 # when non-empty, only these people
    deny_users = ["U0SPAMMER"]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.errors import ConfigError
from bot.tools.config import Toolset


@dataclass(frozen=True, slots=True)
class Profile:
    """How the bot answers in one channel."""

    system_prompt: str
    model: str
    temperature: float | None
    toolset: Toolset = field(
        default_factory=Toolset
    )  # which tools the model is offered (default: every tool)


@dataclass(frozen=True, slots=True)
class Policy:
    """Profiles per channel and who may use the bot."""

    default: Profile
    channels: dict[str, Profile] = field(default_factory=dict)
    allow_channels: frozenset[str] = frozenset()
    deny_channels: frozenset[str] = frozenset()
    allow_users: frozenset[str] = frozenset()
    deny_users: frozenset[str] = frozenset()

    def profile(self, channel: str) -> Profile:
        return self.channels.get(channel, self.default)

    def allows(self, *, channel: str, user: str) -> bool:
        if channel in self.deny_channels or user in self.deny_users:
            return False
        if self.allow_channels and channel not in self.allow_channels:
            return False
        return not self.allow_users or user in self.allow_users


class _ProfileFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    system_prompt: str | None = None
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    tools: list[str] | None = None


class _AccessFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allow_channels: list[str] = []
    deny_channels: list[str] = []
    allow_users: list[str] = []
    deny_users: list[str] = []


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    defaults: _ProfileFile = Field(default_factory=_ProfileFile)
    channels: dict[str, _ProfileFile] = {}
    access: _AccessFile = Field(default_factory=_AccessFile)


def load_policy(path: str | None, *, default: Profile) -> Policy:
    """The policy of ``path`` (None: everyone, everywhere, ``default``); ``ConfigError`` lists
    every problem in the file."""
    if not path:
        return Policy(default=default)
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"CHANNELS_FILE: cannot read {path}: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"CHANNELS_FILE: {path} is not valid TOML: {exc}"]) from None
    try:
        parsed = _PolicyFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(
            [
                f"CHANNELS_FILE {path}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors()
            ]
        ) from None
    try:
        base = _merge(default, parsed.defaults)
        channels = {cid: _merge(base, p) for cid, p in parsed.channels.items()}
    except ValueError as exc:
        raise ConfigError([f"CHANNELS_FILE {path}: {exc}"]) from None
    return Policy(
        default=base,
        channels=channels,
        allow_channels=frozenset(parsed.access.allow_channels),
        deny_channels=frozenset(parsed.access.deny_channels),
        allow_users=frozenset(parsed.access.allow_users),
        deny_users=frozenset(parsed.access.deny_users),
    )


def _merge(base: Profile, over: _ProfileFile) -> Profile:
    return replace(
        base,
        system_prompt=over.system_prompt if over.system_prompt is not None else base.system_prompt,
        model=over.model or base.model,
        temperature=over.temperature if over.temperature is not None else base.temperature,
        toolset=Toolset.of(over.tools) if over.tools is not None else base.toolset,
    )
