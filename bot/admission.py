"""When a new answer may start reading the model: first come first served, in groups, and only
while the process keeps up with the answers already streaming.

    admission = Admission()
    async with admission.turn() as entry:   # the event counts as "being taken in"
        ...                                 # dedupe, placeholder
        entry.taken_in()                    # waiting for the thread's lock does not count
        ...                                 # thread lock, history
        await entry.admit()                 # then the model request may go out
        ...                                 # stream the answer

Why: a burst of questions (a thousand mentions at once) would otherwise send every model
request together, the first tokens of all the answers would come back together, and each
answer's first text would wait behind the others' (about a millisecond of CPU each). Taking
events in is bursty too: the placeholders of a burst come back from Slack together, one round
trip later. So a request goes out only when

* one pass of the event loop takes at most ``busy_pass`` seconds (else the process is behind on
  the answers already streaming), and
* at most ``max_taking_in`` events are still being taken in (their Slack and Redis replies
  would land on the loop together with this answer's first tokens);

and in any case after ``max_wait`` seconds, so that a process that stays busy still starts every
answer. With nothing else going on an answer waits one pass of the loop (microseconds).

One check admits the answers queued at that moment, up to ``batch`` of them: checking for every
answer held a burst to one request per pass of the loop plus a check, and people waited for it.
Measured with the benchmark (1,000 mentions at once, one per workspace, one run each): the
person's wait from their message to the answer's first text was p50/p99 5.6/8.4 s with a check
per answer, 4.6/6.3 and 5.1/7.1 s (two runs) in groups of 64; with no admission at all 4.4/4.7 s,
but the first text then came 241/986 ms after the model's first token instead of ~130/180-210
ms: every first token of the burst arrived within ~0.4 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Admission:
    """See the module docstring; one instance serves every answer of the process."""

    def __init__(
        self,
        *,
        busy_pass: float = 0.01,
        max_taking_in: int = 32,
        max_wait: float = 5.0,
        batch: int = 64,
    ) -> None:
        self._busy_pass = busy_pass
        self._max_taking_in = max_taking_in
        self._max_wait = max_wait
        self._batch = batch
        self._taking_in = 0
        self._queue = asyncio.Lock()
        self._waiting = 0  # answers queued for admission
        self._credit = 0  # admissions left from the last check

    @property
    def taking_in(self) -> int:
        """Events received and not yet taken in (nor given up)."""
        return self._taking_in

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[Entry]:
        entry = Entry(self)
        self._taking_in += 1
        try:
            yield entry
        finally:
            entry.taken_in()

    def _arrived(self) -> None:
        self._taking_in -= 1

    async def _admit(self, entry: Entry) -> None:
        loop = asyncio.get_running_loop()
        self._waiting += 1
        try:
            async with self._queue:
                if self._credit > 0:  # let through with the group of the last check
                    self._credit -= 1
                    entry.admitted = True
                    return
                deadline = loop.time() + self._max_wait
                while loop.time() < deadline:
                    started = time.perf_counter()  # uvloop's loop clock: whole milliseconds
                    await asyncio.sleep(0)  # resumes after one pass over everything else ready
                    keeping_up = time.perf_counter() - started <= self._busy_pass
                    if keeping_up and self._taking_in <= self._max_taking_in:
                        # The group: this answer and those queued behind it now.
                        self._credit = min(self._batch, self._waiting) - 1
                        break
                    await asyncio.sleep(self._busy_pass)
                entry.admitted = True
        finally:
            self._waiting -= 1


class Entry:
    """One event on its way to its model request."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._counted = True
        self.admitted = False

    def taken_in(self) -> None:
        """The event's own intake is done (what follows may wait long: a thread's lock)."""
        if self._counted:
            self._counted = False
            self._admission._arrived()

    async def admit(self) -> None:
        """Wait for this answer's turn to read the model (at most the admission's max_wait)."""
        self.taken_in()
        if not self.admitted:
            await self._admission._admit(self)
