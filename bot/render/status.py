"""The assistant thread's status line ("is thinking…"): shown at once, refreshed before Slack's
~2-minute expiry while the model has not written anything yet, cleared on every exit.

    status = ThreadStatus(slack, "D1", "17.1", text="is thinking…", refresh_s=90)
    if await status.show():          # False: Slack has no status line here (e.g. a channel)
        ...
    status.text_visible()            # the answer is on screen: Slack cleared the line itself
    await status.clear()             # always, whatever happened (idempotent, never raises)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from bot.errors import SlackError
from bot.slack import SlackGateway

log = logging.getLogger(__name__)

# A status call must never hold up an answer for long.
_CALL_TIMEOUT = 5.0


class ThreadStatus:
    """One thread's status line for the duration of one answer."""

    def __init__(
        self,
        slack: SlackGateway,
        channel: str,
        thread_ts: str,
        *,
        text: str,
        refresh_s: float,
        loading_messages: list[str] | None = None,
    ) -> None:
        self._slack = slack
        self._channel = channel
        self._thread_ts = thread_ts
        self._text = text
        self._refresh_s = refresh_s
        self._loading = loading_messages
        self._shown = False
        self._refresher: asyncio.Task[None] | None = None

    async def show(self) -> bool:
        """Set the status; True when Slack took it (and it is then kept fresh)."""
        if not await self._set(self._text):
            return False
        self._shown = True
        self._refresher = asyncio.create_task(self._refresh(), name="status-refresh")
        return True

    def text_visible(self) -> None:
        """The answer's first text is on screen (Slack then drops the status): stop refreshing,
        or the line would come back under the answer."""
        if self._refresher is not None:
            self._refresher.cancel()

    async def clear(self) -> None:
        """Remove the status line (if it was ever shown); safe to call more than once."""
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        if self._shown:
            self._shown = False
            await self._set("")

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            await self._set(self._text)

    async def _set(self, text: str) -> bool:
        try:
            async with asyncio.timeout(_CALL_TIMEOUT):
                await self._slack.set_status(
                    self._channel,
                    self._thread_ts,
                    text,
                    loading_messages=self._loading if text else None,
                )
        except (SlackError, TimeoutError) as exc:
            what = "clear" if not text else "set"
            log.info("could not %s the thread status in %s: %s", what, self._channel, exc)
            return False
        return True
