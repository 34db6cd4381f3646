"""The composition root: settings → clients (one AsyncExitStack) → objects → a running bot.

    async with open_bot(settings) as running:
        await running.stopped.wait()

``python -m bot`` and the end-to-end tests both start the bot through ``open_bot``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp.web import Application, AppRunner
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp

from bot.admission import Admission
from bot.app import build_app
from bot.approvals import Approvals
from bot.assistant import AssistantThreads
from bot.config import Settings
from bot.config import tool_servers as tool_servers_of
from bot.errors import ConfigError
from bot.files import FileLimits, FileReader, NoTranscriber, Transcriber
from bot.llm import ChatModel, Transcriptions, connect_openai
from bot.metrics import Metrics
from bot.policy import Profile, load_policy
from bot.recall import READ_METHOD, Recall
from bot.recovery import InFlight, new_owner_id
from bot.render.budget import EditBudget
from bot.render.factory import EditOptions, NativeStreaming, Replies
from bot.server import (
    InheritedSockets,
    build_events_app,
    build_ops_app,
    is_loopback,
    serve,
    serve_socket,
)
from bot.slack import SlackGateway, connect_slack
from bot.stops import StopSignals
from bot.store import Store, connect_redis
from bot.store.embedded import embedded_server
from bot.tools.mcp import Toolbox
from bot.turn import Intake, Limits, Memory, NoFiles, NoTools, Responder, SharedFiles, Turns
from bot.turn.files import FileSource

log = logging.getLogger(__name__)


@dataclass
class RunningBot:
    """What a started bot exposes to its runner (and to tests)."""

    app: AsyncApp
    turns: Turns
    inflight: InFlight  # the replies this process streams (bot/recovery.py)
    store: Store
    metrics: Metrics
    ops_port: int  # /healthz, /readyz, /metrics
    http_port: int | None  # /slack/events in HTTP mode; None in Socket Mode (no such listener)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


@asynccontextmanager
async def open_bot(
    settings: Settings, inherited: InheritedSockets | None = None
) -> AsyncIterator[RunningBot]:
    """Open every client, wire the bot, connect to Slack; on exit stop taking events, let answers
    in flight finish (``SHUTDOWN_GRACE``), then close everything.

    ``inherited``: a worker process (``WORKERS`` > 1) serves on the listening sockets its
    supervisor bound instead of binding ``OPS_PORT`` and ``HTTP_PORT`` itself."""
    async with AsyncExitStack() as stack:
        # One long-lived session: Slack calls reuse connections. aiohttp's default of 100
        # connections would queue a burst of replies behind each other.
        session = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
        )
        web = connect_slack(
            settings.slack_bot_token.get_secret_value(), settings.slack_api_url, session
        )
        metrics = Metrics()

        redis_url = settings.redis_url
        if redis_url is None:
            # Stopped after the store's client is closed (exit order), if no other bot uses it.
            redis_url = await stack.enter_async_context(embedded_server(settings.data_dir))
            log.info("REDIS_URL is not set: using the embedded store in %s", settings.data_dir)

        llm_client = connect_openai(
            settings.openai_api_key.get_secret_value(), settings.openai_base_url
        )
        stack.push_async_callback(llm_client.close)

        store = Store.open(
            connect_redis(redis_url),
            history_ttl_s=settings.history_ttl_days * 86400,
            history_max_turns=settings.history_max_turns,
            turn_tokens=settings.prompt_token_budget,
            file_cache_ttl_s=settings.file_cache_ttl_hours * 3600,
        )
        stack.push_async_callback(store.aclose)
        if await store.ping():
            await store.prepare()
        else:
            log.warning("Redis is not reachable at start-up; answering from Slack until it is")
            store.prepare_when_reachable()
        budget = EditBudget(
            store.budgets,
            per_minute=settings.edit_budget_per_minute,
            burst=settings.edit_budget_burst,
            min_interval=settings.edit_interval,
            process_rate=settings.stream_updates_per_second,
        )
        model = ChatModel(
            llm_client,
            model=settings.openai_model,
            temperature=settings.openai_temperature,
            idle_timeout=settings.model_idle_timeout,
            max_answer_tokens=settings.max_answer_tokens,
            api=settings.openai_api_mode,
            vision=settings.model_vision,
        )
        transcriber: Transcriber = NoTranscriber()
        if settings.transcribe_model:  # voice clips shared in Slack, through the same server
            transcriber = Transcriptions(llm_client, model=settings.transcribe_model)
        tool_servers = tool_servers_of(settings)
        policy = load_policy(
            settings.channels_file,
            default=Profile(
                settings.system_prompt, settings.openai_model, settings.openai_temperature
            ),
        )
        for channel, profile in [("(defaults)", policy.default), *policy.channels.items()]:
            for problem in tool_servers.toolset_problems(profile.toolset):
                log.warning("CHANNELS_FILE %s: %s", channel, problem)
        toolbox = await stack.enter_async_context(Toolbox(tool_servers, metrics=metrics))
        slack = SlackGateway(web, metrics)
        stops = StopSignals(store.stops, slack, admins_may_stop=settings.stop_by_admins)
        recall = Recall(
            slack,
            store.history,
            EditBudget(
                store.budgets,
                method=READ_METHOD,
                per_minute=settings.slack_reads_per_minute,
                burst=max(1, min(5, int(settings.slack_reads_per_minute))),
                min_interval=0.0,
            ),
            limit=settings.backfill_limit,
        )
        inflight = InFlight(
            store.inflight, slack, recall, owner=new_owner_id(), lease_s=settings.reply_lease
        )
        native = None
        if settings.stream_mode != "edit":
            native = NativeStreaming(
                mode=settings.stream_mode,
                appends=EditBudget(
                    store.budgets,
                    method="chat.appendStream",
                    per_minute=settings.native_append_budget_per_minute,
                    burst=settings.native_append_budget_burst,
                    min_interval=settings.native_flush_interval,
                    process_rate=settings.stream_updates_per_second,
                ),
                starts=EditBudget(
                    store.budgets,
                    method="chat.startStream",
                    per_minute=settings.native_start_budget_per_minute,
                    burst=3,
                    min_interval=0.0,
                ),
                status=settings.assistant_status,
                status_refresh=settings.status_refresh,
                step_keepalive=settings.native_step_keepalive,
            )
        replies = Replies(
            slack,
            budget,
            edits=EditOptions(
                limit=settings.message_char_limit,
                final_deadline=settings.final_edit_deadline,
                feedback=settings.feedback_buttons,
            ),
            native=native,
            tracker=inflight,
            metrics=metrics,
        )
        approvals = Approvals(
            store.approvals, slack, timeout=settings.approval_timeout, metrics=metrics
        )
        turns = Turns(
            intake=Intake(
                slack=slack,
                store=store,
                recall=recall,
                policy=policy,
                limits=Limits(
                    user_requests=settings.user_rate_limit,
                    user_window_s=settings.user_rate_window,
                    user_daily_tokens=settings.user_daily_tokens,
                    workspace_daily_tokens=settings.workspace_daily_tokens,
                ),
                metrics=metrics,
                dm_reply_mode=settings.dm_reply_mode,
            ),
            replies=replies,
            memory=Memory(
                store=store,
                recall=recall,
                files=SharedFiles(
                    _file_reader(settings, slack, store, transcriber),
                    metrics,
                    image_turns=settings.image_history_turns,
                ),
                prompt_token_budget=settings.prompt_token_budget,
                backfill_limit=settings.backfill_limit,
            ),
            responder=Responder(
                model=model,
                store=store,
                stops=stops,
                metrics=metrics,
                max_answer_chars=settings.max_answer_chars,
                tools=toolbox if tool_servers.servers else NoTools(),
                approvals=approvals,
                max_tool_rounds=settings.max_tool_rounds,
                prompt_token_budget=settings.prompt_token_budget,
            ),
            recall=recall,
            slack=slack,
            store=store,
            metrics=metrics,
            admission=Admission(max_wait=settings.admission_max_wait),
            final_edit_deadline=settings.final_edit_deadline,
        )
        http_mode = settings.slack_mode == "http"
        app = build_app(
            client=web,
            turns=turns,
            store=store,
            metrics=metrics,
            stops=stops,
            approvals=approvals,
            policy=policy,
            assistant=AssistantThreads(
                slack=slack,
                store=store,
                metrics=metrics,
                policy=policy,
                greeting=settings.assistant_greeting,
                prompts=settings.assistant_prompts,
                prompts_title=settings.assistant_prompts_title,
            ),
            signing_secret=(
                settings.slack_signing_secret.get_secret_value()
                if http_mode and settings.slack_signing_secret
                else None
            ),
        )

        socket: AsyncSocketModeHandler | None = None
        if not http_mode:
            assert settings.slack_app_token is not None  # checked by load_settings
            socket = AsyncSocketModeHandler(
                app, settings.slack_app_token.get_secret_value(), web_client=web
            )
            stack.push_async_callback(socket.close_async)  # its client holds a session already

        async def slack_ready() -> bool:
            if socket is not None:
                return bool(await socket.client.is_connected())  # type: ignore[no-untyped-call]
            return True  # HTTP mode: Slack calls us; being up is being ready

        # The ops endpoints have a listener of their own (loopback unless OPS_HOST says
        # otherwise): Slack's public port serves /slack/events and nothing else.
        ops = build_ops_app(
            metrics=metrics,
            checks={"slack": slack_ready},
            degrading={"redis": store.ping, **toolbox.readiness()},
        )
        if inherited is not None:
            ops_runner, ops_port = await serve_socket(ops, inherited.ops)
            log.info("this worker's ops endpoints on 127.0.0.1 port %d", ops_port)
        else:
            ops_runner, ops_port = await _listen(ops, settings.ops_host, settings.ops_port, "OPS")
            log.info(
                "ops endpoints (/healthz, /readyz, /metrics) on %s port %d",
                settings.ops_host,
                ops_port,
            )
        stack.push_async_callback(ops_runner.cleanup)
        if inherited is None and not is_loopback(settings.ops_host):
            log.warning(
                "OPS_HOST=%s: /metrics and /readyz answer anyone who can reach port %d; "
                "keep it off public networks",
                settings.ops_host,
                ops_port,
            )

        events_runner: AppRunner | None = None
        http_port: int | None = None
        if socket is not None:
            await socket.connect_async()  # type: ignore[no-untyped-call]
            log.info("connected to Slack over Socket Mode")
        else:
            assert settings.slack_signing_secret is not None  # checked by load_settings
            events = build_events_app(
                bolt=app, signing_secret=settings.slack_signing_secret.get_secret_value()
            )
            if inherited is not None and inherited.events is not None:
                events_runner, http_port = await serve_socket(events, inherited.events)
            else:
                events_runner, http_port = await _listen(
                    events, settings.http_host, settings.http_port, "HTTP"
                )
            stack.push_async_callback(events_runner.cleanup)  # a no-op once cleaned up below
            log.info("serving Slack events on port %d at /slack/events", http_port)

        # Background duties: relaying Stop clicks between replicas, heartbeating this process's
        # replies in flight and finishing those of replicas that died.
        background = [
            asyncio.create_task(stops.run(), name="stop-relay"),
            asyncio.create_task(inflight.run(), name="in-flight"),
        ]
        stack.push_async_callback(_cancel, background)
        try:
            yield RunningBot(
                app=app,
                turns=turns,
                inflight=inflight,
                store=store,
                metrics=metrics,
                ops_port=ops_port,
                http_port=http_port,
            )
        finally:
            # Stop taking new events first, then let answers in flight finish (the ops
            # endpoints stay up until everything is closed).
            if socket is not None:
                await socket.close_async()  # type: ignore[no-untyped-call]
            if events_runner is not None:
                await events_runner.cleanup()
            await turns.drain(settings.shutdown_grace)


def _file_reader(
    settings: Settings, slack: SlackGateway, store: Store, transcriber: Transcriber
) -> FileSource:
    """What reads shared files (FILE_* settings, MODEL_VISION, TRANSCRIBE_MODEL); nothing with
    FILES_PER_MESSAGE=0."""
    if settings.files_per_message == 0:
        return NoFiles()
    limits = FileLimits(
        max_bytes=settings.file_max_bytes,
        per_message=settings.files_per_message,
        download_s=settings.file_download_timeout,
        native_pdf=settings.file_input == "native",
        images=settings.model_vision != "off",
    )
    return FileReader(slack, store.files, limits=limits, transcriber=transcriber)


async def _listen(app: Application, host: str, port: int, setting: str) -> tuple[AppRunner, int]:
    """Serve ``app``; a host or port it cannot listen on is a settings problem, named as one."""
    try:
        return await serve(app, host, port)
    except OSError as exc:
        problem = f"{setting}_HOST / {setting}_PORT: cannot listen on {host} port {port}"
        raise ConfigError([f"{problem} ({exc.strerror})"]) from None


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    # Bounded: a Redis read that never returns (seen when shutdown follows the Stop relay's
    # subscription within milliseconds) must not hold the process's exit.
    done, stuck = await asyncio.wait(tasks, timeout=5.0)
    for task in done:
        if not task.cancelled():
            task.exception()  # retrieved; a background duty's failure was logged where it failed
    for task in stuck:
        log.warning("background task %s did not stop in time; leaving it", task.get_name())
