"""PeerStream: the outgoing side of one AnnouncePeer stream (one reader, many writers)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from damselfly.scheduler.stream import END, Abort, PeerStream


async def test_get_waits_for_the_next_item_and_keeps_the_order() -> None:
    s = PeerStream()
    got = asyncio.ensure_future(s.get())
    await asyncio.sleep(0)
    assert not got.done()
    s.send("answer-1")
    s.send("answer-2")
    s.abort(grpc.StatusCode.FAILED_PRECONDITION, "no parent")
    s.end()
    assert await got == "answer-1"
    assert await s.get() == "answer-2"
    assert await s.get() == Abort(grpc.StatusCode.FAILED_PRECONDITION, "no parent")
    assert await s.get() is END


async def test_a_cancelled_reader_leaves_the_stream_usable() -> None:
    s = PeerStream()
    reader = asyncio.ensure_future(s.get())
    await asyncio.sleep(0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    s.send("later")
    assert await asyncio.wait_for(s.get(), 1) == "later"


def test_pending_takes_everything_without_a_loop() -> None:
    s = PeerStream()
    s.send("a")
    s.end()
    assert s.pending() == ["a", END]
    assert s.pending() == []
