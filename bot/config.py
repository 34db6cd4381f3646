"""The bot's settings: read once from the environment (and ``.env``) into a frozen, typed object.

    settings = load_settings()          # raises ConfigError listing every problem
    settings.openai_model               # 'gpt-4o-mini'

This is the only module that reads the environment; everything else receives values.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.errors import ConfigError
from bot.store.client import redis_url_problem
from bot.tools.config import ToolServers, load_tool_servers

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant in a Slack workspace. Answer clearly and concisely."
)


class SuggestedPrompt(BaseModel):
    """A suggested prompt of an assistant thread: ``title`` is shown, ``message`` is sent."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    title: str
    message: str


MAX_SUGGESTED_PROMPTS = 4  # Slack shows no more
DEFAULT_ASSISTANT_GREETING = "Hi! How can I help? Ask me anything and I'll answer in this thread."
DEFAULT_ASSISTANT_PROMPTS = (
    SuggestedPrompt(
        title="Explain a concept",
        message="Explain how public-key cryptography works, in simple terms.",
    ),
    SuggestedPrompt(
        title="Brainstorm ideas", message="Help me brainstorm five ideas for a team offsite."
    ),
    SuggestedPrompt(
        title="Draft a message",
        message="Help me write a friendly reminder to my team about tomorrow's deadline.",
    ),
)


SOCKET_MODE_CONNECTIONS = 10  # Slack's limit per app, over every process and replica


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        return os.cpu_count() or 1


