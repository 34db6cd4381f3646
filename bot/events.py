"""Raw Slack event payloads → typed values, and the small matchers the routing table uses.

inbound = Inbound.from_event(body, event, bot_user_id="U0BOT")
inbound.key        # ThreadKey(team='T1', channel='C1', thread_ts='1700000000.000100')
inbound.text       # the question, the bot's own mention removed
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bot.conversation import ThreadKey

# Subtypes that are people talking; everything else (joins, edits, deletions, bot posts) is not.
USER_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})


class MalformedEvent(ValueError):
    """The event lacks a field the bot needs (channel, ts, user)."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message from a person that the bot may answer."""

    team: str
    channel: str
    channel_type: str  # 'channel', 'group', 'im', 'mpim' ('' when Slack did not say)
    user: str
    text: str  # with the bot's own mention removed
    ts: str
    thread_ts: str | None  # None at the top level of a channel or DM
    event_id: str | None
    mentioned: bool  # arrived as app_mention, or names the bot
    bot_user_id: str | None = None  # the bot's own user id in this workspace
    received_at: float = 0.0  # time.monotonic() when the event reached the bot
    user_team: str = ""  # the person's own workspace ('' : same as ``team``), shared channels
    retry_attempt: int = 0  # Slack's redelivery count (0: the first delivery)

    @property
    def key(self) -> ThreadKey:
        """The thread this message belongs to (a top-level message starts its own)."""
        return ThreadKey(self.team, self.channel, self.thread_ts or self.ts)

    @property
    def in_thread(self) -> bool:
        return self.thread_ts is not None

    @property
    def retried(self) -> bool:
        """Slack delivers this event again (an earlier delivery's ack was late or lost)."""
        return self.retry_attempt > 0

    @property
    def is_dm(self) -> bool:
        return self.channel_type == "im" or (not self.channel_type and self.channel.startswith("D"))

    @classmethod
    def from_event(
        cls,
        body: dict[str, Any],
        event: dict[str, Any],
        *,
        bot_user_id: str | None,
        received_at: float = 0.0,
        retry_attempt: int = 0,
    ) -> Inbound:
        channel, ts, user = event.get("channel"), event.get("ts"), event.get("user")
        if not (isinstance(channel, str) and isinstance(ts, str) and isinstance(user, str)):
            raise MalformedEvent("event without channel, ts or user")
        raw_text = event.get("text")
        text = raw_text if isinstance(raw_text, str) else ""
        mentioned = event.get("type") == "app_mention"
        if bot_user_id:
            stripped = mention_pattern(bot_user_id).sub("", text)
            mentioned = mentioned or stripped != text
            text = stripped
        thread_ts = event.get("thread_ts")
        team = body.get("team_id") or event.get("team") or ""
        return cls(
            team=str(team),
            channel=channel,
            channel_type=str(event.get("channel_type") or ""),
            user=user,
            text=text.strip(),
            ts=ts,
            thread_ts=thread_ts if isinstance(thread_ts, str) and thread_ts != ts else None,
            event_id=body.get("event_id") if isinstance(body.get("event_id"), str) else None,
            mentioned=mentioned,
            bot_user_id=bot_user_id,
            received_at=received_at,
            user_team=str(event.get("user_team") or ""),
            retry_attempt=retry_attempt,
        )


def retry_attempt(headers: dict[str, Any]) -> int:
    """Slack's redelivery count from a request's headers (Bolt carries Socket Mode's
    ``retry_attempt`` there too, as ``x-slack-retry-num``)."""
    values = headers.get("x-slack-retry-num") or ()
    value = values[0] if isinstance(values, list | tuple) and values else values
    try:
        return max(0, int(str(value)))
    except ValueError:
        return 0


def mention_pattern(bot_user_id: str) -> re.Pattern[str]:
    """Matches the bot's own mention, with or without a label: ``<@U0BOT>``, ``<@U0BOT|bot>``."""
    return re.compile(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>")


def is_person_message(event: dict[str, Any]) -> bool:
    """A message a person wrote: not a bot (no bot loops), not an edit, join or deletion."""
    if event.get("bot_id") or event.get("bot_profile"):
        return False
    return event.get("subtype") in USER_SUBTYPES and isinstance(event.get("user"), str)
