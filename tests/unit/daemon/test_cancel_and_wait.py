"""Stopping background tasks: every task ends, its errors are not raised, and the caller's own
cancel is never swallowed (a swallowed one left a stopping daemon's loop running)."""

from __future__ import annotations

import asyncio

import pytest

from damselfly.daemon.threads import cancel_and_wait


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
