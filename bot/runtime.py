"""How the bot's process runs: its event loop, and its garbage collector tuned for a server that
keeps hundreds of answers streaming at once.

    runtime.run(main(), loop="uvloop")   # uvloop's event loop ("asyncio": the standard one)
    runtime.settle_heap()                # once started: what start-up built is never scanned again

Both were measured with the benchmark (bench/README.md), 1,000 answers streaming in one process:

* uvloop runs the same code with ~20 % less CPU than the standard loop (its loop, sockets and
  timers are written in C; the bot spends most of its time in them).
* The collector's defaults (a young collection every 700 new objects) stopped the process for
  ~2.5 s in every 10 s of load, in pauses of up to 300 ms: every such pause delays every
  answer's next text. ``settle_heap`` freezes what start-up built (imports, clients; ~127,000
  objects that a full collection would otherwise walk every time) and collects young objects
  every 50,000 allocations instead of 700: most of a reply's objects are gone by then, so
  fewer survive into the older generations whose collections are the long pauses. Objects in
  reference cycles are still collected, only later.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

EventLoop = Literal["uvloop", "asyncio"]

# Young objects between collections, then how many young (middle) collections per middle (full)
# one. CPython's defaults are (700, 10, 10).
GC_THRESHOLDS = (50_000, 20, 10)


def run(main: Coroutine[Any, Any, T], *, loop: EventLoop = "uvloop") -> T:
    """Run ``main`` to completion on a new event loop of the kind asked for."""
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # a platform without uvloop's wheels (Windows)
            log.warning("uvloop is not installed; running on asyncio's own event loop")
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def settle_heap() -> None:
    """Collect once, exempt every object alive now from later collections, and collect young
    objects less often (see the module docstring). Call it when start-up is over."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
