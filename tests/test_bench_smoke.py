"""The benchmark still works: tiny runs through the same code path as ``python -m bench.run``
(real bot process, fake Slack with its limits, fake model), one per renderer, on each store
(``--redis``: a private redis-server, the bot's embedded server, a 3-master cluster) and with
worker processes (``--workers 2``); the CPU meter's view of the bot's process tree; the analysis
of a native reply that falls back to edits, or whose stream is never closed, from hand-written
call records; and when the run's tracker counts a reply finished or stops waiting."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.analysis import Conversation, analyse_reply
from bench.harness import ProcessMeter, WorkspaceSlack
from bench.run import Scenario, StreamMode, _Tracker, parse_args, run, scenarios, table
from bench.stores import StoreKind
from bot.render.text import render
from tests.fakes.openai import FakeOpenAI, Request
from tests.fakes.slack import Call
from tests.redis_cluster import RedisCluster3


def _tiny(
    mode: StreamMode, *, n: int = 2, workers: int = 1, redis: StoreKind = "standalone"
) -> Scenario:
    return Scenario(
        n=n,
        workspaces=n,
        slack_latency=0.01,
        slack_connection_latency=0.0,
        ttft=0.05,
        tokens_per_second=200.0,
        answer_tokens=40,
        timeout=30,
        mode=mode,
        workers=workers,
        redis=redis,
    )


async def test_tiny_benchmark_run_shows_every_answer_exactly(tmp_path: Path) -> None:
    [point] = await run([_tiny("edit")], tmp_path, progress=False)

    summary = point.summary
    assert summary["timed_out"] == 0
    assert summary["correct"]["share"] == 1.0, [r.final_texts for r in point.replies]
    assert summary["ratelimited_429"]["total"] == 0
    assert summary["slack_calls_per_reply"]["chat.postMessage"] == 1
    assert summary["tokens_streamed"] == summary["sse_events"] == 2 * 40
    assert summary["first_visible_ms"]["count"] == 2
    assert summary["visible_lag_s"]["characters"] == 2 * 40 * 4
    assert summary["renderers"] == {"native": 0, "edit": 2, "fallbacks": 0}
    assert point.bot["cpu_seconds"] > 0 and point.bot["peak_rss_mib"] > 10
    lines = table([point]).splitlines()
    assert lines[0] == "STREAM_MODE=edit" and "app/rep" in lines[1]


async def test_tiny_native_benchmark_run_measures_the_streams(tmp_path: Path) -> None:
    """On the embedded store: the bot starts its own server, which is metered apart."""
    [point] = await run([_tiny("native", redis="embedded")], tmp_path, progress=False)

    summary = point.summary
    assert summary["timed_out"] == 0 and summary["wait"]["ended"] == "finished"
    assert summary["correct"]["share"] == 1.0, [r.final_texts for r in point.replies]
    assert summary["correct"]["streams_left_open"] == 0
    assert [r.renderer for r in point.replies] == ["native", "native"]
    # The load window ends with the last reply's final form, not when the wait noticed it.
    last = max(r.done_at or 0.0 for r in point.replies)
    first_sent = min(r.conversation.sent_at for r in point.replies)
    assert abs(summary["wall_seconds"] - (last - first_sent)) < 0.05
    assert summary["wait"]["seconds"] - summary["wall_seconds"] < 0.5
    assert summary["renderers"] == {"native": 2, "edit": 0, "fallbacks": 0}
    calls = summary["slack_calls_per_reply"]
    assert calls["chat.startStream"] == 1 and calls["chat.appendStream"] >= 1
    assert "chat.postMessage" not in calls and "chat.update" not in calls
    assert summary["first_visible_ms"]["count"] == 2
    assert summary["placeholder_ms"]["count"] == 2  # the empty stream, opened at once
    assert summary["visible_lag_s"]["characters"] == 2 * 40 * 4
    assert summary["visible_lag_s"]["never_visible"] == 0
    assert len(point.bot["processes"]) == 1  # the embedded server is not the bot
    [server] = point.store["servers"]
    assert server not in point.bot["processes"] and point.store["kind"] == "embedded"
    assert sum(summary["redis_commands_per_reply"].values()) > 10  # read from its socket


async def test_two_workers_on_a_cluster_share_the_mentions_and_are_metered_together(
    tmp_path: Path, redis_cluster: RedisCluster3
) -> None:
    """``--workers 2 --redis cluster``: a supervisor and two workers, each with its own Socket
    Mode connection (the fake deals events out in turn), on the session's 3-master cluster."""
    [point] = await run(
        [_tiny("native", n=4, workers=2, redis="cluster")],
        tmp_path,
        progress=False,
        cluster=redis_cluster,
    )

    summary = point.summary
    assert summary["timed_out"] == 0
    assert summary["correct"]["share"] == 1.0, [r.final_texts for r in point.replies]
    assert summary["first_text_after_event_ms"]["count"] == 4
    assert len(point.bot["processes"]) == 3  # the supervisor and both workers
    assert point.bot["processes_after"] == point.bot["processes"]  # none restarted
    assert point.store["kind"] == "cluster" and len(point.store["servers"]) == 3
    assert sum(summary["redis_commands_per_reply"].values()) > 10  # summed over the nodes
    by_worker = point.bot["replies_by_worker"]  # from the supervisor's /metrics
    assert by_worker == {w: {"complete": 2.0, "started": 2.0} for w in ("0", "1")}, by_worker
    row = table([point]).splitlines()[2].split()
    assert row[:4] == ["4", "4", "2", "cluster"]


