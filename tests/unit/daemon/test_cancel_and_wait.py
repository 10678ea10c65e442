"""Stopping background tasks: every task ends, its errors are not raised, and the caller's own
cancel is never swallowed (a swallowed one left a stopping daemon's loop running); a bounded
wait for an event ends on its cancel even when the event is set at that moment."""

from __future__ import annotations

import asyncio

import pytest

from damselfly.daemon.threads import cancel_and_wait, wait_event


async def test_every_task_ends_and_their_errors_are_not_raised() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.ensure_future(fails())
    await asyncio.sleep(0)  # it has failed already: its error must still count as seen
    running = asyncio.ensure_future(forever())
    await cancel_and_wait([failed, running])
    assert running.cancelled() and failed.done()


async def test_the_callers_cancel_reaches_the_caller() -> None:
    release = asyncio.Event()
    took_cancel = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            took_cancel.set()
            await release.wait()  # cleans up for a while before it ends
            raise

    task = asyncio.ensure_future(slow_to_stop())
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(cancel_and_wait([task]))
    await took_cancel.wait()
    stopping.cancel()
    try:
        with pytest.raises(asyncio.CancelledError):
            await stopping
    finally:
        release.set()
        await asyncio.wait([task])


async def test_waiting_for_an_event_says_whether_it_was_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
    assert await wait_event(event, None) is True


async def test_a_cancel_as_the_event_is_set_is_not_lost() -> None:
    """asyncio.wait_for(event.wait(), t) on Python 3.11 returns here instead (CPython gh-86296)."""
    event = asyncio.Event()
    rounds = 0

    async def loop_on_event() -> None:
        nonlocal rounds
        while True:
            event.clear()
            rounds += 1
            await wait_event(event, 60)

    task = asyncio.ensure_future(loop_on_event())
    await asyncio.sleep(0)  # it waits for the event
    event.set()  # and, before the task runs on, a cancel
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.cancelled() and rounds == 1
