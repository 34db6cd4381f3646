"""bot/logs.py: what reaches the log at each level, and that no secret does."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import logs
from bot.render.text import render, render_final, split

# Markdown of the kinds a model writes (headings, lists, code, quotes, tables, links), 5,000 chars.
ANSWER = (
    "## Heading\n\nSome **bold** and _italic_ text with `code` and [a link](https://example.com)."
    "\n\n- item one\n- item two\n  1. nested\n\n```python\nprint('hi')\n```\n\n> a quote\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n"
) * 40
ANSWER = ANSWER[:5000]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


Configure = Callable[..., io.StringIO]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """``out = configure("DEBUG", ...)``: bot.logs.configure with its output in ``out``; the
    logging set-up of the test session is restored afterwards."""
    root = logging.getLogger()
    handlers = root.handlers[:]
    names = ["bot", *logs._LIBRARIES, "some_other_library"]
    levels = {name: logging.getLogger(name).level for name in names}
    root_level = root.level

    def configure(level: str, **options: object) -> io.StringIO:
        logs.configure(level, **options)  # type: ignore[arg-type]
        out = io.StringIO()
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        handler.setStream(out)
        return out

    yield configure
    root.handlers[:] = handlers
    root.setLevel(root_level)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _is_bot(record: logging.LogRecord) -> bool:
    return record.name == "bot" or record.name.startswith("bot.")


def test_debug_keeps_the_bots_records_and_quiets_the_libraries(configure: Configure) -> None:
    out = configure("DEBUG")
    seen = Collect()
    logging.getLogger().addHandler(seen)

    render(ANSWER)
    render_final(ANSWER)
    head, tail = split(ANSWER, 2900)
    assert head and tail
    logging.getLogger("bot.turn").debug("the bot's own debug line")

    libraries = [r for r in seen.records if not _is_bot(r)]
    assert len(libraries) < 50, {r.name for r in libraries}
    assert "the bot's own debug line" in out.getvalue()
    assert len(out.getvalue()) < 2000


@pytest.mark.parametrize("name", [*logs._LIBRARIES, "some_other_library"])
def test_libraries_speak_at_warning_and_above_whatever_the_level(
    configure: Configure, name: str
) -> None:
    out = configure("DEBUG")
    library = logging.getLogger(f"{name}.module")
    library.debug("library debug")
    library.info("library info")
    library.warning("library warning")
    assert "library debug" not in out.getvalue()
    assert "library info" not in out.getvalue()
    assert "library warning" in out.getvalue()


def test_log_level_still_applies_to_the_bot(configure: Configure) -> None:
    out = configure("WARNING")
    logging.getLogger("bot.turn").info("an info line")
    logging.getLogger("bot.turn").warning("a warning line")
    assert "an info line" not in out.getvalue()
    assert "a warning line" in out.getvalue()


# -- redaction: the configured secrets and anything shaped like a token never reach the log ----

BOT_TOKEN = "xoxb-1111-2222-SECRETBOTTOKEN"
APP_TOKEN = "xapp-1-A111-SECRETAPPTOKEN"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # no token shape: only its value tells
API_KEY = "local-gateway-key-0123456789"  # a local server's key: no shape either
CONFIGURED = [BOT_TOKEN, APP_TOKEN, SIGNING_SECRET, API_KEY]
# Not configured, but shaped like Slack tokens or OpenAI keys.
SHAPED = [
    "xoxb-9999-8888-OTHERBOTTOKEN",
    "xoxp-9999-8888-7777-USERTOKEN",
    "xoxe.xoxp-1-REFRESHTOKENabc",
    "xoxc-1234-5678-BROWSERCLIENTTOKEN",
    "xoxd-COOKIEVALUE1234",
    "xapp-1-A999-OTHERAPPTOKEN",
    "sk-proj-AbCdEf0123456789_xyz",
    "sk-ant-api03-abcdefghijkl",
]
EVERY = CONFIGURED + SHAPED


class LeakyError(RuntimeError):
    pass


def _log_everything(log: logging.Logger) -> None:
    """A secret in each place a record carries text: message, args, exception and its cause,
    stack."""
    log.warning(f"message with {BOT_TOKEN} and {SHAPED[0]}")
    log.warning("args with %s, %s and %r", APP_TOKEN, SIGNING_SECRET, {"key": API_KEY})
    log.error("args shaped like tokens: %s", " ".join(SHAPED))
    try:
        try:
            raise ValueError(f"inner cause carrying {API_KEY} and {SHAPED[1]}")
        except ValueError as cause:
            raise LeakyError(
                f"Slack said invalid_auth for {BOT_TOKEN} ({SIGNING_SECRET})"
            ) from cause
    except LeakyError:
        log.exception("the call failed: %s", SHAPED[4])
    _log_a_stack(log)


def _log_a_stack(log: logging.Logger) -> None:
    # A stack shows source lines, so a token written in one (as in this comment) shows too.
    log.info("with a stack", stack_info=True)  # xoxb-0000-1111-TOKENINSOURCE


@pytest.mark.parametrize("json_lines", [False, True], ids=["text", "json"])
def test_secrets_and_token_shapes_are_redacted_everywhere_in_a_record(
    configure: Configure, json_lines: bool
) -> None:
    out = configure("DEBUG", json_lines=json_lines, secrets=CONFIGURED)
    _log_everything(logging.getLogger("bot.turn"))
    text = out.getvalue()
    for secret in [*EVERY, "xoxb-0000-1111-TOKENINSOURCE"]:
        assert secret not in text
    # Everything was written, only the secrets are gone.
    assert text.count(logs.REDACTED) >= len(EVERY) + 4
    for words in (
        "message with",
        "args with",
        "LeakyError",
        "inner cause carrying",
        "with a stack",
    ):
        assert words in text
    assert "Traceback" in text
    if json_lines:
        lines = [json.loads(line) for line in text.splitlines()]
        assert [line["level"] for line in lines] == ["WARNING", "WARNING", "ERROR", "ERROR", "INFO"]
        assert "LeakyError" in lines[3]["exc"] and "test_logs.py" in lines[4]["stack"]


def test_redaction_leaves_other_text_alone(configure: Configure) -> None:
    out = configure("INFO", secrets=CONFIGURED)
    harmless = "thread T0001/C0CHAN/1700000000.000100: sk-8 skip-this xoxb- task-sk-1 answered"
    logging.getLogger("bot.turn").info(harmless)
    assert harmless in out.getvalue()


def test_secrets_cover_credentials_in_urls() -> None:
    from bot.__main__ import _secrets
    from bot.config import load_settings

    settings = load_settings(
        {
            "slack_bot_token": BOT_TOKEN,
            "slack_app_token": APP_TOKEN,
            "openai_api_key": API_KEY,
            "redis_url": "redis://default:redis%2Fpassw0rd@redis.internal:6379/0",
            "openai_base_url": "https://gateway.example/v1?api-key=gw-KEY-123456&api-version=2024-10-21",
        },
        env_file=None,
    )
    secrets = _secrets(settings)
    for expected in (
        BOT_TOKEN,
        APP_TOKEN,
        API_KEY,
        "redis/passw0rd",
        "redis%2Fpassw0rd",
        "gw-KEY-123456",
    ):
        assert expected in secrets
    assert "2024-10-21" not in secrets  # not a secret: a date the log must still show


def test_an_error_that_escapes_the_bot_is_logged_redacted(
    configure: Configure, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What escapes ``python -m bot`` goes through the log's redaction, not the interpreter's
    traceback printer."""
    import bot.__main__ as entry

    configure("INFO")  # only for its restoring of the logging set-up afterwards
    for name, value in {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_APP_TOKEN": APP_TOKEN,
        "OPENAI_API_KEY": API_KEY,
    }.items():
        monkeypatch.setenv(name, value)

    def crash(coroutine: Any, **_: object) -> None:
        coroutine.close()
        raise LeakyError(f"start-up failed with {APP_TOKEN} and {API_KEY}")

    monkeypatch.setattr(entry.runtime, "run", crash)
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    assert entry.main() == 1
    err = capsys.readouterr().err
    assert "LeakyError" in err and logs.REDACTED in err
    assert APP_TOKEN not in err and API_KEY not in err