class Settings(BaseSettings):
    """Every setting, its environment variable (the field name in upper case) and its default."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", frozen=True, extra="ignore"
    )

    # Slack
    slack_bot_token: SecretStr = Field(description="Bot token (xoxb-…)")
    slack_app_token: SecretStr | None = Field(
        None, description="App-level token (xapp-…), Socket Mode"
    )
    slack_signing_secret: SecretStr | None = Field(None, description="Signing secret, HTTP mode")
    slack_mode: Literal["socket", "http"] = "socket"
    slack_api_url: str = "https://slack.com/api/"
    http_host: str = "0.0.0.0"
    http_port: int = Field(3000, ge=0, le=65535)
    # /healthz, /readyz, /metrics: a listener of their own, unauthenticated, loopback by default.
    ops_host: str = "127.0.0.1"
    ops_port: int = Field(9090, ge=0, le=65535)
    shutdown_grace: float = Field(20.0, ge=0)
    # Bot processes (bot/workers.py); 'auto': one per CPU core this process may run on.
    workers: int = Field(1, ge=1)

    # Model
    openai_api_key: SecretStr
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    openai_temperature: float | None = Field(None, ge=0, le=2)
    openai_api_mode: Literal["chat", "responses"] = "chat"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    model_idle_timeout: float = Field(60.0, gt=0)
    max_answer_tokens: int = Field(4096, ge=0)
    max_answer_chars: int = Field(20_000, ge=1000)

    # Thread memory
    redis_url: str | None = None
    data_dir: Path = Path("data")
    history_ttl_days: float = Field(30.0, gt=0)
    history_max_turns: int = Field(200, ge=2)
    prompt_token_budget: int = Field(8000, ge=256)
    backfill_limit: int = Field(100, ge=0, le=1000)
    slack_reads_per_minute: float = Field(40.0, gt=0)
    dm_reply_mode: Literal["top", "thread"] = "top"

    # Reply rendering
    edit_interval: float = Field(1.0, ge=0.05)
    edit_budget_per_minute: float = Field(45.0, gt=0)
    edit_budget_burst: int = Field(3, ge=1)
    message_char_limit: int = Field(2900, ge=200, le=3000)
    final_edit_deadline: float = Field(120.0, gt=0)
    stream_mode: Literal["edit", "native", "auto"] = "auto"
    native_flush_interval: float = Field(0.25, ge=0.05)
    native_append_budget_per_minute: float = Field(90.0, gt=0)
    native_append_budget_burst: int = Field(10, ge=1)
    stream_updates_per_second: float = Field(200.0, gt=0)
    admission_max_wait: float = Field(5.0, ge=0, le=60)
    native_start_budget_per_minute: float = Field(18.0, gt=0)
    assistant_status: str = "is thinking…"
    status_refresh: float = Field(90.0, ge=1, le=115)
    native_step_keepalive: float = Field(10.0, ge=0.2, le=25)
    feedback_buttons: bool = True
    reply_lease: float = Field(30.0, ge=1)
    stop_by_admins: bool = False

    # Per-channel behaviour and abuse limits
    channels_file: str | None = None
    user_rate_limit: int = Field(60, ge=0)
    user_rate_window: float = Field(3600.0, gt=0)
    user_daily_tokens: int = Field(0, ge=0)
    workspace_daily_tokens: int = Field(0, ge=0)

    # Tools: MCP servers the model may call (bot/tools/); TOOLS=off offers the model none.
    mcp_servers_file: str | None = None
    tools: Literal["on", "off"] = "on"
    max_tool_rounds: int = Field(5, ge=1, le=50)
    approval_timeout: float = Field(300.0, ge=5)

    # Files shared in conversations (bot/files/): images, PDFs and text read for the model,
    # a note to the person for the rest. FILES_PER_MESSAGE=0 reads none.
    file_max_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    files_per_message: int = Field(5, ge=0, le=50)
    file_input: Literal["text", "native"] = "text"
    model_vision: Literal["auto", "on", "off"] = "auto"
    image_history_turns: int = Field(3, ge=0)
    transcribe_model: str | None = None
    file_download_timeout: float = Field(30.0, gt=0)
    file_cache_ttl_hours: float = Field(72.0, gt=0)

    # Assistant threads (agent view): what a new thread shows; empty disables that part.
    # ASSISTANT_PROMPTS is a JSON list of strings and/or {"title": …, "message": …} objects.
    assistant_greeting: str = DEFAULT_ASSISTANT_GREETING
    assistant_prompts: Annotated[tuple[SuggestedPrompt, ...], NoDecode] = DEFAULT_ASSISTANT_PROMPTS
    assistant_prompts_title: str = "Try asking"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    @field_validator("slack_api_url")
    @classmethod
    def _trailing_slash(cls, url: str) -> str:
        # slack_sdk joins method names with urljoin: without the slash, '/api' is dropped.
        return url if url.endswith("/") else url + "/"

    @field_validator(
        "openai_base_url",
        "redis_url",
        "channels_file",
        "mcp_servers_file",
        "transcribe_model",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("redis_url")
    @classmethod
    def _redis_url_form(cls, url: str | None) -> str | None:
        if url is not None and (problem := redis_url_problem(url)):
            raise ValueError(problem.removeprefix("REDIS_URL: "))
        return url

    @field_validator("workers", mode="before")
    @classmethod
    def _auto_workers(cls, value: object) -> object:
        if isinstance(value, str):
            if value.strip().lower() == "auto":
                return usable_cores()
            if not value.strip().isdigit():
                raise ValueError("expected a number of processes (1 or more) or 'auto'")
        return value

    @field_validator("assistant_prompts", mode="before")
    @classmethod
    def _prompt_list(cls, value: object) -> object:
        return _parse_prompts(value)

    def cross_field_problems(self) -> list[str]:
        problems = _transport_problems(
            self.slack_mode, self.slack_app_token, self.slack_signing_secret
        )
        if self.slack_mode == "socket" and self.workers > SOCKET_MODE_CONNECTIONS:
            problems.append(
                f"WORKERS: at most {SOCKET_MODE_CONNECTIONS} in Socket Mode (each worker opens "
                f"a connection and Slack allows an app {SOCKET_MODE_CONNECTIONS}), got "
                f"{self.workers} (WORKERS=auto counts this machine's cores: set a number)"
            )
        return problems


def load_settings(
    overrides: Mapping[str, object] | None = None, *, env_file: str | None = ".env"
) -> Settings:
    """Read and validate the settings; raise ``ConfigError`` naming every problem at once.

    ``overrides`` (field name → value) take precedence over the environment; tests use them.
    """
    try:
        settings = Settings(_env_file=env_file, **dict(overrides or {}))  # type: ignore[call-arg,arg-type]
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        # Name the transport's missing token too, so one run lists every problem.
        problems += _lenient_transport_problems(overrides, env_file)
        raise ConfigError(problems) from None
    problems = settings.cross_field_problems()
    if problems:
        raise ConfigError(problems)
    return settings


class _Transport(BaseSettings):
    """Just the transport fields, read leniently when the full settings failed to validate."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")
    slack_mode: str = "socket"
    slack_app_token: str | None = None
    slack_signing_secret: str | None = None


