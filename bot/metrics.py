"""Prometheus metrics of one bot process, in a registry of its own (no module-level globals).

metrics = Metrics()
metrics.events.labels(outcome="received").inc()
body = metrics.exposition()        # text format for GET /metrics
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TOOL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Every metric the bot exposes; instances are independent (tests build their own)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # The process's memory and CPU, and the garbage collector's work by generation
        # (bot/runtime.py tunes it): process_resident_memory_bytes, python_gc_collections_total…
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        self.events = Counter(
            "slackbot_events",
            "Slack events by what the bot did with them (received, answered, deduplicated, ignored).",
            ["outcome"],
            registry=r,
        )
        self.replies = Counter(
            "slackbot_replies",
            "Replies by outcome (started, complete, interrupted, stopped, failed, shutdown).",
            ["outcome"],
            registry=r,
        )
        self.slack_calls = Counter(
            "slackbot_slack_calls",
            "Slack Web API calls by method and outcome (ok, ratelimited, transient, rejected).",
            ["method", "outcome"],
            registry=r,
        )
        self.budget_wait = Histogram(
            "slackbot_edit_budget_wait_seconds",
            "Time a chat.update waited for the workspace's edit budget.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.event_to_placeholder = Histogram(
            "slackbot_event_to_placeholder_seconds",
            "From the event's arrival to the placeholder being posted.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token_to_visible = Histogram(
            "slackbot_first_token_to_visible_seconds",
            "From the model's first token to the first text visible in Slack.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.streamed_chars = Counter(
            "slackbot_streamed_characters", "Characters of model output streamed.", registry=r
        )
        self.tokens = Counter(
            "slackbot_model_tokens",
            "Tokens reported by the model server (prompt, completion).",
            ["kind"],
            registry=r,
        )
        self.feedback = Counter(
            "slackbot_feedback",
            "Feedback button clicks under answers, by vote (good, bad).",
            ["vote"],
            registry=r,
        )
        self.active_streams = Gauge(
            "slackbot_active_streams", "Replies streaming in this process now.", registry=r
        )
        # Tools (bot/tools/): calls to MCP servers' tools, and which servers are connected.
        self.tool_calls = Counter(
            "slackbot_tool_calls",
            "MCP tool calls by server, tool and outcome (ok, error, timeout, cancelled).",
            ["server", "tool", "outcome"],
            registry=r,
        )
        self.tool_call_seconds = Histogram(
            "slackbot_tool_call_seconds",
            "Duration of MCP tool calls, by server.",
            ["server"],
            buckets=_TOOL_BUCKETS,
            registry=r,
        )
        self.tool_approvals = Counter(
            "slackbot_tool_approvals",
            "Tool calls that asked for approval, by how it ended "
            "(approved, denied, timeout, cancelled).",
            ["decision"],
            registry=r,
        )
        self.tool_server_up = Gauge(
            "slackbot_tool_server_up",
            "1 while the MCP server is connected, else 0.",
            ["server"],
            registry=r,
        )
        # Files (bot/files/, bot/turn/files.py): what the files of questions became.
        self.files = Counter(
            "slackbot_files",
            "Files shared with questions, by what they became (image, document, note: not read).",
            ["kind"],
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
