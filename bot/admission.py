"""When a new answer may start reading the model: one at a time, first come first served, and
only while the process keeps up with the answers already streaming.

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
answer (0: no admission, every request goes out at once). With nothing else going on an answer
waits one pass of the loop (microseconds).

The price, measured with the benchmark (1,000 mentions at once, the same 0.5 s TTFT for all):
without admission (three runs) the first tokens came back within ~0.4 s and the first text showed
279/951, 577/1,158 and 340/873 ms (p50/p99) after the first token instead of ~120/190 ms, but the
person's wait from their message to the first text was shorter: 4.0/4.5, 5.1/5.7 and 4.1/4.7 s
against 4.6/6.6 to 6.1/8.3 s with it (bench/README.md).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Admission:
    """See the module docstring; one instance serves every answer of the process."""

    def __init__(
        self, *, busy_pass: float = 0.01, max_taking_in: int = 32, max_wait: float = 5.0
    ) -> None:
        self._busy_pass = busy_pass
        self._max_taking_in = max_taking_in
        self._max_wait = max_wait
        self._taking_in = 0
        self._queue = asyncio.Lock()

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
        if self._max_wait <= 0:  # admission switched off
            entry.admitted = True
            return
        loop = asyncio.get_running_loop()
        async with self._queue:
            deadline = loop.time() + self._max_wait
            while loop.time() < deadline:
                started = time.perf_counter()  # uvloop's loop clock counts whole milliseconds
                await asyncio.sleep(0)  # resumes after one pass over everything else ready
                keeping_up = time.perf_counter() - started <= self._busy_pass
                if keeping_up and self._taking_in <= self._max_taking_in:
                    break
                await asyncio.sleep(self._busy_pass)
            entry.admitted = True


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
