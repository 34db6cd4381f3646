"""Assistant threads (Slack's agent view) and the feedback buttons under answers.

    assistant = AssistantThreads(slack=slack, store=store, metrics=metrics, greeting="Hi!",
                                 prompts=settings.assistant_prompts, prompts_title="Try asking")
    await assistant.started(event)      # assistant_thread_started: greeting + suggested prompts
    await assistant.feedback(body)      # block_actions of 👍 / 👎: vote stored, counted, thanked

Neither ever raises for Slack or Redis trouble: a greeting that could not be posted, prompts
that could not be set or a thanks that could not be shown are logged, and a click while Redis is
down is still counted in metrics and thanked (the store logs the outage once).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.config import SuggestedPrompt
from bot.errors import SlackError
from bot.metrics import Metrics
from bot.policy import Policy
from bot.render.feedback import Vote, feedback_vote
from bot.slack import SlackGateway
from bot.store import Store

log = logging.getLogger(__name__)

THANKS_TEXT = "Thanks for the feedback!"


class MalformedPayload(ValueError):
    """A Slack payload without the fields this module needs."""


@dataclass(frozen=True)
class FeedbackClick:
    """One click on a feedback button: who voted what on which answer message."""

    team: str
    channel: str
    message_ts: str
    thread_ts: str | None
    user: str
    vote: Vote

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> FeedbackClick:
        """Read a ``block_actions`` body; raise ``MalformedPayload`` naming what is missing."""
        votes = [feedback_vote(a) for a in body.get("actions") or () if isinstance(a, dict)]
        vote = next((v for v in votes if v is not None), None)
        if vote is None:
            raise MalformedPayload("no feedback vote among the actions")
        container = _mapping(body.get("container"))
        message = _mapping(body.get("message"))
        user = _mapping(body.get("user"))
        channel = container.get("channel_id") or _mapping(body.get("channel")).get("id")
        message_ts = container.get("message_ts") or message.get("ts")
        team = _mapping(body.get("team")).get("id") or user.get("team_id")
        thread_ts = container.get("thread_ts") or message.get("thread_ts")
        fields = {
            "user": user.get("id"),
            "channel": channel,
            "message_ts": message_ts,
            "team": team,
        }
        missing = [
            name for name, value in fields.items() if not isinstance(value, str) or not value
        ]
        if missing:
            raise MalformedPayload("missing " + ", ".join(missing))
        return cls(
            team=str(team),
            channel=str(channel),
            message_ts=str(message_ts),
            thread_ts=thread_ts if isinstance(thread_ts, str) and thread_ts else None,
            user=str(user["id"]),
            vote=vote,
        )


class AssistantThreads:
    """What the bot does when an assistant thread opens and when an answer gets a vote."""

    def __init__(
        self,
        *,
        slack: SlackGateway,
        store: Store,
        metrics: Metrics,
        policy: Policy,
        greeting: str,
        prompts: Sequence[SuggestedPrompt],
        prompts_title: str,
    ) -> None:
        self._slack = slack
        self._store = store
        self._metrics = metrics
        self._policy = policy
        self._greeting = greeting.strip()
        self._prompts = [{"title": p.title, "message": p.message} for p in prompts]
        self._prompts_title = prompts_title.strip() or None

    async def started(self, event: dict[str, Any]) -> None:
        """``assistant_thread_started``: greet in the new thread and offer the prompts."""
        thread = _mapping(event.get("assistant_thread"))
        channel, thread_ts = thread.get("channel_id"), thread.get("thread_ts")
        if not isinstance(channel, str) or not channel or not isinstance(thread_ts, str):
            log.info("ignored assistant_thread_started without channel_id / thread_ts")
            return
        user = thread.get("user_id")
        if not self._policy.allows(channel=channel, user=user if isinstance(user, str) else ""):
            log.info("no greeting for %s in %s: not allowed by CHANNELS_FILE", user, channel)
            return
        if self._greeting:
            try:
                await self._slack.post(channel, self._greeting, thread_ts=thread_ts)
            except SlackError as exc:
                log.warning(
                    "could not greet in assistant thread %s/%s: %s", channel, thread_ts, exc
                )
        if self._prompts:
            try:
                await self._slack.set_suggested_prompts(
                    channel, thread_ts, self._prompts, title=self._prompts_title
                )
            except SlackError as exc:
                log.warning("could not set suggested prompts in %s/%s: %s", channel, thread_ts, exc)

    async def feedback(self, body: dict[str, Any]) -> None:
        """A 👍 / 👎 click: store the vote (a changed vote replaces the earlier one), count it,
        and thank the clicker with a message only they see."""
        try:
            click = FeedbackClick.from_body(body)
        except MalformedPayload as exc:
            log.info("ignored malformed feedback click: %s", exc)
            return
        if not self._policy.allows(channel=click.channel, user=click.user):
            log.info("ignored feedback by %s: not allowed by CHANNELS_FILE", click.user)
            return
        self._metrics.feedback.labels(vote=click.vote).inc()
        # Counted above even when the store is down (it logs the outage).
        await self._store.usage.record_feedback(
            click.team, click.channel, click.message_ts, click.user, click.vote
        )
        try:
            await self._slack.post_ephemeral(
                click.channel, click.user, THANKS_TEXT, thread_ts=click.thread_ts
            )
        except SlackError as exc:
            log.warning("could not thank %s for feedback: %s", click.user, exc)


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
