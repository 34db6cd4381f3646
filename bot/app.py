"""The routing table: which Slack events reach which handler, in Bolt's first-match order,
and the one global error hook.

    app = build_app(client=web_client, turns=turns, assistant=assistant, signing_secret=None)

The order below is the spec (Bolt stops at the first listener whose constraints match):

    app_mention · a person                       → answer in the mention's thread
    app_mention · anything else (another bot)    → acknowledge and ignore
    message  · a person · DM                     → answer (DM rules in README)
    message  · a person · names the bot          → answer (deduped with its app_mention twin)
    message  · a person · thread the bot is in   → answer, no mention needed
    message  · a person · thread the store cannot place → answer if Slack shows the bot there
    message  · anything else                     → acknowledge and ignore (no 404, no retries)
    assistant_thread_started                     → greeting + suggested prompts in the thread
    assistant_thread_context_changed             → acknowledge quietly
    file_deleted, file_unshared                  → forget what was read of the file (the cache)
    action   · stop_reply                        → stop the reply it names, on any replica (the
                                                   asker only; others are told so)
    action   · reply_feedback                    → store and count the vote, thank the clicker
    action   · approve_tool / deny_tool          → decide on a tool call waiting for approval,
                                                   on any replica (the asker only; others are
                                                   told so)

CHANNELS_FILE's allow/deny lists apply to every route: messages (bot/turn.py), buttons and
assistant threads (here and bot/assistant.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.web.async_client import AsyncWebClient

from bot.approvals import APPROVE_ACTION_ID, DENY_ACTION_ID, ApprovalClick, Approvals
from bot.assistant import AssistantThreads
from bot.conversation import ThreadKey
from bot.events import (
    FileGone,
    Inbound,
    MalformedEvent,
    is_person_message,
    mention_pattern,
    retry_attempt,
)
from bot.metrics import Metrics
from bot.policy import Policy
from bot.render.feedback import FEEDBACK_ACTION_ID
from bot.render.reply import STOP_ACTION_ID
from bot.stops import StopClick, StopSignals
from bot.store import Participation, Store
from bot.turn import Turns

log = logging.getLogger(__name__)

PARTICIPATION_LOOKUP_S = 1.0  # well within Slack's 3 s to acknowledge an event


def build_app(
    *,
    client: AsyncWebClient,
    turns: Turns,
    store: Store,
    metrics: Metrics,
    stops: StopSignals,
    approvals: Approvals,
    assistant: AssistantThreads,
    policy: Policy,
    signing_secret: str | None,
) -> AsyncApp:
    """The Bolt app with every route registered; ``signing_secret`` None means Socket Mode."""
    app = AsyncApp(
        client=client,
        signing_secret=signing_secret or "",
        request_verification_enabled=signing_secret is not None,
        process_before_response=False,  # ack at once; listeners run as tasks
        logger=logging.getLogger("slack_bolt"),
    )

    def inbound(
        body: dict[str, Any],
        event: dict[str, Any],
        context: AsyncBoltContext,
        request: AsyncBoltRequest,
    ) -> Inbound | None:
        try:
            return Inbound.from_event(
                body,
                event,
                bot_user_id=context.bot_user_id,
                received_at=time.monotonic(),
                retry_attempt=retry_attempt(request.headers),
            )
        except MalformedEvent as exc:
            log.info("ignored malformed %s event: %s", event.get("type"), exc)
            return None

    def answering(*, if_taking_part: bool) -> Callable[..., Awaitable[None]]:
        """A listener that answers the event (see ``Turns.answer``)."""

        async def handler(
            body: dict[str, Any],
            event: dict[str, Any],
            context: AsyncBoltContext,
            request: AsyncBoltRequest,
        ) -> None:
            message = inbound(body, event, context, request)
            if message is not None:
                await turns.answer(message, if_taking_part=if_taking_part)

        return handler

    answer = answering(if_taking_part=False)
    answer_if_taking_part = answering(if_taking_part=True)

    async def stop(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        click = StopClick.from_body(body)
        if click is None:
            log.info("ignored a malformed Stop click")
        elif not policy.allows(channel=click.channel, user=click.user):
            log.info(
                "ignored Stop by %s in %s: not allowed by CHANNELS_FILE", click.user, click.channel
            )
        else:
            await stops.press(click)

    async def approval(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        click = ApprovalClick.from_body(body)
        if click is None:
            log.info("ignored a malformed Approve / Deny click")
        elif not policy.allows(channel=click.channel, user=click.user):
            log.info(
                "ignored %s by %s in %s: not allowed by CHANNELS_FILE",
                click.verdict,
                click.user,
                click.channel,
            )
        else:
            await approvals.press(click)

    async def thread_started(event: dict[str, Any]) -> None:
        await assistant.started(event)

    async def feedback(ack: AsyncAck, body: dict[str, Any]) -> None:
        await ack()
        await assistant.feedback(body)

    async def file_gone(body: dict[str, Any], event: dict[str, Any]) -> None:
        # Bolt has acknowledged it; a follow-up now asks Slack, which says the file is gone.
        try:
            gone = FileGone.from_event(body, event)
        except MalformedEvent as exc:
            log.info("ignored malformed %s event: %s", event.get("type"), exc)
            return
        if not await store.files.forget(gone.team, gone.file_id):
            log.warning(
                "could not forget file %s (store down): kept until it expires", gone.file_id
            )

    async def ignore() -> None:
        metrics.events.labels(outcome="ignored").inc()

    @app.middleware
    async def count_events(body: dict[str, Any], next: Callable[[], Awaitable[None]]) -> None:
        if body.get("type") == "event_callback":
            metrics.events.labels(outcome="received").inc()
        await next()

    # -- matchers ---------------------------------------------------------------------------

    async def from_person(event: dict[str, Any]) -> bool:
        return is_person_message(event)

    async def in_dm(event: dict[str, Any]) -> bool:
        return event.get("channel_type") == "im"

    async def names_bot(event: dict[str, Any], context: AsyncBoltContext) -> bool:
        bot = context.bot_user_id
        return bot is not None and bool(mention_pattern(bot).search(str(event.get("text") or "")))

    async def participation(
        event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext
    ) -> Participation:
        """What the store says of the bot in the event's thread; asked once per event."""
        known = context.get("participation")
        if isinstance(known, Participation):
            return known
        thread_ts = event.get("thread_ts")
        if not isinstance(thread_ts, str) or thread_ts == event.get("ts"):
            known = Participation.NO  # not a thread reply
        else:
            team = str(body.get("team_id") or event.get("team") or "")
            key = ThreadKey(team, str(event.get("channel")), thread_ts)
            try:
                # Matchers run before Slack gets its ack: a hung Redis must not delay it.
                async with asyncio.timeout(PARTICIPATION_LOOKUP_S):
                    known = await store.history.participation(key)
            except TimeoutError:
                known = Participation.UNKNOWN
        context["participation"] = known
        return known

    async def in_known_thread(
        event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext
    ) -> bool:
        return await participation(event, body, context) is Participation.YES

    async def in_unplaced_thread(
        event: dict[str, Any], body: dict[str, Any], context: AsyncBoltContext
    ) -> bool:
        # Slack is asked in the listener, after the ack: a matcher must answer at once.
        return await participation(event, body, context) is Participation.UNKNOWN

    # -- the table --------------------------------------------------------------------------

    app.event("app_mention", matchers=[from_person])(answer)
    app.event("app_mention")(ignore)  # another bot mentioning us: no bot-to-bot loops
    app.event("message", matchers=[from_person, in_dm])(answer)
    app.event("message", matchers=[from_person, names_bot])(answer)
    app.event("message", matchers=[from_person, in_known_thread])(answer)
    app.event("message", matchers=[from_person, in_unplaced_thread])(answer_if_taking_part)
    app.event("message")(ignore)
    app.event("assistant_thread_started")(thread_started)
    app.event("assistant_thread_context_changed")(ignore)
    app.event("file_deleted")(file_gone)
    app.event("file_unshared")(file_gone)
    app.action(STOP_ACTION_ID)(stop)
    app.action(FEEDBACK_ACTION_ID)(feedback)
    app.action(APPROVE_ACTION_ID)(approval)
    app.action(DENY_ACTION_ID)(approval)

    @app.error
    async def on_error(error: Exception, body: dict[str, Any]) -> None:
        # The turn has already finalized its reply with a fixed note; only operators see this.
        log.error(
            "unhandled %s while handling event %s",
            type(error).__name__,
            body.get("event_id", "?"),
            exc_info=error,
        )

    return app
