"""What a person sees of the bot's messages in the fake Slack, for assertions."""

from __future__ import annotations

from bot.render.reply import INDICATOR_BLOCK_ID
from tests.fakes.slack import FakeSlack, Message


def working(message: Message) -> bool:
    """The message still shows the working indicator ("Thinking…" / "writing…")."""
    return any(b.get("block_id") == INDICATOR_BLOCK_ID for b in message.blocks or [])


def notes(message: Message) -> list[str]:
    """The notes under a message's text (interrupted, stopped…), indicator excluded."""
    return [
        element["text"]
        for block in message.blocks or []
        if block.get("type") == "context" and block.get("block_id") != INDICATOR_BLOCK_ID
        for element in block["elements"]
    ]


def bot_replies(slack: FakeSlack, channel: str, thread_ts: str) -> list[Message]:
    """The bot's messages in a thread, oldest first."""
    return [m for m in slack.thread(channel, thread_ts) if m.bot_id == slack.bot_id]
