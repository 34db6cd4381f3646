"""The benchmark still works: a tiny run through the same code path as ``python -m bench.run``
(real bot process, private Redis, fake Slack with its limits, fake model)."""

from __future__ import annotations

from pathlib import Path

from bench.run import Scenario, run, table


async def test_tiny_benchmark_run_shows_every_answer_exactly(tmp_path: Path) -> None:
    scenario = Scenario(
        n=2,
        workspaces=2,
        slack_latency=0.01,
        slack_connection_latency=0.0,
        ttft=0.05,
        tokens_per_second=200.0,
        answer_tokens=40,
        timeout=30,
    )
    [point] = await run([scenario], tmp_path, progress=False)

    summary = point.summary
    assert summary["timed_out"] == 0
    assert summary["correct"]["share"] == 1.0, [r.final_texts for r in point.replies]
    assert summary["ratelimited_429"]["total"] == 0
    assert summary["slack_calls_per_reply"]["chat.postMessage"] == 1
    assert summary["tokens_streamed"] == summary["sse_events"] == 2 * 40
    assert summary["first_visible_ms"]["count"] == 2
    assert summary["visible_lag_s"]["characters"] == 2 * 40 * 4
    assert point.bot["cpu_seconds"] > 0 and point.bot["peak_rss_mib"] > 10
    assert "N" in table([point]).splitlines()[0]
