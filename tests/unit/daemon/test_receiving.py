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
