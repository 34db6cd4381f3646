"""The process's event loop and garbage-collector settings (bot/runtime.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from bot import runtime


async def _loop_kind() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_bot_runs_on_uvloop_by_default_and_on_asyncio_when_asked() -> None:
    assert runtime.run(_loop_kind()).startswith("uvloop")
    assert runtime.run(_loop_kind(), loop="asyncio").startswith("asyncio")


@pytest.fixture
def restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    gc.disable()  # only the calls under test collect
    yield
    gc.enable()
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restore_gc")
def test_settling_the_heap_exempts_what_exists_and_collects_young_objects_less_often() -> None:
    class Node:
        pass

    garbage = Node()
    garbage.self = garbage  # type: ignore[attr-defined]  # a cycle: only the collector frees it
    gone = weakref.ref(garbage)
    del garbage
    survivor = [object() for _ in range(1000)]
    runtime.settle_heap()
    assert gone() is None  # start-up's garbage is collected before the rest is frozen
    assert gc.get_threshold() == runtime.GC_THRESHOLDS
    assert gc.get_freeze_count() >= len(survivor)
    # Cycles made afterwards are still collected.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1
