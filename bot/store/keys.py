"""The store's key schema: every Redis key the bot reads or writes is named here, and only here.

    keys = KeySchema("slackbot")
    keys.thread(ThreadKey("T1", "C1", "17.1"))     # 'slackbot:thread:T1:C1:17.1'

``{p}`` is the prefix (``slackbot`` by default). Keys of one workspace carry its id as a hash
tag, ``{T…}``: under Redis Cluster they share a slot, so every script and transaction over one
workspace's keys (its budget and pause and streaming replies, a thread's turns and engagement, a
message's two dedupe markers) runs on one node. TTLs are set by the module that writes the key::

    {p}:epoch                                 when this store began remembering (no TTL): a
                                              thread older than it may be one the bot is in
    {p}:schema                                "2": keys carry the workspace hash tag (no TTL)
    {p}:{T}:thread:{channel}:{thread_ts}      list of JSON turns, oldest first, each cut to what
                                              a prompt can hold and the list to the newest turns
                                              a prompt can use; TTL refreshed on write
    {p}:{T}:engaged:{channel}:{thread_ts}     "1", same TTL — the bot is answering in this thread
    {p}:{T}:notmine:{channel}:{thread_ts}     "1", 1 day — Slack said the bot has not posted
                                              there (a cached negative answer)
    {p}:{T}:seen:evt:{event_id}               "1", TTL 15 min — Slack retries of one event
    {p}:{T}:seen:msg:{channel}:{ts}           "1", TTL 15 min — app_mention + message of one post
    {p}:{T}:lock:{channel}:{thread_ts}        holder token, PX lease — one answer at a time
    {p}:{T}:budget:{method}                   hash {tokens, at} — token bucket shared by replicas
    {p}:{T}:pause:{method}                    "1", PX Retry-After — Slack said 429
    {p}:{T}:active:{method}                   zset reply id → lease expiry — replies streaming now
    {p}:stop                                  pub/sub channel: reply ids whose Stop was pressed
    {p}:owner:{owner}                         "1", PX lease — a bot process that is alive
    {p}:replies                               zset reply id → record expiry: replies in flight
    {p}:reply:{reply_id}                      JSON {owner, team, channel, thread_ts, ts, text,
                                              native, final}; expires (1 day), as its index entry
    {p}:inflight                              (schema 1) hash reply id → JSON record; swept
    {p}:{T}:rate:{user}:{window}              request count in a fixed window — per-user rate limit
    {p}:{T}:refused:{user}:{why}:{window}     "1", the window — the person was told of that limit
    {p}:{T}:usage:{yyyymmdd}                  hash {scope}:{prompt|completion|total}_tokens and
                                              {scope}:replies, scope = team | channel:C | user:U;
                                              team:feedback_{good|bad}: votes cast that day
    {p}:{T}:feedback:{channel}:{message_ts}   hash user → good | bad — feedback on one answer,
                                              a changed vote replaces the earlier one; history TTL
    {p}:{T}:file:{file_id}                    hash {meta: JSON, data: bytes} — a shared file as
                                              read (text, downscaled image, or why it could not
                                              be); FILE_CACHE_TTL_HOURS from its last read,
                                              bounded size, dropped on file_deleted
                                              (bot/store/files.py)
    {p}:{T}:approval:{approval_id}            "approved:U…" | "denied:U…" | "timeout" |
                                              "cancelled", set NX (the first decision wins), 1 day
                                              — a tool call waiting for the asker's approval

Schema 1 (before the hash tags) named the workspace's keys ``{p}:{kind}:{T}:…``; ``renamed``
maps such a name to today's, for the one-time migration (bot/store/migrate.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.conversation import ThreadKey

# Schema 1 kinds of per-workspace keys, and how many ':'-separated parts follow the team id
# (locks are leases of seconds: not renamed, an old holder's release must still find its own).
_WORKSPACE_KINDS = {
    "thread": 2,
    "engaged": 2,
    "notmine": 2,
    "budget": 1,
    "pause": 1,
    "active": 1,
    "rate": 2,
    "refused": 4,
    "usage": 1,
    "feedback": 2,
}


@dataclass(frozen=True, slots=True)
class KeySchema:
    """Names of the bot's keys under one prefix."""

    prefix: str = "slackbot"

    def _team(self, team: str) -> str:
        return f"{self.prefix}:{{{team}}}"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def schema(self) -> str:
        return f"{self.prefix}:schema"

    def thread(self, key: ThreadKey) -> str:
        return f"{self._team(key.team)}:thread:{key.channel}:{key.thread_ts}"

    def engaged(self, key: ThreadKey) -> str:
        return f"{self._team(key.team)}:engaged:{key.channel}:{key.thread_ts}"

    def not_mine(self, key: ThreadKey) -> str:
        return f"{self._team(key.team)}:notmine:{key.channel}:{key.thread_ts}"

    def seen_event(self, team: str, event_id: str) -> str:
        return f"{self._team(team)}:seen:evt:{event_id}"

    def seen_message(self, team: str, channel: str, ts: str) -> str:
        return f"{self._team(team)}:seen:msg:{channel}:{ts}"

    def lock(self, key: ThreadKey) -> str:
        return f"{self._team(key.team)}:lock:{key.channel}:{key.thread_ts}"

    def budget(self, team: str, method: str) -> str:
        return f"{self._team(team)}:budget:{method}"

    def pause(self, team: str, method: str) -> str:
        return f"{self._team(team)}:pause:{method}"

    def active(self, team: str, method: str) -> str:
        return f"{self._team(team)}:active:{method}"

    @property
    def stop_channel(self) -> str:
        return f"{self.prefix}:stop"

    def owner(self, owner: str) -> str:
        return f"{self.prefix}:owner:{owner}"

    @property
    def replies(self) -> str:
        return f"{self.prefix}:replies"

    def reply(self, reply_id: str) -> str:
        return f"{self.prefix}:reply:{reply_id}"

    @property
    def legacy_inflight(self) -> str:
        return f"{self.prefix}:inflight"

    def rate(self, team: str, user: str, window: int) -> str:
        return f"{self._team(team)}:rate:{user}:{window}"

    def refused(self, team: str, user: str, why: str, window: str) -> str:
        return f"{self._team(team)}:refused:{user}:{why}:{window}"

    def usage(self, team: str, day: str) -> str:
        return f"{self._team(team)}:usage:{day}"

    def feedback(self, team: str, channel: str, message_ts: str) -> str:
        return f"{self._team(team)}:feedback:{channel}:{message_ts}"

    def file(self, team: str, file_id: str) -> str:
        return f"{self._team(team)}:file:{file_id}"

    def file_gone(self, team: str, file_id: str) -> str:
        """A file deleted or unshared in Slack a moment ago: not to be cached again."""
        return f"{self._team(team)}:file-gone:{file_id}"

    def approval(self, team: str, approval_id: str) -> str:
        return f"{self._team(team)}:approval:{approval_id}"

    def legacy_thread(self, key: ThreadKey) -> str:
        """A thread's turns under schema 1 (an old replica may still write there)."""
        return f"{self.prefix}:thread:{key.team}:{key.channel}:{key.thread_ts}"

    def legacy_engaged(self, key: ThreadKey) -> str:
        return f"{self.prefix}:engaged:{key.team}:{key.channel}:{key.thread_ts}"

    def renamed(self, legacy: str) -> str | None:
        """Today's name of a schema-1 key (None: not one, or it keeps its name).

        KeySchema().renamed("slackbot:thread:T1:C1:17.1")  # 'slackbot:{T1}:thread:C1:17.1'
        """
        head = f"{self.prefix}:"
        if not legacy.startswith(head) or "{" in legacy:
            return None
        kind, *parts = legacy[len(head) :].split(":")
        if kind == "seen" and len(parts) == 4 and parts[0] == "msg":
            return f"{self._team(parts[1])}:seen:msg:{parts[2]}:{parts[3]}"
        if kind in _WORKSPACE_KINDS and len(parts) == 1 + _WORKSPACE_KINDS[kind]:
            return ":".join([self._team(parts[0]), kind, *parts[1:]])
        return None
