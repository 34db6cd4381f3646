"""Raw Slack event payloads → typed values, and the small matchers the routing table uses.

inbound = Inbound.from_event(body, event, bot_user_id="U0BOT")
inbound.key        # ThreadKey(team='T1', channel='C1', thread_ts='1700000000.000100')
inbound.text       # the question, the bot's own mention removed
inbound.files      # (SlackFile(id='F1', name='photo.jpg', mimetype='image/jpeg', …), …)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bot.conversation import ThreadKey

# Subtypes that are people talking; everything else (joins, edits, deletions, bot posts) is not.
USER_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})


# A file object's ``mode``: how Slack holds it. Only ``hosted`` and ``snippet`` files (and
# ``post``s) have content to download; a ``tombstone`` is a file deleted since it was shared.
DOWNLOADABLE_MODES = frozenset({"hosted", "snippet", "post", ""})
CHECK_FILE_INFO = "check_file_info"


class MalformedEvent(ValueError):
    """The event lacks a field the bot needs (channel, ts, user)."""


@dataclass(frozen=True, slots=True)
class SlackFile:
    """A file attached to a message, as Slack described it (``files[]`` of a message event,
    or ``files.info``). Only what the bot needs: the rest of Slack's file object is dropped.

    SlackFile.from_api({"id": "F1", "name": "a.png", "mimetype": "image/png", "size": 3})
    """

    id: str
    name: str = ""
    title: str = ""
    mimetype: str = ""  # as Slack guessed it from the upload; the content may disagree
    filetype: str = ""  # Slack's short type: png, pdf, python, text, zip …
    size: int = 0  # bytes; 0 when Slack did not say (a Slack Connect file before files.info)
    url_private: str = ""
    url_private_download: str = ""
    # hosted, snippet (pasted code/text), post, external (Google Drive …), tombstone (deleted),
    # hidden_by_limit (a free workspace's older files), file_access (see ``file_access``)
    mode: str = ""
    # "check_file_info": a Slack Connect file whose details come only from files.info
    file_access: str = ""

    @property
    def label(self) -> str:
        """How to name the file to a person: its name, else its title, else "a file"."""
        return self.name or self.title or "a file"

    @property
    def download_url(self) -> str:
        return self.url_private_download or self.url_private

    @property
    def needs_info(self) -> bool:
        """Slack sent only the id: the details (and the download URL) come from files.info."""
        return self.file_access == CHECK_FILE_INFO or (not self.download_url and not self.mode)

    @property
    def deleted(self) -> bool:
        return self.mode == "tombstone"

    @classmethod
    def by_id(cls, file_id: str) -> SlackFile:
        """A file known only by its id (e.g. from a stored turn): read it through files.info."""
        return cls(id=file_id, file_access=CHECK_FILE_INFO)

    @classmethod
    def from_api(cls, raw: object) -> SlackFile | None:
        """A file object from an event or a Web API answer; None when it has no id."""
        if not isinstance(raw, dict):
            return None
        file_id = raw.get("id")
        if not isinstance(file_id, str) or not file_id:
            return None
        size = raw.get("size")
        return cls(
            id=file_id,
            name=_text(raw, "name"),
            title=_text(raw, "title"),
            mimetype=_text(raw, "mimetype"),
            filetype=_text(raw, "filetype"),
            size=size if isinstance(size, int) and size >= 0 else 0,
            url_private=_text(raw, "url_private"),
            url_private_download=_text(raw, "url_private_download"),
            mode=_text(raw, "mode"),
            file_access=_text(raw, "file_access"),
        )


def files_of(message: dict[str, Any]) -> tuple[SlackFile, ...]:
    """The files attached to a message (an event, or one read back from a thread), in order."""
    raw = message.get("files")
    if not isinstance(raw, list):
        return ()
    parsed = (SlackFile.from_api(item) for item in raw)
    return tuple(f for f in parsed if f is not None)


@dataclass(frozen=True, slots=True)
class FileGone:
    """A file deleted in Slack (``file_deleted``) or unshared from a conversation
    (``file_unshared``): what the bot read of it must not reach the model again.

    FileGone.from_event({"team_id": "T1"}, {"type": "file_deleted", "file_id": "F1"})
    # FileGone(team='T1', file_id='F1')
    """

    team: str
    file_id: str

    @classmethod
    def from_event(cls, body: dict[str, Any], event: dict[str, Any]) -> FileGone:
        file_id = event.get("file_id")
        if not isinstance(file_id, str) or not file_id:
            raw = event.get("file")
            file_id = raw.get("id") if isinstance(raw, dict) else None
        team = body.get("team_id") or event.get("team")
        if not (isinstance(file_id, str) and file_id and isinstance(team, str) and team):
            raise MalformedEvent("file event without file_id or team")
        return cls(team=team, file_id=file_id)


def _text(raw: dict[str, Any], name: str) -> str:
    value = raw.get(name)
    return value if isinstance(value, str) else ""


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
    files: tuple[SlackFile, ...] = ()  # attached to the message (``subtype: file_share``)

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
            files=files_of(event),
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
