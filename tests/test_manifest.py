"""The Slack app manifests grant what the code uses: every event the app listens to is
subscribed, and every Web API method the bot calls is covered by a scope."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOT_SOURCES = sorted((ROOT / "bot").rglob("*.py"))

METHOD_SCOPES: dict[str, set[str]] = {
    "auth.test": set(),
    "apps.connections.open": set(),  # the app-level token's connections:write
    "chat.postMessage": {"chat:write"},
    "chat.update": {"chat:write"},
    "chat.delete": {"chat:write"},
    "chat.postEphemeral": {"chat:write"},
    "chat.startStream": {"chat:write"},
    "chat.appendStream": {"chat:write"},
    "chat.stopStream": {"chat:write"},
    "conversations.replies": {"channels:history", "groups:history", "im:history", "mpim:history"},
    "conversations.history": {"channels:history", "groups:history", "im:history", "mpim:history"},
    "reactions.add": {"reactions:write"},
    "reactions.remove": {"reactions:write"},
    "assistant.threads.setStatus": {"assistant:write"},
    "assistant.threads.setTitle": {"assistant:write"},
    "assistant.threads.setSuggestedPrompts": {"assistant:write"},
    "users.info": {"users:read"},
    "files.info": {"files:read"},
}
EVENT_SUBSCRIPTIONS: dict[str, tuple[set[str], set[str]]] = {
    # listener event type → (bot events, scopes)
    "app_mention": ({"app_mention"}, {"app_mentions:read"}),
    "message": (
        {"message.channels", "message.groups", "message.im", "message.mpim"},
        {"channels:history", "groups:history", "im:history", "mpim:history"},
    ),
    "assistant_thread_started": ({"assistant_thread_started"}, {"assistant:write"}),
    "assistant_thread_context_changed": ({"assistant_thread_context_changed"}, {"assistant:write"}),
    # A deleted or unshared file is dropped from the cache (bot/store/files.py).
    "file_deleted": ({"file_deleted"}, {"files:read"}),
    "file_unshared": ({"file_unshared"}, {"files:read"}),
}


def _source() -> str:
    return "\n".join(p.read_text() for p in BOT_SOURCES)


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.mark.parametrize("manifest", ["manifest.yml", "manifest.http.yml"])
def test_manifest_covers_listeners_and_methods(manifest: str) -> None:
    data = _load(manifest)
    scopes = set(data["oauth_config"]["scopes"]["bot"])
    events = set(data["settings"]["event_subscriptions"]["bot_events"])
    source = _source()

    listened = set(re.findall(r'app\.event\("([\w.]+)"', source))
    assert listened, "no listeners found: the scan is broken"
    for event_type in listened:
        needed_events, needed_scopes = EVENT_SUBSCRIPTIONS[event_type]
        assert needed_events <= events, (event_type, needed_events - events)
        assert needed_scopes <= scopes, (event_type, needed_scopes - scopes)
    if "assistant_thread_started" in listened:  # Slack sends it only to apps with the agent view
        assert data["features"]["assistant_view"]["assistant_description"]
    if re.search(r"app\.action\(", source):
        assert data["settings"]["interactivity"]["is_enabled"] is True

    # Slack's method names are dotted camelCase, never snake_case (that is a tool's name,
    # e.g. an MCP server's "files.read_file").
    called = set(
        re.findall(
            r'"((?:auth|apps|chat|conversations|reactions|assistant|users|files)\.[A-Za-z.]+)"',
            source,
        )
    )
    assert {"chat.postMessage", "chat.update", "conversations.replies"} <= called
    for method in called:
        assert method in METHOD_SCOPES, f"{method}: add its scopes to this test"
        assert METHOD_SCOPES[method] <= scopes, (method, METHOD_SCOPES[method] - scopes)
    # Downloading a shared file (url_private_download) needs files:read: without it Slack
    # answers with a sign-in page instead of the file.
    if "url_private_download" in source:
        assert "files:read" in scopes


def test_socket_and_http_manifests_differ_only_in_transport() -> None:
    socket, http = _load("manifest.yml"), _load("manifest.http.yml")
    assert socket["settings"]["socket_mode_enabled"] is True
    assert http["settings"]["socket_mode_enabled"] is False
    assert http["settings"]["event_subscriptions"]["request_url"].endswith("/slack/events")
    assert socket["oauth_config"] == http["oauth_config"]
    assert (
        socket["settings"]["event_subscriptions"]["bot_events"]
        == http["settings"]["event_subscriptions"]["bot_events"]
    )
