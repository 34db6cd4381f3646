"""What the model and Slack see of tools: specs, results, argument parsing, safe summaries.

spec = ToolSpec("github__search_issues", "Search issues.", {"type": "object", ...}, ...)
summarize("github", "search_issues", '{"query": "login bug", "token": "ghp_…"}')
# 'github.search_issues(query="login bug", token=[hidden])'
in_full("db", "run_sql", '{"sql": "DELETE FROM users WHERE id < 10 OR 1=1"}')
# '```\\ndb.run_sql({\\n  "sql": "DELETE FROM users WHERE id &lt; 10 OR 1=1"\\n})\\n```'
cut("x" * 12_345 + "y" * 100, 12_345)  # 'xxx…\\n[cut: 100 more characters]'
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bot.tools.config import SECRET_NAME, looks_secret

Outcome = Literal["ok", "error", "timeout"]

SUMMARY_CHARS = 200
#: Most characters of a call shown in full; with the prompt's own words it stays well within
#: Slack's 3,000 characters of section text.
FULL_CHARS = 2500
_VALUE_CHARS = 40
HIDDEN = "[hidden]"
# What Slack's mrkdwn would read as markup inside a code block (a backtick could end it early),
# and invisible or reordering characters (bidi overrides, zero-width spaces) that could make
# the text read differently from what runs: each is shown as its JSON escape instead.
_MRKDWN = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "`": "\\u0060"}
_INVISIBLE = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"})


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool as the model is offered it (an OpenAI function), and where it comes from."""

    name: str  # exposed: 'github__search_issues'
    description: str
    parameters: Mapping[str, Any]  # a JSON Schema object
    server: str  # 'github'
    tool: str  # the server's own name: 'search_issues'
    needs_approval: bool  # run only after a person approves


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What one call gives back to the model: ``text`` (errors too: the model sees them as
    errors, nothing is raised), and ``summary``, one line safe to show in Slack."""

    text: str
    outcome: Outcome
    summary: str

    @property
    def is_error(self) -> bool:
        return self.outcome != "ok"


def parse_arguments(arguments_json: str) -> dict[str, Any]:
    """The model's JSON arguments as an object (empty text: no arguments); ``ValueError`` says
    what is wrong in words for the model."""
    if not arguments_json.strip():
        return {}
    try:
        value = json.loads(arguments_json)
    except ValueError as exc:
        raise ValueError(f"The arguments are not valid JSON ({exc}).") from None
    if not isinstance(value, dict):
        raise ValueError("The arguments must be a JSON object.")
    return value


def summarize(server: str, tool: str, arguments_json: str) -> str:
    """One line naming the call and its arguments: keys always, short values, never a value
    that looks secret (by its key or its shape). Plain text: escape it for mrkdwn."""
    try:
        arguments: object = parse_arguments(arguments_json)
    except ValueError:
        arguments = None
    if isinstance(arguments, dict):
        inner = ", ".join(f"{_one_line(str(k))}={_show(str(k), v)}" for k, v in arguments.items())
    else:
        inner = "…"  # unreadable arguments: nothing of them is shown
    line = f"{server}.{tool}({inner})"
    return line if len(line) <= SUMMARY_CHARS else line[: SUMMARY_CHARS - 2] + "…)"


def in_full(server: str, tool: str, arguments_json: str, limit: int = FULL_CHARS) -> str:
    """The call for a person to approve, as mrkdwn ready to post: a code block with
    ``server.tool(`` its arguments as indented JSON ``)``, every value shown whole except those
    that look secret (by their key, at any depth, or their shape: ``summarize``'s rules). Over
    ``limit`` characters the block is cut, and a line after it says how much was not shown."""
    try:
        arguments: object = parse_arguments(arguments_json)
    except ValueError as exc:
        return _block(f"{server}.{tool}(…)", limit) + f"\nThe call cannot run: {_escape(str(exc))}"
    shown = json.dumps(_masked(arguments), ensure_ascii=False, indent=2)
    return _block(f"{server}.{tool}({shown})", limit)


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, with a note to the model of what was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[cut: {len(text) - limit:,} more characters]"


def _show(key: str, value: object) -> str:
    if SECRET_NAME.search(key):
        return HIDDEN
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return _short(repr(value))
    if isinstance(value, str):
        if looks_secret(value):
            return HIDDEN
        return json.dumps(_short(_one_line(value)), ensure_ascii=False)
    if isinstance(value, list):
        return f"[{len(value)} item{'' if len(value) == 1 else 's'}]"
    if isinstance(value, Mapping):
        return "{…}"
    return "…"


def _masked(value: object, key: str = "") -> object:
    """``value`` with every part that looks secret replaced by ``HIDDEN``."""
    if key and SECRET_NAME.search(key):
        return HIDDEN
    if isinstance(value, str):
        return HIDDEN if looks_secret(value) else value
    if isinstance(value, Mapping):
        return {str(k): _masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(item) for item in value]
    return value


def _block(text: str, limit: int) -> str:
    """``text`` in a code block, escaped; cut to ``limit`` characters as posted."""
    shown: list[str] = []
    size = 0
    for n, char in enumerate(text):
        escaped = _escape(char)
        if size + len(escaped) > limit:
            left = len(text) - n
            return f"```\n{''.join(shown)}\n```\n[… {left:,} more characters not shown]"
        shown.append(escaped)
        size += len(escaped)
    return f"```\n{''.join(shown)}\n```"


def _escape(text: str) -> str:
    return "".join(
        _MRKDWN.get(char)
        or (
            json.dumps(char)[1:-1]  # a character JSON escapes itself, else \\uXXXX
            if unicodedata.category(char) in _INVISIBLE and char != "\n"
            else char
        )
        for char in text
    )


def _short(text: str) -> str:
    return text if len(text) <= _VALUE_CHARS else text[: _VALUE_CHARS - 1] + "…"


def _one_line(text: str) -> str:
    return " ".join(text.split())
