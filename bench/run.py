"""``python -m bench.run``: stream N concurrent answers through the real bot and measure how soon
and how closely Slack shows them, what that costs in Slack calls, CPU and memory.

    python -m bench.run --n 20 --workspaces 1          # one point
    python -m bench.run --n 20 --mode edit             # the edit renderer only
    python -m bench.run --sweep                        # N = 1, 20, 200, 1000 (20 per workspace)
    python -m bench.run --n 1000 --per-workspace 1 --workers 2 --redis cluster

The bot runs as a child process (``python -m bot``: settings from the environment, then the
composition root ``bot.compose.open_bot``; with ``--workers N`` > 1 a supervisor and N worker
processes) against a private redis-server (``--redis standalone``, the default), a private
3-master Redis Cluster (``cluster``) or its own embedded server (``embedded``), and the fake
Slack and fake model, which run in this process on 127.0.0.1. Writes ``bench/out/bench-*.json``,
PNG charts (with matplotlib, the ``bench`` extra) and a table on stdout. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import itertools
import json
import math
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from bench.analysis import (
    RENDERERS,
    BoundParams,
    Conversation,
    Renderer,
    Reply,
    analyse_reply,
    bound_under,
    joins_to,
    lag_bound,
    ms,
    percentile,
    round_or_none,
    sample_timeline,
    set_bounds,
    summarise,
)
from bench.harness import (
    ROOT,
    LoopLag,
    ProcessMeter,
    WorkspaceSlack,
    bot_env,
    bot_process,
    cpu_seconds_of,
    machine_busy_seconds,
    on_own_thread,
    replies_by_worker,
)
from bench.profiling import Profiler, summarize_profile
from bench.stores import (
    STORE_KINDS,
    BenchStore,
    StoreKind,
    command_counts,
    open_store,
    server_pids,
)
from bot.config import Settings, usable_cores
from bot.render.reply import INDICATOR_BLOCK_ID
from bot.render.text import render
from tests.fakes.openai import Answer, FakeOpenAI, Request
from tests.fakes.slack import DEFAULT_BUDGETS, Call, mention_event
from tests.redis_cluster import RedisCluster3

OUT = Path(__file__).resolve().parent / "out"
CHARS_PER_TOKEN = 4  # the usual rough size of a token of English text
SWEEP = (1, 20, 200, 1000)
StreamMode = Literal["auto", "native", "edit"]
MODES: tuple[str, ...] = get_args(StreamMode)
_TAG = re.compile(r"bench-q(\d+|warmup\d*)")
#: Bot settings the benchmark's own options set (the store, the worker processes).
_OWN_SETTINGS = {
    "STREAM_MODE": "--mode",
    "WORKERS": "--workers",
    "REDIS_URL": "--redis",
    "DATA_DIR": "--redis embedded",
}
_WORDS = (
    "the reply grows as the model writes and slack shows it a little later while every "
    "workspace shares one budget of edits so the renderer spaces them fairly between answers "
    "that stream at the same time tokens arrive at a steady pace from a fake model server"
).split()


@dataclass(frozen=True)
class Scenario:
    """One benchmark point: the load and the environment it runs in."""

    n: int = 20
    workspaces: int = 1
    slack_latency: float = 0.1
    slack_connection_latency: float = 0.1
    ttft: float = 0.5
    tokens_per_second: float = 50.0
    answer_tokens: int = 200  # a token is CHARS_PER_TOKEN characters
    tokens_per_event: int = 1  # tokens in one SSE chunk (servers send 1, some batch more)
    # The bot's STREAM_MODE: ``auto`` (production's default: a native stream where one may be
    # used, which a mention in a channel thread is), ``native`` or ``edit``.
    mode: StreamMode = "auto"
    bot_env: dict[str, str] = field(default_factory=dict)  # none of _OWN_SETTINGS
    workers: int = 1  # the bot's WORKERS: > 1 runs a supervisor and that many bot processes
    redis: StoreKind = "standalone"  # the store: redis-server, a 3-master cluster, embedded
    timeout: float | None = None  # None: derived from the load
    profile: bool = False
    seed: int = 7
    bot_path: str | None = None  # another ``bot`` package to run (a patched copy)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        for name, option in _OWN_SETTINGS.items():
            if name in self.bot_env:
                raise ValueError(f"{name} is set by the benchmark ({option}), not by bot_env")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")
        if self.redis not in STORE_KINDS:
            raise ValueError(f"redis must be one of {', '.join(STORE_KINDS)}, not {self.redis!r}")

    @property
    def per_workspace(self) -> int:
        return math.ceil(self.n / self.workspaces)

    def env(self) -> dict[str, str]:
        """The bot settings this point sets: ``bot_env``, the stream mode and the workers (the
        store's settings come from the store)."""
        return {**self.bot_env, "STREAM_MODE": self.mode, "WORKERS": str(self.workers)}

    def deadline(self) -> float:
        """Seconds the run may take: the stream, the edit budget's queue, and a margin."""
        if self.timeout is not None:
            return self.timeout
        stream = self.ttft + self.answer_tokens / self.tokens_per_second
        queue = 2 * self.per_workspace * 60 / _slack_update_budget()[0]
        return 60 + stream + queue + self.n * 0.02

    def quiet_after(self) -> float:
        """Seconds without any Slack call or open model stream after which the run stops
        waiting for unfinished replies: twice the longest refill period of a budget a reply's
        calls wait for (Slack's, the bot's edit and append budgets), and at least 5 s."""
        per_minute = [DEFAULT_BUDGETS[method][0] for method in _REPLY_METHODS]
        bot = _settings(self)
        per_minute += [bot["EDIT_BUDGET_PER_MINUTE"], bot["NATIVE_APPEND_BUDGET_PER_MINUTE"]]
        return max(5.0, 2 * 60 / min(per_minute))


@dataclass
class PointResult:
    scenario: Scenario
    replies: list[Reply]
    summary: dict[str, Any]
    bot: dict[str, Any]
    store: dict[str, Any]
    machine_load: dict[str, Any]
    load_generator: dict[str, Any]
    profile: dict[str, Any] | None
    targets: dict[str, Any]
    sample: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        scenario = asdict(self.scenario)
        scenario["per_workspace"] = self.scenario.per_workspace
        return {
            "scenario": scenario,
            "summary": self.summary,
            "bot": self.bot,
            "store": self.store,
            "machine_load": self.machine_load,
            "load_generator": self.load_generator,
            "targets": self.targets,
            "profile": self.profile,
            "sample_reply": self.sample,
        }


def _slack_update_budget() -> tuple[float, int]:
    return DEFAULT_BUDGETS["chat.update"]


#: The Slack methods that make a reply's messages.
_REPLY_METHODS = (
    "chat.postMessage",
    "chat.update",
    "chat.startStream",
    "chat.appendStream",
    "chat.stopStream",
)

#: The Slack method whose budget paces each renderer's text calls.
TEXT_METHOD: dict[Renderer, str] = {"native": "chat.appendStream", "edit": "chat.update"}


def _slack_bounds(scenario: Scenario) -> dict[Renderer, BoundParams]:
    """The lag bound's parameters under Slack's limits (the fake's), per renderer."""
    params = {}
    for renderer in RENDERERS:
        per_minute, burst = DEFAULT_BUDGETS[TEXT_METHOD[renderer]]
        params[renderer] = BoundParams(scenario.slack_latency, per_minute / 60.0, burst)
    return params


_SETTINGS = {  # the bot's pacing settings: environment variable -> (Settings field, fallback)
    "EDIT_BUDGET_PER_MINUTE": ("edit_budget_per_minute", None),
    "EDIT_BUDGET_BURST": ("edit_budget_burst", None),
    "EDIT_INTERVAL": ("edit_interval", None),
    "NATIVE_APPEND_BUDGET_PER_MINUTE": ("native_append_budget_per_minute", None),
    # Older bots hard-code a burst of 5 (bot/compose.py) and have no such setting.
    "NATIVE_APPEND_BUDGET_BURST": ("native_append_budget_burst", 5.0),
    "NATIVE_FLUSH_INTERVAL": ("native_flush_interval", None),
}


def _settings(scenario: Scenario) -> dict[str, float]:
    """The bot's pacing settings in this run: production defaults unless ``--bot-env``."""
    fields = Settings.model_fields
    values = {}
    for name, (field_name, fallback) in _SETTINGS.items():
        known = fields.get(field_name)
        if known is None:  # the setting does not exist in this bot: its fixed value holds
            if fallback is None:
                raise RuntimeError(f"bot.config.Settings has no field {field_name}")
            values[name] = fallback
        else:
            values[name] = float(scenario.bot_env.get(name, known.default))
    return values


def _settings_bounds(scenario: Scenario) -> dict[Renderer, BoundParams]:
    """The lag bound's parameters under the bot's own settings, per renderer."""
    values = _settings(scenario)
    return {
        "native": BoundParams(
            scenario.slack_latency,
            values["NATIVE_APPEND_BUDGET_PER_MINUTE"] / 60.0,
            int(values["NATIVE_APPEND_BUDGET_BURST"]),
            min_gap=values["NATIVE_FLUSH_INTERVAL"],
        ),
        "edit": BoundParams(
            scenario.slack_latency,
            values["EDIT_BUDGET_PER_MINUTE"] / 60.0,
            int(values["EDIT_BUDGET_BURST"]),
            min_gap=values["EDIT_INTERVAL"],
        ),
    }


def answer_text(index: int, chars: int, seed: int) -> str:
    """Plain prose of exactly ``chars`` characters (paragraphs, no Markdown syntax), so that
    its Slack rendering is the text itself and every character can be tracked."""
    rng = random.Random(seed * 1_000_003 + index)
    parts: list[str] = []
    length = paragraph = 0
    while length < chars:
        word = rng.choice(_WORDS)
        if paragraph > 300 and rng.random() < 0.1:
            sep, paragraph = ".\n\n", 0
        else:
            sep = " " if parts else ""
        piece = sep + word
        parts.append(piece)
        length += len(piece)
        paragraph += len(piece)
    text = "".join(parts)[:chars].rstrip()
    return (text[:-1] + ".") if len(text) == chars else text + "." * (chars - len(text))


# -- one point ---------------------------------------------------------------------------------


class _Tracker:
    """Follows the fakes' records as they grow: which Slack messages belong to which reply,
    which model request serves which conversation, which replies have their final form, and
    when anything last happened in the run.

    A reply's messages are those chat.postMessage and chat.startStream created in its channel.
    It has its final form when its model request has finished and every message is final: no
    working indicator block, not a live native stream, and together they show the whole
    answer. The last condition guards a native reply's fallback: a stream closed early looks
    final until the edit renderer edits it, maybe much later (it waits for an edit token).
    ``finished_at`` keeps when each got there: the last call that changed a message in its
    channel then.

    A reply that never gets there (a stream the bot never closes, a wrong text) must not hold
    the run until its deadline. ``quiet()``: nothing happened anywhere for ``quiet_after``
    seconds — no Slack call arrived or ended, no Socket Mode message from the bot, no model
    stream open —, so nothing pending will change. Anywhere, not in the reply's channel: a
    fallback waiting for an edit token is silent in its channel while other replies spend
    the tokens; and a waiter alone gets a token within one budget's refill period, which
    ``quiet_after`` exceeds (``Scenario.quiet_after``).
    """

    def __init__(
        self,
        slack: WorkspaceSlack,
        llm: FakeOpenAI,
        answers: dict[str, str],
        quiet_after: float,
    ) -> None:
        self._slack = slack
        self._llm = llm
        self._answers = answers  # tag -> the model's answer
        self._quiet_after = quiet_after
        self._calls_seen = 0
        self._arrivals_seen = 0
        self._socket_seen = 0
        self._requests_seen = 0
        self._streaming: list[Request] = []  # model requests not finished when last polled
        self.messages: defaultdict[str, list[str]] = defaultdict(list)  # channel -> ts
        self.last_call_at: dict[str, float] = {}  # channel -> when a call last arrived or ended
        self._last_change_at: dict[str, float] = {}  # channel -> a message-changing call's end
        self.last_activity = slack.clock()
        self.requests: dict[str, Request] = {}  # tag -> model request
        self.finished_at: dict[str, float] = {}  # tag -> when the reply got its final form

    def poll(self) -> None:
        now = self._slack.clock()
        calls = self._slack.calls
        for call in calls[self._calls_seen :]:
            channel = str(call.args.get("channel", call.args.get("channel_id")))
            self._touch(channel, call.at)
            if call.ok and call.method in _REPLY_METHODS:
                self._last_change_at[channel] = call.at
            if call.method in ("chat.postMessage", "chat.startStream") and call.ok:
                self.messages[channel].append(str(call.response["ts"]))
        self._calls_seen = len(calls)
        arrivals = self._slack.arrivals
        for at, _, args in arrivals[self._arrivals_seen :]:
            self._touch(str(args.get("channel", args.get("channel_id"))), at)
        self._arrivals_seen = len(arrivals)
        if len(self._slack.socket_messages) > self._socket_seen:  # the bot acked events
            self._socket_seen = len(self._slack.socket_messages)
            self.mark(now)
        # The fake model appends from its own thread: count what was taken, not the list.
        new_requests = self._llm.requests[self._requests_seen :]
        self._requests_seen += len(new_requests)
        for request in new_requests:
            tag = _tag_of(request)
            if tag is not None:
                self.requests[tag] = request
            self._streaming.append(request)
            self.mark(request.at)
        self._streaming = [r for r in self._streaming if not r.finished.is_set()]
        if self._streaming:
            self.mark(now)

    def mark(self, at: float) -> None:
        """Something happened at ``at`` (the benchmark sent events, say)."""
        self.last_activity = max(self.last_activity, at)

    def quiet(self) -> bool:
        """Nothing happened for ``quiet_after`` seconds (as of the last ``poll``)."""
        return self._slack.clock() - self.last_activity >= self._quiet_after

    def finished(self, tag: str, channel: str) -> bool:
        """The reply has its final form (see the class); records ``finished_at``."""
        if tag in self.finished_at:
            return True
        request = self.requests.get(tag)
        if request is None or not request.finished.is_set():
            return False
        timestamps = self.messages.get(channel)
        if not timestamps:
            return False
        texts = []
        for ts in timestamps:
            message = self._slack.message(channel, ts)
            if message is None:
                return False
            if any(block.get("block_id") == INDICATOR_BLOCK_ID for block in message.blocks or ()):
                return False  # still shows the working indicator
            if message.streaming:
                return False  # a native stream still open
            texts.append(message.text)
        answer = self._answers.get(tag, "")
        if not (joins_to(texts, answer) or joins_to(texts, render(answer))):
            return False  # not yet (a fallback's edit to come), or never: see quiet()
        self.finished_at[tag] = self._last_change_at.get(channel, self._slack.clock())
        return True

    def _touch(self, channel: str, at: float) -> None:
        self.last_call_at[channel] = max(self.last_call_at.get(channel, 0.0), at)
        self.mark(at)


def _tag_of(request: Request) -> str | None:
    for message in reversed(request.messages):
        if message.get("role") == "user":
            found = _TAG.search(str(message.get("content")))
            return found.group(1) if found else None
    return None


async def _wait_until(
    predicate: Any, seconds: float, poll: float = 0.05, proc: Any = None, what: str = ""
) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        if proc is not None and proc.returncode is not None:
            raise RuntimeError(f"the bot exited ({proc.returncode}) while waiting for {what}")
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True


async def run_point(scenario: Scenario, store: BenchStore, out: Path, workdir: Path) -> PointResult:
    """Start the fakes and the bot on an empty ``store``, warm it up, send ``n`` mentions at
    once, wait for every reply's final form (or the deadline), and measure. ``workdir``: a
    folder for this point's files that are not results (the embedded store's data)."""
    name = f"N{scenario.n}-M{scenario.workspaces}-W{scenario.workers}-{scenario.redis}"
    store_env = store.bot_settings(workdir / name)
    chars = scenario.answer_tokens * CHARS_PER_TOKEN
    answers = {
        str(i): answer_text(i, chars, scenario.seed) for i in range(scenario.n)
    }  # the model's answer to each conversation, by tag
    answers["warmup"] = "Warming up."
    warmups = [f"warmup{w}" for w in range(scenario.workers)]  # one per connection
    answers.update(dict.fromkeys(warmups, answers["warmup"]))

    def responder(body: dict[str, Any]) -> Answer:
        request = Request(path="", body=body, headers={}, at=0.0)
        tag = _tag_of(request) or "warmup"
        return Answer(
            text=answers.get(tag, answers["warmup"]),
            ttft=scenario.ttft,
            tokens_per_second=scenario.tokens_per_second / scenario.tokens_per_event,
            chunk_size=CHARS_PER_TOKEN * scenario.tokens_per_event,
        )

    slack = WorkspaceSlack(
        latency=scenario.slack_latency, connection_latency=scenario.slack_connection_latency
    )
    llm = FakeOpenAI(default=responder)
    log_path = out / f"bot-{name}.log"
    async with slack, on_own_thread(llm):
        bot_path = Path(scenario.bot_path) if scenario.bot_path else None
        env = bot_env(slack, llm, None, {**store_env, **scenario.env()}, bot_path)
        async with bot_process(env, log_path) as proc:
            # Each worker opens its own Socket Mode connection; Slack (the fake: round robin)
            # spreads the events over them.
            start_up = 60 + 30 * (scenario.workers - 1)  # worker 0 first, then the others
            connected = await _wait_until(
                lambda: slack.connected >= scenario.workers,
                start_up,
                proc=proc,
                what="Socket Mode",
            )
            if not connected:
                raise RuntimeError(
                    f"{slack.connected} of {scenario.workers} Socket Mode connection(s) within "
                    f"{start_up} s; see {log_path}"
                )
            tracker = _Tracker(slack, llm, answers, quiet_after=scenario.quiet_after())
            meter = ProcessMeter(proc.pid)

            # Warm-up, one mention per connection (so per worker): Bolt's one-time auth.test,
            # first connections, imports on first use.
            for index, tag in enumerate(warmups):
                await slack.send_event(
                    mention_event(f"bench-q{tag}", channel=f"CWARMUP{index}", team="TWARMUP"),
                    team_id="TWARMUP",
                    socket=index,
                )

            def warm() -> bool:
                tracker.poll()
                return (
                    all(tracker.finished(t, f"CWARMUP{i}") for i, t in enumerate(warmups))
                    or tracker.quiet()
                )

            if not await _wait_until(warm, 30, proc=proc, what="the warm-up replies"):
                raise RuntimeError(f"the warm-up replies did not finish in 30 s; see {log_path}")
            bot_pids = meter.pids()
            expected = scenario.workers + (scenario.workers > 1)  # the supervisor
            if len(bot_pids) != expected:
                raise RuntimeError(
                    f"{len(bot_pids)} bot processes ({bot_pids}), expected {expected} with "
                    f"WORKERS={scenario.workers}; see {log_path}"
                )
            stores = server_pids(store)
            replies_before = await replies_by_worker(log_path)

            calls_from = len(slack.calls)
            requests_from = len(llm.requests)
            commands_before = command_counts(store)
            rss_before = meter.rss_kib()
            profiler = None
            if scenario.profile:
                profiler = Profiler(
                    proc.pid,
                    out / f"profile-{name}.txt",
                    subprocesses=scenario.workers > 1,
                )
                await profiler.start()
            loadavg_before = os.getloadavg()
            sampler = asyncio.create_task(_sample(meter, stores))
            loop_lag = LoopLag()
            loop_lag.start()

            # No garbage collection in this process during the load: the fakes keep every
            # call and every token's time stamp, so collections grow long, and every time
            # stamp taken meanwhile is late. At N = 1000 (1 per workspace) this process's
            # loop lag max was 170-240 ms with collections, 105 ms without (one run each).
            gc.disable()
            try:
                before = _reading(meter, stores)
                started = before.at
                sent = await _send_all(slack, scenario)
                tracker.mark(slack.clock())
                conversations = [
                    Conversation(
                        index=i,
                        team=team,
                        channel=channel,
                        ts=ts,
                        sent_at=at,
                        answer=answers[str(i)],
                        expected=render(answers[str(i)]),
                        concurrent_in_workspace=0,
                    )
                    for i, (team, channel, ts, at, _) in enumerate(sent)
                ]
                per_team = Counter(c.team for c in conversations)
                conversations = [_with_concurrency(c, per_team[c.team]) for c in conversations]
                pending = {str(c.index): c.channel for c in conversations}

                def all_done() -> bool:
                    tracker.poll()
                    for tag in [t for t, ch in pending.items() if tracker.finished(t, ch)]:
                        del pending[tag]
                    return not pending or tracker.quiet()

                await _wait_until(
                    all_done, scenario.deadline(), poll=0.1, proc=proc, what="replies"
                )
            finally:
                gc.enable()
            after = _reading(meter, stores)
            loadavg_after = os.getloadavg()
            wait = {  # how the wait ended; its length (the load window: wall_seconds)
                "ended": "finished" if not pending else "quiet" if tracker.quiet() else "deadline",
                "seconds": round(after.at - started, 3),
                "quiet_after_s": scenario.quiet_after(),
            }
            peak = meter.peak_rss_kib()
            pids_after = meter.pids()
            replies_after = await _settled_replies(log_path)
            commands_after = command_counts(store)
            await loop_lag.stop()
            sampler.cancel()
            gathered = await asyncio.gather(sampler, return_exceptions=True)
            if profiler is not None:
                await profiler.stop()

        calls = slack.calls[calls_from:]
        requests = llm.requests[requests_from:]

    samples = gathered[0] if gathered and isinstance(gathered[0], list) else []
    # The load window: sending → the last reply's final form (for a reply left unfinished,
    # its last Slack call), not the wait's end, which may be ``quiet_after`` later.
    load_end = max(
        (
            tracker.finished_at.get(str(c.index), tracker.last_call_at.get(c.channel, started))
            for c in conversations
        ),
        default=started,
    )
    load_end = min(max(load_end, started), after.at)
    window = [before, *(s for s in samples if s.at < load_end)]
    window.append(_interpolate([before, *samples, after], load_end))

    acked = {i: slack.acked_at.get(envelope) for i, (*_, envelope) in enumerate(sent)}
    # channel -> when the first sign of work (a placeholder post or a stream start) reached Slack
    posted: dict[str, float] = {}
    for at, method, args in slack.arrivals:
        if method in ("chat.postMessage", "chat.startStream"):
            posted.setdefault(str(args.get("channel")), at)
    return _measure(
        scenario,
        conversations,
        acked,
        posted,
        calls,
        requests,
        loop_lags=loop_lag.lags,
        redis_commands=_command_delta(commands_before, commands_after),
        unfinished=set(pending),
        wait=wait,
        wall=load_end - started,
        readings=window,
        rss_before=rss_before,
        peak=peak,
        profiler=profiler,
        processes={"before": bot_pids, "after": pids_after, "store_servers": stores},
        by_worker=_difference(replies_after, replies_before),
        loadavg=(loadavg_before, loadavg_after),
    )


def _command_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    delta = {name: count - before.get(name, 0) for name, count in after.items()}
    return {name: count for name, count in delta.items() if count > 0 and name != "info"}


async def _settled_replies(log_path: Path, seconds: float = 5.0) -> dict[str, dict[str, float]]:
    """The bot's replies by worker and outcome once every reply started has an outcome (a
    reply's final call shows in Slack a moment before the bot counts it), or after
    ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        counts = await replies_by_worker(log_path)
        started = sum(c.get("started", 0.0) for c in counts.values())
        ended = sum(v for c in counts.values() for k, v in c.items() if k != "started")
        if ended >= started or loop.time() >= deadline:
            return counts
        await asyncio.sleep(0.05)


def _difference(
    after: dict[str, dict[str, float]], before: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Counters by worker and outcome: ``after`` − ``before``, zeros left out."""
    result = {}
    for worker, outcomes in sorted(after.items()):
        earlier = before.get(worker, {})
        delta = {k: v - earlier.get(k, 0.0) for k, v in sorted(outcomes.items())}
        result[worker] = {k: v for k, v in delta.items() if v}
    return result


def _with_concurrency(c: Conversation, k: int) -> Conversation:
    return Conversation(
        c.index, c.team, c.channel, c.ts, c.sent_at, c.answer, c.expected, concurrent_in_workspace=k
    )


async def _send_all(
    slack: WorkspaceSlack, scenario: Scenario
) -> list[tuple[str, str, str, float, str]]:
    """Deliver every mention at once; (team, channel, ts, sent at, envelope id) each."""

    async def send(i: int) -> tuple[str, str, str, float, str]:
        team = f"TB{i % scenario.workspaces:05d}"
        channel = f"CB{i:06d}"
        event = mention_event(
            f"bench-q{i}: tell me something", user=f"UB{i:06d}", channel=channel, team=team
        )
        at = time.monotonic()
        envelope = await slack.send_event(event, team_id=team)
        return team, channel, str(event["ts"]), at, envelope

    return list(await asyncio.gather(*(send(i) for i in range(scenario.n))))


@dataclass(frozen=True, slots=True)
class _Reading:
    """CPU seconds so far, at ``at``: of the bot's processes, of this process (the fakes, the
    load), of the store's servers, and of the whole machine (every core's busy time)."""

    at: float
    bot_cpu: float
    own_cpu: float
    store_cpu: float = 0.0
    machine_cpu: float = 0.0


def _reading(meter: ProcessMeter, store_pids: Sequence[int] = ()) -> _Reading:
    return _Reading(
        time.monotonic(),
        meter.cpu_seconds(),
        time.process_time(),
        cpu_seconds_of(store_pids),
        machine_busy_seconds(),
    )


def _interpolate(readings: Sequence[_Reading], at: float) -> _Reading:
    """The CPU counters at ``at``, linear between the readings around it (in time order)."""
    for a, b in itertools.pairwise(readings):
        if a.at <= at <= b.at:
            share = (at - a.at) / (b.at - a.at) if b.at > a.at else 1.0
            return _Reading(
                at,
                a.bot_cpu + share * (b.bot_cpu - a.bot_cpu),
                a.own_cpu + share * (b.own_cpu - a.own_cpu),
                a.store_cpu + share * (b.store_cpu - a.store_cpu),
                a.machine_cpu + share * (b.machine_cpu - a.machine_cpu),
            )
    return readings[-1] if at >= readings[-1].at else readings[0]


async def _sample(
    meter: ProcessMeter, store_pids: Sequence[int], every: float = 0.5
) -> list[_Reading]:
    """The CPU counters every ``every`` seconds, until cancelled."""
    samples: list[_Reading] = []
    try:
        while True:
            samples.append(_reading(meter, store_pids))
            await asyncio.sleep(every)
    except asyncio.CancelledError:
        return samples


def _measure(
    scenario: Scenario,
    conversations: Sequence[Conversation],
    acked: dict[int, float | None],
    posted: dict[str, float],
    calls: Sequence[Call],
    requests: Sequence[Request],
    *,
    loop_lags: Sequence[float],
    redis_commands: dict[str, int],
    unfinished: set[str],
    wait: dict[str, Any],
    wall: float,
    readings: Sequence[_Reading],
    rss_before: int,
    peak: int,
    profiler: Profiler | None,
    processes: dict[str, list[int]] | None = None,
    loadavg: tuple[Sequence[float], Sequence[float]] | None = None,
    by_worker: dict[str, dict[str, float]] | None = None,
) -> PointResult:
    """The point's figures. ``unfinished``: tags of the replies that never had their final
    form; ``wall``: the load window, sending → the last reply's final form; ``readings``: CPU
    counters over that window, in time order, the last at its end; ``processes``: the bot's
    pids when the load began and ended, and the store servers'; ``loadavg``: the machine's
    load averages then; ``by_worker``: the bot's replies during the load by worker and
    outcome (its metrics)."""
    by_channel: defaultdict[str, list[Call]] = defaultdict(list)
    for call in calls:
        by_channel[str(call.args.get("channel", call.args.get("channel_id")))].append(call)
    served = {tag: r for r in requests if (tag := _tag_of(r)) is not None}
    replies = []
    for c in conversations:
        request = served.get(str(c.index))
        replies.append(
            analyse_reply(
                c,
                by_channel.get(c.channel, []),
                request.emitted if request is not None else [],
                acked_at=acked.get(c.index),
                placeholder_requested_at=posted.get(c.channel),
                model_request_at=request.at if request is not None else None,
                finished=str(c.index) not in unfinished,
            )
        )
    set_bounds(replies, _slack_bounds(scenario))
    summary = summarise(replies, calls)
    # The same bound under the bot's own settings (its budgets, EDIT_INTERVAL,
    # NATIVE_FLUSH_INTERVAL): what is left of the ratio above once the headroom those settings
    # keep below Slack's limits is set aside.
    summary["visible_lag_s"]["settings"] = {
        **_settings(scenario),
        **bound_under(replies, _settings_bounds(scenario)),
    }
    n = max(1, len(conversations))
    summary["redis_commands_per_reply"] = {
        name: round(count / n, 2)
        for name, count in sorted(redis_commands.items(), key=lambda kv: -kv[1])
    }
    summary["timed_out"] = len(unfinished)  # replies without their final form
    summary["wall_seconds"] = round(wall, 3)  # the load window: sending → last final form
    summary["wait"] = wait  # how the wait for final forms ended: finished, quiet or deadline
    summary["tokens_streamed"] = tokens = round(summary["characters_streamed"] / CHARS_PER_TOKEN)
    events = math.ceil(scenario.answer_tokens / scenario.tokens_per_event)
    nominal = (events - 1) * scenario.tokens_per_event / scenario.tokens_per_second
    stretched = [r.stream_seconds / nominal - 1 for r in replies if r.emitted and nominal > 0]
    # The fake model writes on a fixed schedule; when it slips, either the bot does not read
    # fast enough (TCP backpressure) or this process could not keep up: either way, say so.
    summary["model_stream_slip"] = {
        "p50": round_or_none(percentile(stretched, 50)),
        "p99": round_or_none(percentile(stretched, 99)),
    }
    first, last = readings[0], readings[-1]
    cpu = last.bot_cpu - first.bot_cpu
    load_cpu = last.own_cpu - first.own_cpu
    store_cpu = last.store_cpu - first.store_cpu
    machine_cpu = last.machine_cpu - first.machine_cpu
    processes = processes or {}
    busiest = max(
        (
            (b.bot_cpu - a.bot_cpu) / (b.at - a.at)
            for a, b in zip(readings, readings[2:], strict=False)
            if b.at - a.at >= 0.5
        ),
        default=None,
    )  # CPU cores used over ~1 s windows (samples every 0.5 s)
    bot = {
        "cpu_seconds": round(cpu, 3),
        "cpu_seconds_per_1k_tokens": round(cpu / tokens * 1000, 4) if tokens else None,
        "cpu_us_per_sse_event": (
            round(cpu / summary["sse_events"] * 1e6, 1) if summary["sse_events"] else None
        ),
        "cpu_cores_mean": round(cpu / wall, 3) if wall > 0 else None,
        "cpu_cores_peak_1s": round(busiest, 3) if busiest is not None else None,
        "rss_before_mib": round(rss_before / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "rss_per_stream_kib": round((peak - rss_before) / scenario.n, 1) if scenario.n else None,
        "workers": scenario.workers,
        # Summed: the supervisor and its workers (one process with WORKERS=1). Pids that
        # differ between the two lists mean a worker was restarted during the load.
        "processes": processes.get("before"),
        "processes_after": processes.get("after"),
        "replies_by_worker": by_worker,
    }
    store = {
        "kind": scenario.redis,
        "servers": processes.get("store_servers"),
        "cpu_seconds": round(store_cpu, 3),
        "cpu_seconds_per_1k_tokens": round(store_cpu / tokens * 1000, 4) if tokens else None,
        "cpu_cores_mean": round(store_cpu / wall, 3) if wall > 0 else None,
    }
    # The machine is shared: what its cores did besides the bot, the store and this process
    # in the load window is other work, and the figures are as noisy as that is large.
    machine_load = {
        "cores": usable_cores(),
        "busy_cores_mean": round(machine_cpu / wall, 3) if wall > 0 else None,
        "other_work_cores_mean": (
            round(max(0.0, machine_cpu - cpu - load_cpu - store_cpu) / wall, 3)
            if wall > 0
            else None
        ),
        "loadavg_before": [round(x, 2) for x in loadavg[0]] if loadavg else None,
        "loadavg_after": [round(x, 2) for x in loadavg[1]] if loadavg else None,
    }
    load_generator = {
        "cpu_seconds": round(load_cpu, 3),
        "cpu_cores_mean": round(load_cpu / wall, 3) if wall > 0 else None,
        "loop_lag_ms": {
            "p50": ms(percentile(loop_lags, 50)),
            "p99": ms(percentile(loop_lags, 99)),
            "max": ms(max(loop_lags, default=None)),
        },
        "note": "fake Slack + fake model + analysis polling, in the benchmark process",
    }
    profile = None
    if profiler is not None:
        if profiler.error is None and profiler.out.exists():
            profile = {"file": str(profiler.out), **summarize_profile(profiler.out)}
        else:
            profile = {"error": profiler.error}
    sample = _pick_sample(replies)
    return PointResult(
        scenario=scenario,
        replies=replies,
        summary=summary,
        bot=bot,
        store=store,
        machine_load=machine_load,
        load_generator=load_generator,
        profile=profile,
        targets=_targets(scenario, summary, replies),
        sample=sample_timeline(sample) if sample is not None else None,
    )


def _pick_sample(replies: Sequence[Reply]) -> Reply | None:
    """The reply with the median mean lag (a typical one) for the single-reply chart."""
    scored = [r for r in replies if r.lags]
    if not scored:
        return replies[0] if replies else None
    scored.sort(key=lambda r: sum(r.lags) / len(r.lags))
    return scored[len(scored) // 2]


def _targets(
    scenario: Scenario, summary: dict[str, Any], replies: Sequence[Reply]
) -> dict[str, Any]:
    """Issue 7's targets, where this point can tell."""
    fv = summary["first_visible_ms"]
    lag = summary["visible_lag_s"]
    limit_ms = scenario.slack_latency * 1000 + 20
    targets: dict[str, Any] = {
        "first_visible_p50_le_rtt_plus_20ms": {
            "limit_ms": limit_ms,
            "value_ms": fv["p50"],
            "met": fv["p50"] is not None and fv["p50"] <= limit_ms,
        },
        "mean_lag_le_1.25x_bound": {
            "limit": 1.25,
            "value": lag["ratio_mean"],
            "met": lag["ratio_mean"] is not None and lag["ratio_mean"] <= 1.25,
        },
        "final_text_correct_100pct": {
            "value": summary["correct"]["share"],
            "met": summary["correct"]["share"] == 1.0,
        },
    }
    if scenario.per_workspace <= 20:
        count = summary["ratelimited_429"]["total"]
        targets["zero_429_at_le_20_per_workspace"] = {"value": count, "met": count == 0}
    if scenario.n >= 1000:
        targets["first_visible_p99_le_250ms_at_1000"] = {
            "limit_ms": 250,
            "value_ms": fv["p99"],
            "met": fv["p99"] is not None and fv["p99"] <= 250,
        }
    # Where a workspace has more replies of one renderer than the burst of the Slack budget its
    # text goes through (chat.update, or chat.appendStream), no renderer can meet these: that
    # budget alone holds the j-th first text of the workspace back until (j − burst) / rate.
    waits = []
    for (_, renderer), k in Counter((r.conversation.team, r.renderer) for r in replies).items():
        per_minute, burst = DEFAULT_BUDGETS[TEXT_METHOD[renderer]]
        waits += [max(0.0, (j - burst) * 60 / per_minute) for j in range(1, k + 1)]
    if any(waits):
        for name in ("first_visible_p50_le_rtt_plus_20ms", "first_visible_p99_le_250ms_at_1000"):
            if name in targets:
                targets[name]["budget_bound_p50_p99_ms"] = [
                    ms(percentile(waits, 50)),
                    ms(percentile(waits, 99)),
                ]
    return targets


# -- reporting ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
        "note": "2 cores, shared and noisy: compare ratios and percentiles within one run",
    }


def code_version(bot_path: str | None = None) -> dict[str, Any]:
    """Which bot was measured: the commit, the files under bot/ changed since, and a hash
    of the content of the ``bot`` package that ran (it changes between runs)."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    digest = hashlib.sha256()
    base = Path(bot_path) if bot_path else ROOT
    for path in sorted((base / "bot").rglob("*.py")):
        digest.update(path.relative_to(base).as_posix().encode() + b"\0" + path.read_bytes())
    return {
        "bot_path": str(base / "bot"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "changed": git("status", "--porcelain", "--", "bot").splitlines(),
        "bot_sha256": digest.hexdigest()[:16],
    }


BOUND_DEFINITION = lag_bound.__doc__ or ""

_COLUMNS = (
    ("N", 5, lambda p: p.scenario.n),
    ("M", 4, lambda p: p.scenario.workspaces),
    ("W", 2, lambda p: p.scenario.workers),
    ("store", 10, lambda p: p.scenario.redis),
    ("ph p50", 7, lambda p: p.summary["placeholder_ms"]["p50"]),
    ("ph p99", 7, lambda p: p.summary["placeholder_ms"]["p99"]),
    ("1st p50", 8, lambda p: p.summary["first_visible_ms"]["p50"]),
    ("1st p99", 8, lambda p: p.summary["first_visible_ms"]["p99"]),
    ("msg→1st", 7, lambda p: p.summary["first_text_after_event_ms"]["p50"]),
    ("p99", 6, lambda p: p.summary["first_text_after_event_ms"]["p99"]),
    ("lag mean", 8, lambda p: p.summary["visible_lag_s"]["mean"]),
    ("lag p99", 8, lambda p: p.summary["visible_lag_s"]["p99"]),
    ("bound", 7, lambda p: p.summary["visible_lag_s"]["bound_mean"]),
    ("ratio", 6, lambda p: p.summary["visible_lag_s"]["ratio_mean"]),
    ("set×", 5, lambda p: p.summary["visible_lag_s"]["settings"]["ratio_mean"]),
    ("upd/rep", 7, lambda p: p.summary["slack_calls_per_reply"].get("chat.update")),
    ("app/rep", 7, lambda p: p.summary["slack_calls_per_reply"].get("chat.appendStream")),
    ("post/rep", 8, lambda p: p.summary["slack_calls_per_reply"].get("chat.postMessage")),
    ("429", 5, lambda p: p.summary["ratelimited_429"]["total"]),
    ("ok %", 6, lambda p: _pct(p.summary["correct"]["share"])),
    ("cpu/1k", 7, lambda p: p.bot["cpu_seconds_per_1k_tokens"]),
    ("cores", 6, lambda p: p.bot["cpu_cores_mean"]),
    ("peak", 6, lambda p: p.bot["peak_rss_mib"]),
    ("KiB/str", 8, lambda p: p.bot["rss_per_stream_kib"]),
)


def _pair(figures: dict[str, Any], pct: bool = False) -> str:
    if pct:
        return "/".join("–" if figures[k] is None else f"{figures[k]:.0%}" for k in ("p50", "p99"))
    return f"{figures['p50']}/{figures['p99']}"


def _pct(share: float | None) -> float | None:
    return None if share is None else round(share * 100, 1)


def table(points: Sequence[PointResult]) -> str:
    """The readable table: one row per point."""

    def cell(value: Any, width: int) -> str:
        if value is None:
            text = "–"
        elif isinstance(value, float):
            text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        else:
            text = str(value)
        return text.rjust(width)

    modes = sorted({p.scenario.mode for p in points})
    header = " ".join(name.rjust(width) for name, width, _ in _COLUMNS)
    rows = [" ".join(cell(get(p), width) for _, width, get in _COLUMNS) for p in points]
    legend = (
        "W = the bot's WORKERS (processes); store = --redis;\n"
        "ph = event sent → first sign of work visible (placeholder post or stream start, ms); "
        "1st = model's first token → first text visible (ms);\nmsg→1st, p99 = event sent → "
        "first text visible, p50 and p99 (ms);\nlag = per character, visible in "
        "Slack − emitted by the model (s); bound = lower bound of the mean lag under Slack's "
        "limits (s);\nratio = lag mean / bound; set× = lag mean / the same bound under the "
        "bot's own budgets and intervals;\nupd/rep, app/rep, post/rep = chat.update / "
        "chat.appendStream / chat.postMessage calls per reply;\nok % = final text correct; "
        "cpu/1k = bot CPU s per 1,000 streamed tokens (every bot process: supervisor and "
        "workers); cores = bot CPU s / wall s;\npeak = bot peak RSS (MiB, summed over its "
        "processes); KiB/str = (peak RSS − RSS before the load) / N"
    )
    lines = [f"STREAM_MODE={', '.join(modes)}", header, *rows, "", legend]
    for p in points:
        s = p.summary
        lines.append(_renderer_line(p))
        lines.append(
            f"N={p.scenario.n}: p50/p99 ms after the event: ack {_pair(s['ack_ms'])}, "
            f"placeholder (or stream start) requested {_pair(s['placeholder_requested_ms'])}, "
            f"visible {_pair(s['placeholder_ms'])}, model request "
            f"{_pair(s['model_request_ms'])}, first text visible "
            f"{_pair(s['first_text_after_event_ms'])}; peak concurrent model streams "
            f"{s['peak_concurrent_streams']}; bot peak {p.bot['cpu_cores_peak_1s']} cores;\n"
            f"  model stream slip p50/p99 {_pair(s['model_stream_slip'], pct=True)}; this "
            f"process's loop lag p99/max {p.load_generator['loop_lag_ms']['p99']}/"
            f"{p.load_generator['loop_lag_ms']['max']} ms; bot "
            f"{p.bot['cpu_us_per_sse_event']} µs CPU per SSE event;\n"
            f"  store ({p.store['kind']}) CPU {p.store['cpu_seconds_per_1k_tokens']} s per 1k "
            f"tokens, {p.store['cpu_cores_mean']} cores; this process "
            f"{p.load_generator['cpu_cores_mean']} cores; machine busy "
            f"{p.machine_load['busy_cores_mean']} of {p.machine_load['cores']} cores, other "
            f"work {p.machine_load['other_work_cores_mean']} cores"
        )
        missed = [
            name + (" (budget-bound)" if "budget_bound_p50_p99_ms" in t else "")
            for name, t in p.targets.items()
            if not t["met"]
        ]
        lines.append(
            f"N={p.scenario.n}: targets missed: {', '.join(missed) or 'none'}" + _unfinished(p)
        )
        if p.profile and p.profile.get("self"):
            packages = ", ".join(
                f"{name} {share:.0%}" for name, share in list(p.profile["by_owner"].items())[:6]
            )
            top = ", ".join(
                f"{row['function']} {row['share']:.0%}" for row in p.profile["self"][:4]
            )
            lines.append(f"  bot CPU by owner: {packages}")
            lines.append(f"  hottest functions (own time): {top}")
    return "\n".join(lines)


def _unfinished(p: PointResult) -> str:
    """Replies the run stopped waiting for, and why it stopped."""
    s = p.summary
    if not s["timed_out"]:
        return ""
    wait = s["wait"]
    why = (
        f"nothing happened for {wait['quiet_after_s']:g} s"
        if wait["ended"] == "quiet"
        else "the deadline passed"
    )
    left_open = s["correct"]["streams_left_open"]
    return (
        f"; {s['timed_out']} replies unfinished ({why}"
        + (f"; {left_open} with a native stream never closed" if left_open else "")
        + ")"
    )


def _renderer_line(p: PointResult) -> str:
    """Which renderer served the replies; figures for each when both did."""
    s = p.summary
    counts = s["renderers"]
    line = (
        f"N={p.scenario.n}: renderers: native {counts['native']} (fallbacks "
        f"{counts['fallbacks']}), edit {counts['edit']}"
    )
    split = s["visible_lag_s"].get("by_renderer")
    if split:
        settings = s["visible_lag_s"]["settings"].get("by_renderer", {})
        first = s["first_visible_ms"].get("by_renderer", {})
        for name, lag in split.items():
            fv = first.get(name, {"p50": None, "p99": None})
            line += (
                f"\n  {name}: 1st {_pair(fv)} ms, lag mean {lag['mean']} s, p99 {lag['p99']} s, "
                f"bound {lag['bound_mean']} s, ratio {lag['ratio_mean']}, set× "
                f"{settings.get(name, {}).get('ratio_mean')}"
            )
    return line


def write_json(
    path: Path,
    points: Sequence[PointResult],
    argv: Sequence[str],
    code: dict[str, Any] | None = None,
) -> None:
    """The result document; ``code``: ``code_version()`` taken when the run started (the
    ``bot`` package may change while it runs), else now."""
    document = {
        "command": "python -m bench.run " + " ".join(argv),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "code": code or code_version(points[0].scenario.bot_path if points else None),
        "slack_budgets": {k: list(v) for k, v in DEFAULT_BUDGETS.items()},
        "visible_lag_bound": BOUND_DEFINITION.strip(),
        "points": [p.to_json() for p in points],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")


# -- command line ------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20, help="concurrent mentions (default 20)")
    parser.add_argument("--workspaces", type=int, default=1, help="workspaces M (default 1)")
    parser.add_argument(
        "--per-workspace",
        type=int,
        default=None,
        help="replies per workspace: M = ceil(N / this); --sweep defaults to 20",
    )
    parser.add_argument("--sweep", action="store_true", help="run N = 1, 20, 200, 1000")
    parser.add_argument(
        "--sweep-points", type=str, default=None, help="comma-separated N for --sweep"
    )
    parser.add_argument("--slack-latency", type=float, default=0.1, help="Slack round trip, s")
    parser.add_argument(
        "--slack-connection-latency",
        type=float,
        default=0.1,
        help="extra delay on each new connection to Slack (TLS handshake), s",
    )
    parser.add_argument("--ttft", type=float, default=0.5, help="model time to first token, s")
    parser.add_argument("--tps", type=float, default=50.0, help="model tokens per second")
    parser.add_argument("--tokens", type=int, default=200, help="answer length in tokens")
    parser.add_argument(
        "--tokens-per-event", type=int, default=1, help="tokens per SSE chunk (default 1)"
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="auto",
        help="the bot's STREAM_MODE (default auto, production's: native streams where possible)",
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="the bot's WORKERS: N processes under a supervisor when > 1, or 'auto' "
        "(usable cores); default 1",
    )
    parser.add_argument(
        "--redis",
        choices=STORE_KINDS,
        default="standalone",
        help="the store: a private redis-server (standalone, default), a private 3-master "
        "Redis Cluster (cluster), or the bot's embedded server (embedded: no REDIS_URL)",
    )
    parser.add_argument(
        "--bot-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra bot setting (environment variable), repeatable",
    )
    parser.add_argument(
        "--bot-path",
        default=None,
        help="folder with another `bot` package to run instead of ./bot (e.g. a patched copy)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds per point")
    parser.add_argument("--profile", action="store_true", help="sample the bot with py-spy")
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder (bench/out)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    for item in args.bot_env:
        if "=" not in item:
            parser.error(f"--bot-env wants KEY=VALUE, got {item!r}")
        name = item.split("=", 1)[0]
        if name in _OWN_SETTINGS:
            parser.error(f"set {name} with {_OWN_SETTINGS[name]}, not --bot-env {name}=…")
    if args.bot_path and not (Path(args.bot_path) / "bot" / "__init__.py").is_file():
        # Else the child finds no package there and silently runs ./bot: a "before" that is "after".
        parser.error(
            f"--bot-path {args.bot_path}: no bot/__init__.py there (give the folder holding bot/)"
        )
    return args


def _workers(value: str) -> int:
    """``--workers``: a number, or ``auto`` as the bot reads it (the usable cores)."""
    if value == "auto":
        return usable_cores()
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number or 'auto', not {value!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"at least 1, not {count}")
    return count


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    env = dict(item.split("=", 1) for item in args.bot_env)
    if args.sweep:
        sizes = [int(x) for x in args.sweep_points.split(",")] if args.sweep_points else list(SWEEP)
        per = args.per_workspace or 20
    else:
        sizes, per = [args.n], args.per_workspace
    result = []
    for n in sizes:
        workspaces = math.ceil(n / per) if per else args.workspaces
        result.append(
            Scenario(
                n=n,
                workspaces=max(1, min(workspaces, n)),
                slack_latency=args.slack_latency,
                slack_connection_latency=args.slack_connection_latency,
                ttft=args.ttft,
                tokens_per_second=args.tps,
                answer_tokens=args.tokens,
                tokens_per_event=args.tokens_per_event,
                mode=args.mode,
                bot_env=env,
                workers=args.workers,
                redis=args.redis,
                timeout=args.timeout,
                profile=args.profile,
                seed=args.seed,
                bot_path=str(Path(args.bot_path).resolve()) if args.bot_path else None,
            )
        )
    return result


async def run(
    points: Sequence[Scenario],
    out: Path,
    progress: bool = True,
    *,
    cluster: RedisCluster3 | None = None,
) -> list[PointResult]:
    """Run the points in order, each store kind started once (before its first point) and
    stopped at the end; ``cluster``: a running cluster for the ``cluster`` points instead of
    starting one (the tests' session fixture)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        stores: dict[StoreKind, BenchStore] = {}
        for scenario in points:
            if scenario.redis not in stores:
                stores[scenario.redis] = stack.enter_context(
                    open_store(scenario.redis, workdir / scenario.redis, cluster=cluster)
                )
            if progress:
                print(
                    f"running N={scenario.n} across {scenario.workspaces} workspace(s), "
                    f"STREAM_MODE={scenario.mode}, WORKERS={scenario.workers}, "
                    f"store {scenario.redis}…",
                    file=sys.stderr,
                    flush=True,
                )
            results.append(await run_point(scenario, stores[scenario.redis], out, workdir))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    planned = scenarios(args)
    code = code_version(planned[0].bot_path if planned else None)  # what is about to run
    points = asyncio.run(run(planned, args.out))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = args.out / f"bench-{stamp}.json"
    write_json(path, points, argv, code)
    print(table(points))
    print(f"\nwrote {path}")
    if not args.no_charts:
        try:
            from bench.charts import draw_all
        except ImportError:
            print("charts skipped: matplotlib is not installed (pip install -e '.[bench]')")
        else:
            for chart in draw_all(json.loads(path.read_text()), args.out, stamp):
                print(f"wrote {chart}")
    return 0 if all(p.summary["correct"]["share"] == 1.0 for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
