"""From a tool's result to the next visible text (#16): the bot in this process, a real MCP
server (tests/mcp_servers.py, streamable HTTP on loopback), the fake Slack and the fake model
(which answers each round at once), the embedded store.

    .venv/bin/python -m bench.tool_latency --answers 40 --mode edit
    .venv/bin/python -m bench.tool_latency --answers 40 --mode native

Each answer (in a workspace of its own, with production pacing) is one round that calls
``echo`` (with ``--lead-text``, after writing a line), then one that writes the result for
~2 s. Per answer, on one clock (``time.monotonic``, shared by the fakes and the bot):

- *call*: the model's call has streamed → the bot sends the tool's result back to the model
  (the MCP round trip, the step shown, the next request built);
- *next text*: the result is sent → the next round's first text is visible in Slack (the
  model's answer read, the reply's next edit or append).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bot.compose import open_bot
from tests.conftest import bot_settings
from tests.fakes.openai import Answer, Call, FakeOpenAI
from tests.fakes.slack import FakeSlack, mention_event
from tests.mcp_servers import McpHttpServer

DONE = "Echoed:"


async def run(answers: int, mode: str, gap: float, lead: str) -> dict[str, list[float]]:
    server = McpHttpServer.start_new()
    calls: list[float] = []
    texts: list[float] = []
    model: list[float] = []  # of that: the fake model's first text after the request
    try:
        with tempfile.TemporaryDirectory() as data:
            tools = Path(data) / "mcp.toml"
            tools.write_text(f'[servers.lab]\nurl = "{server.url}"\n', encoding="utf-8")
            async with FakeSlack() as slack, FakeOpenAI() as llm:
                settings: Any = bot_settings(
                    slack,
                    llm,
                    None,
                    data_dir=data,
                    mcp_servers_file=str(tools),
                    stream_mode=mode,
                    # Production pacing (the tests' settings edit faster than Slack allows).
                    edit_interval=1.0,
                    edit_budget_per_minute=45,
                    edit_budget_burst=3,
                    native_flush_interval=0.25,
                )
                async with open_bot(settings):
                    await slack.wait_connected()
                    for n in range(answers):
                        llm.script(
                            Answer(text=lead, tool_calls=[Call("lab__echo", {"text": f"{n}"})]),
                            # The next round streams for ~2 s: its first text is an
                            # interim edit or append, paced like any other; its first chunk
                            # is DONE, which marks the call that shows it.
                            Answer(
                                text=f"{DONE} {n}. " + "more " * 40, token_delay=0.05, chunk_size=8
                            ),
                        )
                        # One workspace each: Slack's edit limits (and the bot's budget) are
                        # per workspace, and a busy one would measure its pacing instead.
                        event = mention_event(f"echo {n}", team=f"T{n:04d}")
                        thread = str(event["ts"])
                        await slack.send_event(event)
                        await slack.wait_for(
                            lambda t=thread: _shown_at(slack, t) is not None,  # type: ignore[misc]
                            timeout=20,
                        )
                        first, second = llm.requests[-2], llm.requests[-1]
                        shown = _shown_at(slack, thread)
                        await asyncio.sleep(gap)  # the fake Slack's limits are per token
                        assert shown is not None
                        # The call's last chunk (the fake records content and call chunks).
                        streamed = first.emitted[-1][0] if first.emitted else first.at
                        calls.append(second.at - streamed)
                        texts.append(shown - second.at)
                        if second.emitted:
                            model.append(second.emitted[0][0] - second.at)
    finally:
        server.stop()
    return {"call": calls, "next text": texts, "model": model}


def _shown_at(slack: FakeSlack, thread_ts: str) -> float | None:
    """When the fake Slack received the first call that shows the second round's text."""
    for call in slack.calls:
        if not call.ok or call.args.get("channel") != "C0CHAN":
            continue
        text = str(call.args.get("text") or call.args.get("markdown_text") or "")
        text += str(call.args.get("chunks") or "")
        if DONE in text:
            owner = slack.message("C0CHAN", str(call.args.get("ts") or call.response.get("ts")))
            if owner is not None and owner.thread_ts == thread_ts:
                return call.at
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--answers", type=int, default=40)
    parser.add_argument("--mode", choices=("edit", "native"), default="edit")
    parser.add_argument("--gap", type=float, default=3.0, help="seconds between answers")
    parser.add_argument(
        "--lead-text",
        action="store_true",
        help="the first round writes a line before its call (its edit then paces the next one)",
    )
    args = parser.parse_args()
    lead = "Checking." if args.lead_text else ""
    figures = asyncio.run(run(args.answers, args.mode, args.gap, lead))
    print(f"mode={args.mode} answers={args.answers} lead text={bool(lead)}")
    for name, values in figures.items():
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        print(
            f"{name:>10}: p50 {statistics.median(ordered) * 1000:6.1f} ms, "
            f"p95 {p95 * 1000:6.1f} ms, max {ordered[-1] * 1000:6.1f} ms"
        )


if __name__ == "__main__":
    main()
