"""Markdown → what one Slack message shows: the renderer's text functions in one place.

render("**hi** <b")              # interim form of a growing answer: '*hi* &lt;b'
render_final("Use **kwargs")     # complete text rendered exactly: 'Use **kwargs'
head, tail = split(markdown, 2900)   # tail == '' when it all fits in one message
"""

from __future__ import annotations

from bot.render.mrkdwn import to_mrkdwn
from bot.render.split import split_point


def render(markdown: str) -> str:
    """Slack mrkdwn for a prefix of an answer still being written (open constructs hidden)."""
    return to_mrkdwn(markdown)


def render_final(markdown: str) -> str:
    """Slack mrkdwn for complete text: a message's last form."""
    return to_mrkdwn(markdown, final=True)


def split(markdown: str, limit: int) -> tuple[str, str]:
    """Cut ``markdown`` at a structural boundary so ``render_final(head)`` fits ``limit``;
    ``tail`` (possibly reopening a code fence) continues in the next message."""
    cut = split_point(markdown, limit, render_final)
    return (markdown, "") if cut is None else (cut.head, cut.tail)
