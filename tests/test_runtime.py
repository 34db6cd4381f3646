"""The process's event loop and garbage-collector settings (bot/runtime.py)."""

from __future__ import annotations

import asyncio
import gc
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
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restore_gc")
def test_settling_the_heap_exempts_what_exists_and_collects_young_objects_less_often() -> None:
    survivor = [object() for _ in range(1000)]
    runtime.settle_heap()
    assert gc.get_threshold() == runtime.GC_THRESHOLDS
    assert gc.get_freeze_count() >= len(survivor)
    # Cycles made afterwards are still collected.
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1
