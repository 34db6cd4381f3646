"""The benchmark still works: tiny runs through the same code path as ``python -m bench.run``
(real bot process, private Redis, fake Slack with its limits, fake model), one per renderer; and
the analysis of a native reply that falls back to edits, from a hand-written call record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.analysis import Conversation, analyse_reply
from bench.run import Scenario, StreamMode, run, table
from bot.render.text import render
from tests.fakes.slack import Call


def _tiny(mode: StreamMode) -> Scenario:
    return Scenario(
        n=2,
        workspaces=2,
        slack_latency=0.01,
        slack_connection_latency=0.0,
        ttft=0.05,
        tokens_per_second=200.0,
        answer_tokens=40,
        timeout=30,
        mode=mode,
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
    [point] = await run([_tiny("native")], tmp_path, progress=False)

    summary = point.summary
    assert summary["timed_out"] == 0
    assert summary["correct"]["share"] == 1.0, [r.final_texts for r in point.replies]
    assert [r.renderer for r in point.replies] == ["native", "native"]
    assert summary["renderers"] == {"native": 2, "edit": 0, "fallbacks": 0}
    calls = summary["slack_calls_per_reply"]
    assert calls["chat.startStream"] == 1 and calls["chat.appendStream"] >= 1
    assert "chat.postMessage" not in calls and "chat.update" not in calls
    assert summary["first_visible_ms"]["count"] == 2
    assert summary["placeholder_ms"]["count"] == 2  # the empty stream, opened at once
    assert summary["visible_lag_s"]["characters"] == 2 * 40 * 4
    assert summary["visible_lag_s"]["never_visible"] == 0


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
