"""Receiving entries: readers waiting for a piece's verdict wake when its transfer ends."""

from __future__ import annotations

import asyncio

import pytest

from damselfly.daemon.store.receiving import ReceivingPieces


@pytest.mark.parametrize("ok, state", [(True, "done"), (False, "failed")])
async def test_waiters_wake_when_the_transfer_ends(ok: bool, state: str) -> None:
    changes: list[str] = []
    pieces = ReceivingPieces(changes.append)
    entry = pieces.start("t", 3, 0, 10, "")
    waiters = [asyncio.ensure_future(entry.ended()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)  # still receiving: nobody wakes
    pieces.end(entry, ok=ok)
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert entry.state == state
    assert pieces.get("t", 3) is None
    assert changes == ["t", "t"]
    await asyncio.wait_for(entry.ended(), 1)  # an ended entry returns at once


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    pieces = ReceivingPieces(lambda _: None)
    entry = pieces.start("t", 0, 0, 10, "crc32:1")
    waiter = asyncio.ensure_future(entry.ended())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert entry._waiters == []
    pieces.end(entry, ok=True)  # nothing left to wake; no error
    assert entry.state == "done"


async def test_a_stream_wakes_when_a_worker_thread_lands_the_next_step() -> None:
    """The count advances in a receiving thread; the waiting stream wakes at once, long before
    its fallback timer (60 s here), and only for bytes past what it already sent."""
    pieces = ReceivingPieces(lambda _: None)
    entry = pieces.start("t", 0, 0, 1000, "crc32:1")
    entry.advance(100)
    async with asyncio.timeout(5):
        await entry.landed(50, 60.0)  # already past: no wait at all
    waiting = asyncio.ensure_future(entry.landed(100, 60.0))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await asyncio.to_thread(entry.advance, 100)  # nothing new: still waiting
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await asyncio.to_thread(entry.advance, 400)
    async with asyncio.timeout(5):
        await waiting
    assert not entry._listeners


async def test_a_stream_wakes_when_the_transfer_fails_and_its_timer_bounds_a_lost_wake() -> None:
    pieces = ReceivingPieces(lambda _: None)
    entry = pieces.start("t", 0, 0, 1000, "crc32:1")
    loop = asyncio.get_running_loop()
    began = loop.time()
    await entry.landed(0, 0.05)  # nothing lands: back after the timer, not never
    assert loop.time() - began >= 0.04
    waiting = asyncio.ensure_future(entry.landed(0, 60.0))
    await asyncio.sleep(0.01)
    pieces.end(entry, ok=False)
    async with asyncio.timeout(5):
        await waiting
    assert entry.state == "failed"
    async with asyncio.timeout(5):
        await entry.landed(0, 60.0)  # ended: at once
