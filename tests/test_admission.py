"""Admission of new answers (bot/admission.py): one by one, only while the event loop keeps up
and few events are still being taken in, and never later than its maximum wait."""

from __future__ import annotations

import asyncio
import time

from bot.admission import Admission


async def _busy_loop(stop: asyncio.Event, hog_s: float) -> None:
    """Keeps every pass of the event loop at least ``hog_s`` long."""
    while not stop.is_set():
        time.sleep(hog_s)  # noqa: ASYNC251 — blocking on purpose: a saturated loop
        await asyncio.sleep(0)


async def _answer(admission: Admission, admitted: asyncio.Event) -> None:
    """One answer: taken in, then waiting for its turn; ``admitted`` is set once it has it."""
    async with admission.turn() as entry:
        await entry.admit()
        admitted.set()


async def test_an_idle_process_admits_at_once_and_in_order() -> None:
    admission = Admission()
    order: list[int] = []

    async def one(i: int) -> None:
        async with admission.turn() as entry:
            await entry.admit()
            order.append(i)

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(one(i) for i in range(20)))
    assert order == list(range(20))
    assert loop.time() - started < 0.5
    assert admission.taking_in == 0


async def test_a_busy_loop_holds_new_answers_back_until_it_keeps_up() -> None:
    admission = Admission(busy_pass=0.01, max_wait=30.0)
    stop = asyncio.Event()
    hog = asyncio.create_task(_busy_loop(stop, 0.03))
    admitted = asyncio.Event()
    waiter = asyncio.create_task(_answer(admission, admitted))
    await asyncio.sleep(0.5)
    assert not admitted.is_set()  # every pass takes 30 ms: the process is behind
    stop.set()
    await hog
    await asyncio.wait_for(admitted.wait(), 2.0)  # caught up: admitted
    await waiter


async def test_events_still_being_taken_in_hold_new_answers_back() -> None:
    admission = Admission(max_taking_in=2, max_wait=30.0)
    release = asyncio.Event()

    async def arriving() -> None:
        async with admission.turn():
            await release.wait()  # e.g. waiting for its placeholder

    arrivals = [asyncio.create_task(arriving()) for _ in range(3)]
    admitted = asyncio.Event()
    waiter = asyncio.create_task(_answer(admission, admitted))
    await asyncio.sleep(0.3)
    assert admission.taking_in == 3
    assert not admitted.is_set()  # 3 others are still being taken in (more than 2)
    release.set()
    await asyncio.gather(*arrivals)
    await asyncio.wait_for(admitted.wait(), 1.0)
    await waiter
    assert admission.taking_in == 0


async def test_a_process_that_stays_busy_still_starts_every_answer() -> None:
    admission = Admission(busy_pass=0.01, max_wait=0.4)
    stop = asyncio.Event()
    hog = asyncio.create_task(_busy_loop(stop, 0.03))
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with admission.turn() as entry:
            await entry.admit()
        waited = loop.time() - started
    finally:
        stop.set()
        await hog
    assert 0.3 <= waited < 1.5


async def test_a_cancelled_wait_leaves_the_count_right() -> None:
    admission = Admission(max_taking_in=0, max_wait=30.0)
    release = asyncio.Event()

    async def arriving() -> None:
        async with admission.turn():
            await release.wait()

    other = asyncio.create_task(arriving())

    async def one() -> None:
        async with admission.turn() as entry:
            await entry.admit()

    waiter = asyncio.create_task(one())
    await asyncio.sleep(0.2)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert admission.taking_in == 1
    release.set()
    await other
    assert admission.taking_in == 0


async def test_events_waiting_for_a_thread_lock_do_not_hold_new_answers_back() -> None:
    admission = Admission(max_taking_in=2, max_wait=30.0)
    lock = asyncio.Lock()
    await lock.acquire()  # an earlier answer in the same thread is streaming

    async def follow_up() -> None:
        async with admission.turn() as entry:
            entry.taken_in()
            async with lock:
                await entry.admit()

    queued = [asyncio.create_task(follow_up()) for _ in range(5)]
    await asyncio.sleep(0.1)
    assert admission.taking_in == 0

    async def elsewhere() -> None:
        async with admission.turn() as entry:
            await entry.admit()

    await asyncio.wait_for(elsewhere(), 1.0)  # admitted at once
    lock.release()
    await asyncio.wait_for(asyncio.gather(*queued), 5.0)


async def test_a_max_wait_of_zero_switches_admission_off() -> None:
    admission = Admission(busy_pass=0.01, max_wait=0.0)
    stop = asyncio.Event()
    hog = asyncio.create_task(_busy_loop(stop, 0.03))  # a process far behind
    try:
        admitted = [asyncio.Event() for _ in range(5)]
        await asyncio.wait_for(
            asyncio.gather(*(_answer(admission, event) for event in admitted)), 1.0
        )
    finally:
        stop.set()
        await hog
    assert all(event.is_set() for event in admitted)
