"""``python -m bot``: read the settings, start the bot, run until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from bot.compose import open_bot
from bot.config import Settings, load_settings
from bot.errors import ConfigError


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print("The bot cannot start; fix these settings:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    _configure_logging(settings.log_level)
    asyncio.run(_run(settings))
    return 0


async def _run(settings: Settings) -> None:
    async with open_bot(settings) as running:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, running.stopped.set)
        await running.stopped.wait()
        logging.getLogger("bot").info("stopping")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # The SDKs are chatty at INFO and, at DEBUG, print request bodies.
    for noisy in ("slack_bolt", "slack_sdk", "openai", "httpx2", "aiohttp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


if __name__ == "__main__":
    sys.exit(main())
