"""The turn's first step: whether a message is answered at all, where, and under which profile.

    accepted = await intake.accept(inbound)   # None: nothing to answer (the person was told
                                              # why, if that is worth a message)

In order: dedupe (the same message may reach several replicas several times), the channel
policy (CHANNELS_FILE), a redelivery the store cannot vouch for checked against Slack, the abuse
limits, and the help note for an empty mention (files without words are answered).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from bot.conversation import ThreadKey
from bot.events import Inbound
from bot.metrics import Metrics
from bot.policy import Policy, Profile
from bot.recall import Recall
from bot.slack import SlackGateway
from bot.store import Sighting, Store

log = logging.getLogger(__name__)

DM_TOP_LEVEL = "top"  # the thread_ts of a DM's top-level conversation in its ThreadKey

HELP_TEXT = (
    "Hi! Ask me anything: mention me with your question, e.g. `@me summarise this thread`. "
    "In a thread I have answered in, you can just keep talking — no mention needed."
)
RATE_TEXT = (
    ":hand: You've asked {n} questions in a short time — that's my limit. "
    "Please try again in about {minutes} min."
)
QUOTA_TEXT = ":hand: {whose} daily token quota is used up; it resets at midnight UTC."


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message the bot answers: its conversation, the thread the reply goes in (None: the top
    level of a DM) and the channel's profile (prompt, model)."""

    inbound: Inbound
    key: ThreadKey
    reply_thread: str | None
    profile: Profile


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request over a limit: ``note`` tells the person why (None: they were told already in
    this window, and the bot stays silent rather than post again)."""

    note: str | None


@dataclass(frozen=True, slots=True)
class Limits:
    """Abuse limits, counted in Redis (0 = off). While Redis is down they are not enforced.
    A person is told once per window that they are over a limit; later requests in the window
    are dropped silently, so refusals cannot flood a channel either."""

    user_requests: int = 0
    user_window_s: float = 3600.0
    user_daily_tokens: int = 0
    workspace_daily_tokens: int = 0

    async def refusal(self, store: Store, inbound: Inbound) -> Refusal | None:
        """Why ``inbound`` is over a limit, else None (and the request counts)."""
        usage = store.usage
        if self.user_daily_tokens or self.workspace_daily_tokens:
            team_used, user_used = await usage.tokens_today(inbound.team, inbound.user)
            if self.workspace_daily_tokens and team_used >= self.workspace_daily_tokens:
                note = QUOTA_TEXT.format(whose="This workspace's")
                return await self._once(store, inbound, "quota-team", 86400, note)
            if self.user_daily_tokens and user_used >= self.user_daily_tokens:
                note = QUOTA_TEXT.format(whose="Your")
                return await self._once(store, inbound, "quota-user", 86400, note)
        if self.user_requests:
            wait = await usage.hit_rate(
                inbound.team, inbound.user, limit=self.user_requests, window_s=self.user_window_s
            )
            if wait > 0:
                minutes = max(1, math.ceil(wait / 60))
                note = RATE_TEXT.format(n=self.user_requests, minutes=minutes)
                return await self._once(store, inbound, "rate", self.user_window_s, note)
        return None

    @staticmethod
    async def _once(
        store: Store, inbound: Inbound, why: str, window_s: float, note: str
    ) -> Refusal:
        first = await store.usage.first_refusal(inbound.team, inbound.user, why, window_s=window_s)
        return Refusal(note if first else None)


class Intake:
    """Decides which messages are answered; see the module docstring."""

    def __init__(
        self,
        *,
        slack: SlackGateway,
        store: Store,
        recall: Recall,
        policy: Policy,
        limits: Limits,
        metrics: Metrics,
        dm_reply_mode: str = "top",
    ) -> None:
        self._slack = slack
        self._store = store
        self._recall = recall
        self._policy = policy
        self._limits = limits
        self._metrics = metrics
        self._dm_reply_mode = dm_reply_mode

    def address(self, inbound: Inbound) -> tuple[ThreadKey, str | None]:
        """Which conversation ``inbound`` continues, and the thread to reply in (None: top level).

        Top-level DMs are one running conversation answered at the top level by default
        (``DM_REPLY_MODE=top``); with ``thread`` each top-level DM starts a thread of its own.
        """
        if inbound.is_dm and not inbound.in_thread and self._dm_reply_mode == "top":
            return ThreadKey(inbound.team, inbound.channel, DM_TOP_LEVEL), None
        return inbound.key, inbound.key.thread_ts

    async def accept(self, inbound: Inbound) -> Accepted | None:
        """``inbound`` as a message to answer, or None (a repeat, not allowed, over a limit —
        told so once —, or an empty mention, answered with the help note)."""
        sighting = await self._store.dedupe.first_sighting(
            inbound.team, inbound.channel, inbound.ts, inbound.event_id, retry=inbound.retried
        )
        if sighting is Sighting.REPEAT:
            log.debug("duplicate delivery of %s/%s ignored", inbound.channel, inbound.ts)
            self._count("deduplicated")
            return None
        if not self._policy.allows(channel=inbound.channel, user=inbound.user):
            log.info(
                "not answering %s in %s: not allowed by CHANNELS_FILE",
                inbound.user,
                inbound.channel,
            )
            self._count("ignored")
            return None
        key, reply_thread = self.address(inbound)
        if sighting is Sighting.UNVOUCHED and await self._recall.answered(inbound, reply_thread):
            log.info("redelivered %s/%s was answered before", inbound.channel, inbound.ts)
            self._count("deduplicated")
            return None
        self._count("answered")
        if not inbound.text and not inbound.files and not (inbound.mentioned or inbound.is_dm):
            return None  # nothing to answer and no note to post (e.g. an emptied message)
        # Empty mentions count against the limits too: help notes are posts like any other.
        refusal = await self._limits.refusal(self._store, inbound)
        if refusal is not None:
            if refusal.note is not None:
                await self._slack.post(inbound.channel, refusal.note, thread_ts=reply_thread)
            else:
                log.info("%s is over a limit and was told so already", inbound.user)
            return None
        if not inbound.text and not inbound.files:  # files alone are a question about them
            await self._slack.post(inbound.channel, HELP_TEXT, thread_ts=reply_thread)
            return None
        return Accepted(inbound, key, reply_thread, self._policy.profile(inbound.channel))

    def _count(self, outcome: str) -> None:
        self._metrics.events.labels(outcome=outcome).inc()
