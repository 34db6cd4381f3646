"""Logging: plain or JSON lines, a correlation id per turn, and a last-line redaction of secrets.

configure("INFO", json_lines=True, secrets=[settings.slack_bot_token.get_secret_value()])
with correlation("Ev0123"):
    log.info("answering")     # {"level": "INFO", ..., "turn": "Ev0123", "msg": "answering"}
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

_turn: contextvars.ContextVar[str] = contextvars.ContextVar("turn", default="-")

# Token shapes of Slack (bot, user, app, refresh, client and cookie: every xox?-) and
# OpenAI-style keys.
_TOKEN_PATTERN = re.compile(r"\b(?:xox[a-z]-[A-Za-z0-9-]+|xapp-[A-Za-z0-9-]+|sk-[A-Za-z0-9_-]{8,})")
REDACTED = "[redacted]"

# Libraries known to log at DEBUG or INFO (every other one inherits the root's level).
_LIBRARIES = (
    "markdown_it",
    "asyncio",
    "aiohttp",
    "slack_bolt",
    "slack_sdk",
    "openai",
    "httpx",
    "httpcore",
    "httpx2",
    "httpcore2",
    "redis",
    "valkey",
    "urllib3",
    "prometheus_client",
)


@contextmanager
def correlation(turn_id: str) -> Iterator[None]:
    """Every log line inside (in this task and the tasks it starts) carries ``turn_id``."""
    token = _turn.set(turn_id)
    try:
        yield
    finally:
        _turn.reset(token)


class _Redact(logging.Filter):
    """Adds the correlation id and scrubs secrets from the final message and exception text."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 6]

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return _TOKEN_PATTERN.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.turn = _turn.get()
        message = record.getMessage()
        scrubbed = self.scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and record.exc_info[1] is not None:
            # Format once here so the scrubbed text is what handlers print.
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "turn": getattr(record, "turn", "-"),
            "msg": record.getMessage(),
        }
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, *, json_lines: bool = False, secrets: Iterable[str] = ()) -> None:
    """Route every logger to stderr through the redaction filter (call once, at start-up)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Redact(secrets))
    handler.setFormatter(
        _JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(turn)s] %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # LOG_LEVEL is the bot's own level. Libraries speak at WARNING and above whatever it says:
    # at DEBUG, markdown-it writes a record per block rule tried (thousands for one answer),
    # the SDKs are chatty at INFO and print request bodies at DEBUG.
    quiet = max(logging.WARNING, logging.getLevelName(level))
    root.setLevel(quiet)
    logging.getLogger("bot").setLevel(level)
    for noisy in _LIBRARIES:  # in case one of them set a level of its own
        logging.getLogger(noisy).setLevel(quiet)
