"""Markdown → what one Slack message shows: the renderer's two text functions in one place.

render("**hi** <b>")          # '*hi* &lt;b&gt;'
head, tail = split(markdown, 2900)   # tail == '' when it all fits in one message
"""

from __future__ import annotations


def render(markdown: str) -> str:
    """Slack mrkdwn for ``markdown`` (also for a prefix of an answer still being written)."""
    return markdown.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def split(markdown: str, limit: int) -> tuple[str, str]:
    """Cut ``markdown`` where its head renders within ``limit`` characters; ``tail`` continues."""
    if len(render(markdown)) <= limit:
        return markdown, ""
    cut = markdown.rfind("\n", 0, limit // 2) + 1 or limit // 2
    return markdown[:cut], markdown[cut:]