def test_the_command_line_sets_workers_and_store() -> None:
    [point] = scenarios(parse_args(["--n", "3", "--workers", "2", "--redis", "embedded"]))
    assert (point.workers, point.redis, point.env()["WORKERS"]) == (2, "embedded", "2")
    assert [p.redis for p in scenarios(parse_args(["--sweep"]))] == ["standalone"] * 4
    for refused in (["--workers", "0"], ["--redis", "sentinel"], ["--bot-env", "WORKERS=3"]):
        with pytest.raises(SystemExit):
            parse_args(refused)


def test_the_meter_sums_the_bots_processes_but_not_another_program() -> None:
    """A parent that starts a child running the same interpreter (a worker) and one running
    another program (the embedded store's server): the worker's CPU counts, the other's not."""
    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    script = (
        "import subprocess, sys, time\n"
        f"worker = subprocess.Popen([sys.executable, '-c', {busy!r} + '\\ntime.sleep(30)'])\n"
        "other = subprocess.Popen(['sleep', '30'])\n"
        "print(worker.pid, other.pid, flush=True)\n"
        "time.sleep(30)\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE) as parent:
        assert parent.stdout is not None
        worker, other = map(int, parent.stdout.readline().split())
        try:
            meter = ProcessMeter(parent.pid)
            deadline = time.monotonic() + 10
            while meter.cpu_seconds() < 0.3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert meter.pids() == sorted([parent.pid, worker])
            assert other not in meter.pids()
            assert meter.cpu_seconds() >= 0.3
            assert meter.peak_rss_kib() >= meter.rss_kib() > 0
        finally:
            for pid in (worker, other, parent.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_a_native_reply_that_falls_back_is_rebuilt_from_its_calls() -> None:
    """Stream opened empty, two appends, the stream expires, the edit renderer edits the
    message to the whole (rendered) text: what Slack showed, step by step."""
    answer = "Hello there, all of you."
    conversation = Conversation(0, "T1", "C1", "1.0", 0.0, answer, render(answer), 1)

    def call(method: str, at: float, status: int = 200, error: str = "", **args: Any) -> Call:
        response = {"ok": False, "error": error} if error else {"ok": True, "ts": "2.0"}
        return Call(method, {"channel": "C1", **args}, at, status, response, "T1")

    calls = [
        call("chat.startStream", 0.1, thread_ts="1.0"),
        call("chat.appendStream", 0.7, ts="2.0", markdown_text="Hello "),
        call("chat.appendStream", 1.2, ts="2.0", markdown_text="there, "),
        call("chat.appendStream", 1.7, error="message_not_in_streaming_state", ts="2.0"),
        call("chat.update", 1.8, 429, error="ratelimited", ts="2.0", text=answer),
        call("chat.update", 2.9, ts="2.0", text=answer),
    ]
    emitted = [(0.6, 6), (1.1, 13), (1.6, len(answer))]
    reply = analyse_reply(conversation, calls, emitted)

    assert (reply.renderer, reply.fell_back, reply.correct) == ("native", True, True)
    assert reply.placeholder_at == 0.1  # the empty stream: a sign of work, not text
    assert reply.first_visible_at == 0.7
    assert reply.visible == [(0.7, 6), (1.2, 13), (2.9, len(answer))]
    assert reply.edits == [0.7, 1.2, 2.9]
    assert reply.ratelimited == [(1.8, "chat.update")]
    assert reply.final_texts == [answer] and reply.unseen_chars == 0


ANSWER = "Hello there, all of you."


def _call(method: str, at: float, error: str = "", **args: Any) -> Call:
    response = {"ok": False, "error": error} if error else {"ok": True, "ts": "2.0"}
    return Call(method, {"channel": "C1", **args}, at, 200, response, "T1")


def test_a_native_stream_never_closed_is_not_a_correct_reply() -> None:
    """Every word appended, but no chat.stopStream: Slack still shows the message streaming."""
    conversation = Conversation(0, "T1", "C1", "1.0", 0.0, ANSWER, render(ANSWER), 1)
    calls = [
        _call("chat.startStream", 0.1, thread_ts="1.0"),
        _call("chat.appendStream", 0.7, ts="2.0", markdown_text=ANSWER),
    ]
    emitted = [(0.6, len(ANSWER))]

    left_open = analyse_reply(conversation, calls, emitted)
    stopped = analyse_reply(
        conversation, [*calls, _call("chat.stopStream", 0.9, ts="2.0")], emitted
    )

    assert left_open.final_texts == [ANSWER] and left_open.exact_join
    assert (left_open.open_streams, left_open.correct) == (1, False)
    assert (stopped.open_streams, stopped.correct) == (0, True)
    unfinished = analyse_reply(conversation, calls[:1], emitted, finished=False)
    assert (unfinished.finished, unfinished.correct) == (False, False)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _records(clock: _Clock) -> tuple[WorkspaceSlack, FakeOpenAI]:
    """The fakes' records, never started: replies q0 in C1 and q1 in C2, models done."""
    slack, llm = WorkspaceSlack(clock=clock), FakeOpenAI(clock=clock)
    for tag in ("0", "1"):
        body = {"messages": [{"role": "user", "content": f"bench-q{tag}: tell me something"}]}
        request = Request(path="/v1/chat/completions", body=body, headers={}, at=clock.now)
        request.finished.set()
        llm.requests.append(request)
    return slack, llm


def _stream(slack: WorkspaceSlack, channel: str, at: float) -> str:
    ts = slack.add_message(channel, "", user=slack.bot_user_id, bot_id=slack.bot_id)
    message = slack.message(channel, ts)
    assert message is not None
    message.streaming = True
    response = {"ok": True, "channel": channel, "ts": ts}
    slack.calls.append(Call("chat.startStream", {"channel": channel}, at, 200, response, "T1"))
    return ts


def _text_call(slack: WorkspaceSlack, method: str, channel: str, ts: str, at: float) -> None:
    response = {"ok": True, "channel": channel, "ts": ts}
    slack.calls.append(Call(method, {"channel": channel, "ts": ts}, at, 200, response, "T1"))


def test_the_tracker_waits_for_a_fallback_edit_while_the_run_goes_on() -> None:
    """A stream Slack closed after one append looks final; the edit renderer's chat.update
    comes 14 s later (edit tokens are scarce), while another reply keeps calling Slack."""
    clock = _Clock()
    slack, llm = _records(clock)
    tracker = _Tracker(slack, llm, {"0": ANSWER, "1": ANSWER}, quiet_after=5.0)
    ts = _stream(slack, "C1", 100.1)
    message = slack.message("C1", ts)
    assert message is not None
    message.set_text("Hello ")
    _text_call(slack, "chat.appendStream", "C1", ts, 100.7)
    message.streaming = False  # the stream expired
    other = _stream(slack, "C2", 100.2)
    for second in range(1, 15):
        clock.now = 100.7 + second
        _text_call(slack, "chat.appendStream", "C2", other, clock.now)
        tracker.poll()
        assert not tracker.finished("0", "C1") and not tracker.quiet(), second

    clock.now = 115.0
    message.set_text(ANSWER)
    _text_call(slack, "chat.update", "C1", ts, 114.9)
    tracker.poll()

    assert tracker.finished("0", "C1") and tracker.finished_at["0"] == 114.9


def test_the_tracker_stops_waiting_for_a_stream_left_open_once_the_run_is_quiet() -> None:
    clock = _Clock()
    slack, llm = _records(clock)
    tracker = _Tracker(slack, llm, {"0": ANSWER, "1": ANSWER}, quiet_after=5.0)
    ts = _stream(slack, "C1", 100.1)
    message = slack.message("C1", ts)
    assert message is not None
    message.set_text(ANSWER)  # the whole answer, but no chat.stopStream ever comes
    _text_call(slack, "chat.appendStream", "C1", ts, 100.7)

    clock.now = 105.6
    tracker.poll()
    assert not tracker.finished("0", "C1") and not tracker.quiet()
    clock.now = 105.7
    tracker.poll()
    assert not tracker.finished("0", "C1") and tracker.quiet()
    assert tracker.last_call_at["C1"] == 100.7  # where the run's load window ends for it

    open_model = Request(path="", body={}, headers={}, at=105.7)
    llm.requests.append(open_model)  # a model stream still being written is activity
    clock.now = 120.0
    tracker.poll()
    assert not tracker.quiet()
