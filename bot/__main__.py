"""``python -m bot``: read the settings, start the bot, run until SIGTERM or SIGINT.

With ``WORKERS`` > 1 this process supervises that many bot processes instead (bot/workers.py),
which it starts as ``python -m bot --worker I …``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import sys
from collections.abc import Sequence
from urllib.parse import unquote_plus, urlsplit

from bot import runtime
from bot.config import Settings, load_settings
from bot.errors import ConfigError
from bot.logs import configure
from bot.workers import WorkerSeat, label_log_lines, supervise, worker_seat

_SECRET_NAME = re.compile(r"key|token|secret|sig|pass|auth|cred", re.IGNORECASE)


def main(argv: Sequence[str] = ()) -> int:
    seat = worker_seat(argv)  # None: not started by a supervisor
    try:
        settings = load_settings()
    except ConfigError as exc:
        return _refuse(exc)
    json_lines = settings.log_format == "json"
    configure(settings.log_level, json_lines=json_lines, secrets=_secrets(settings))
    if seat is not None:
        label_log_lines(seat.index, json_lines=json_lines)
    try:
        if seat is None and settings.workers > 1:
            return supervise(settings)
        runtime.run(_run(settings, seat), loop=settings.event_loop)
    except ConfigError as exc:  # the channels file is read while the bot starts
        return _refuse(exc)
    except Exception:
        # Through the log's redaction: the interpreter would print the traceback as it is.
        logging.getLogger("bot").critical("the bot stopped on an unexpected error", exc_info=True)
        return 1
    return 0


def _refuse(exc: ConfigError) -> int:
    print("The bot cannot start; fix these settings:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  - {problem}", file=sys.stderr)
    return 2


def _secrets(settings: Settings) -> list[str]:
    """What the log must never show: the tokens and keys, and credentials inside the URLs."""
    values = [
        settings.slack_bot_token,
        settings.slack_app_token,
        settings.slack_signing_secret,
        settings.openai_api_key,
    ]
    secrets = [v.get_secret_value() for v in values if v is not None]
    for url in (settings.redis_url, settings.openai_base_url, settings.slack_api_url):
        secrets += _url_credentials(url)
    return secrets


def _url_credentials(url: str | None) -> list[str]:
    """A URL's password and secret-named query values (``redis://:pw@host``,
    ``https://gateway/v1?api-key=…``), as written and decoded."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    found = [password] if password else []
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if value and _SECRET_NAME.search(name):
            found.append(value)
    return found + [unquote_plus(value) for value in found]


async def _run(settings: Settings, seat: WorkerSeat | None) -> None:
    # Imported here: a supervisor (WORKERS > 1) needs none of the wiring (~20 MB less in it).
    from bot.compose import open_bot

    inherited = seat.sockets() if seat is not None else None
    # Handled from the start: a signal during start-up (the embedded server may be running
    # already) still ends in the orderly shutdown, rather than killing the process and leaving
    # that server behind.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_bot(settings, inherited) as running:
        runtime.settle_heap()  # start-up is over: what it built stays, and is not scanned again
        running.stopped = stop
        orphaned = None
        if seat is not None:
            orphaned = asyncio.create_task(seat.stop_when_orphaned(running.stopped))
        await running.stopped.wait()
        if orphaned is not None:
            orphaned.cancel()
        logging.getLogger("bot").info("stopping")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
