"""bot/logs.py: what reaches the log at each level, and that no secret does."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator

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
