"""The store's key schema: every Redis key the bot reads or writes is named here, and only here.

    keys = KeySchema("slackbot")
    keys.thread(ThreadKey("T1", "C1", "17.1"))     # 'slackbot:thread:T1:C1:17.1'

``{p}`` is the prefix (``slackbot`` by default); TTLs are set by the module that writes the key::

    {p}:epoch                                 when this store began remembering (no TTL): a
                                              thread older than it may be one the bot is in
    {p}:thread:{team}:{channel}:{thread_ts}   list of JSON turns, oldest first, each cut to what
                                              a prompt can hold and the list to the newest turns
                                              a prompt can use; TTL refreshed on write
    {p}:engaged:{team}:{channel}:{thread_ts}  "1", same TTL — the bot is answering in this thread
    {p}:notmine:{team}:{channel}:{thread_ts}  "1", 1 day — Slack said the bot has not posted
                                              there (a cached negative answer)
    {p}:seen:evt:{event_id}                   "1", TTL 15 min — Slack retries of one event
    {p}:seen:msg:{team}:{channel}:{ts}        "1", TTL 15 min — app_mention + message of one post
    {p}:lock:{team}:{channel}:{thread_ts}     holder token, PX lease — one answer at a time
    {p}:budget:{team}:{method}                hash {tokens, at} — token bucket shared by replicas
    {p}:pause:{team}:{method}                 "1", PX Retry-After — Slack said 429
    {p}:active:{team}:{method}                zset reply id → lease expiry — replies streaming now
    {p}:stop                                  pub/sub channel: reply ids whose Stop was pressed
    {p}:owner:{owner}                         "1", PX lease — a bot process that is alive
    {p}:replies                               zset reply id → record expiry: replies in flight
    {p}:reply:{reply_id}                      JSON {owner, team, channel, thread_ts, ts, text,
                                              native, final}; expires (1 day), as its index entry
    {p}:inflight                              (before 2026-12) hash reply id → JSON record; still
                                              swept, never written
    {p}:rate:{team}:{user}:{window}           request count in a fixed window — per-user rate limit
    {p}:refused:{team}:{user}:{why}:{window}  "1", the window — the person was told of that limit
    {p}:usage:{team}:{yyyymmdd}               hash {scope}:{prompt|completion|total}_tokens and
                                              {scope}:replies, scope = team | channel:C | user:U;
                                              team:feedback_{good|bad}: votes cast that day
    {p}:feedback:{team}:{channel}:{message_ts} hash user → good | bad — feedback on one answer,
                                              a changed vote replaces the earlier one; history TTL
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.conversation import ThreadKey


@dataclass(frozen=True, slots=True)
class KeySchema:
    """Names of the bot's keys under one prefix."""

    prefix: str = "slackbot"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    def thread(self, key: ThreadKey) -> str:
        return f"{self.prefix}:thread:{key}"

    def engaged(self, key: ThreadKey) -> str:
        return f"{self.prefix}:engaged:{key}"

    def not_mine(self, key: ThreadKey) -> str:
        return f"{self.prefix}:notmine:{key}"

    def seen_event(self, event_id: str) -> str:
        return f"{self.prefix}:seen:evt:{event_id}"

    def seen_message(self, team: str, channel: str, ts: str) -> str:
        return f"{self.prefix}:seen:msg:{team}:{channel}:{ts}"

    def lock(self, key: ThreadKey) -> str:
        return f"{self.prefix}:lock:{key}"

    def budget(self, team: str, method: str) -> str:
        return f"{self.prefix}:budget:{team}:{method}"

    def pause(self, team: str, method: str) -> str:
        return f"{self.prefix}:pause:{team}:{method}"

    def active(self, team: str, method: str) -> str:
        return f"{self.prefix}:active:{team}:{method}"

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
        return f"{self.prefix}:rate:{team}:{user}:{window}"

    def refused(self, team: str, user: str, why: str, window: str) -> str:
        return f"{self.prefix}:refused:{team}:{user}:{why}:{window}"

    def usage(self, team: str, day: str) -> str:
        return f"{self.prefix}:usage:{team}:{day}"

    def feedback(self, team: str, channel: str, message_ts: str) -> str:
        return f"{self.prefix}:feedback:{team}:{channel}:{message_ts}"