def _lenient_transport_problems(
    overrides: Mapping[str, object] | None, env_file: str | None
) -> list[str]:
    known = {k: v for k, v in (overrides or {}).items() if k in _Transport.model_fields}
    try:
        transport = _Transport(_env_file=env_file, **known)  # type: ignore[call-arg,arg-type]
    except ValidationError:
        return []
    return _transport_problems(
        transport.slack_mode, transport.slack_app_token, transport.slack_signing_secret
    )


def _transport_problems(mode: str, app_token: object, signing_secret: object) -> list[str]:
    if mode == "socket" and not app_token:
        return ["SLACK_APP_TOKEN: required in Socket Mode (SLACK_MODE=socket)"]
    if mode == "http" and not signing_secret:
        return ["SLACK_SIGNING_SECRET: required in HTTP mode (SLACK_MODE=http)"]
    return []


def _parse_prompts(value: object) -> object:
    """ASSISTANT_PROMPTS from JSON text (the environment) or a list (overrides): a string is a
    prompt whose title is its message; problems are named in words, never as pydantic paths."""
    if isinstance(value, str):
        if not value.strip():
            return ()
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(
                'not valid JSON; expected a list like ["Question?", {"title": "…", "message": "…"}]'
            ) from None
    if not isinstance(value, list | tuple):
        raise ValueError("expected a JSON list of prompts")
    if len(value) > MAX_SUGGESTED_PROMPTS:
        raise ValueError(
            f"at most {MAX_SUGGESTED_PROMPTS} prompts (Slack shows no more), got {len(value)}"
        )
    prompts: list[object] = []
    for n, item in enumerate(value, 1):
        if isinstance(item, SuggestedPrompt):
            prompts.append(item)
        elif isinstance(item, str) and item.strip():
            prompts.append({"title": item, "message": item})
        elif (
            isinstance(item, Mapping)
            and set(item) == {"title", "message"}
            and all(isinstance(v, str) and v.strip() for v in item.values())
        ):
            prompts.append(dict(item))
        else:
            raise ValueError(
                f'prompt {n}: expected a non-empty string or {{"title": …, "message": …}}'
            )
    return tuple(prompts)


def _describe(err: Mapping[str, object]) -> str:
    loc = err.get("loc") or ()
    name = str(loc[0]).upper() if isinstance(loc, tuple) and loc else "settings"
    if err.get("type") == "missing":
        return f"{name}: missing (set it in the environment or in .env)"
    # The message never echoes the value: it may be a secret.
    return f"{name}: {err.get('msg')}"


def tool_servers(settings: Settings) -> ToolServers:
    """The MCP servers of ``MCP_SERVERS_FILE`` (none with ``TOOLS=off``), their secrets read
    from the environment variables the file names; ``ConfigError`` lists what is wrong."""
    path = settings.mcp_servers_file if settings.tools == "on" else None
    return load_tool_servers(path, os.environ)
