"""InOrderDigest: the whole-content digest follows pieces landing in any order."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from damselfly.daemon.store.digesting import InOrderDigest
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.errors import DamselflyError, DigestMismatch
from damselfly.ids import task_id
from damselfly.pieces import Digest
from helpers.store import put_piece
from helpers.wait import parked_on, until

TID = task_id("http://example.com/blob")
PL = 4096


def land(store: PieceStore, data: bytes, number: int) -> None:
    put_piece(store, TID, data, number, PL)


def sha256_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def new_task(tmp_path: Path, size: int) -> PieceStore:
    store = PieceStore(tmp_path)
    store.create_task(TID)
    store.set_content_length(TID, size, PL)
    return store


async def test_hashes_in_order_as_the_gaps_fill(tmp_path: Path) -> None:
    data = os.urandom(3 * PL + 100)
    store = new_task(tmp_path, len(data))
    digester = InOrderDigest(store, TID, sha256_of(data))
    try:
        land(store, data, 2)
        land(store, data, 3)
        await until(lambda: parked_on(store, TID), "the hashing looked at pieces 2 and 3")
        assert digester.upto == 0 and not digester.done  # piece 0 is missing: nothing can be hashed
        land(store, data, 0)
        await asyncio.wait_for(digester.advanced(0, 5.0), 5.0)
        assert digester.upto == PL  # piece 1 is still missing
        land(store, data, 1)
        await asyncio.wait_for(digester.check("blob"), 5.0)
        assert digester.upto == len(data)
    finally:
        await digester.close()


async def test_a_wrong_whole_is_a_mismatch(tmp_path: Path) -> None:
    data = os.urandom(2 * PL)
    store = new_task(tmp_path, len(data))
    digester = InOrderDigest(store, TID, Digest("sha256", hashlib.sha256(b"other").hexdigest()))
    try:
        land(store, data, 1)
        land(store, data, 0)
        with pytest.raises(DigestMismatch):
            await asyncio.wait_for(digester.check("blob"), 5.0)
    finally:
        await digester.close()


async def test_closing_early_is_an_error_for_waiters_not_a_hang(tmp_path: Path) -> None:
    store = new_task(tmp_path, 2 * PL)
    digester = InOrderDigest(store, TID, Digest("crc32", "0"))
    result = asyncio.ensure_future(digester.result())
    await until(lambda: parked_on(store, TID), "the hashing waits for piece 0")  # result() waits too
    await digester.close()
    with pytest.raises(DamselflyError):
        await asyncio.wait_for(result, 5.0)
    await asyncio.wait_for(digester.advanced(0, 5.0), 1.0)  # returns at once: hashing has ended


def piece_of(data: bytes, number: int) -> bytes:
    return data[number * PL : (number + 1) * PL]


async def test_pieces_fed_in_order_are_not_read_back(tmp_path: Path) -> None:
    data = os.urandom(3 * PL + 100)
    store = new_task(tmp_path, len(data))
    digester = InOrderDigest(store, TID, sha256_of(data))
    try:
        for number in range(4):
            feed = digester.claim(number * PL)
            assert feed is not None
            assert digester.claim(number * PL) is None  # one holder at a time
            chunk = piece_of(data, number)
            feed.update(chunk[:100])
            feed.update(chunk[100:])
            feed.commit()
            land(store, data, number)
        await asyncio.wait_for(digester.check("blob"), 5.0)
        assert digester.fed == len(data)
    finally:
        await digester.close()


async def test_only_the_next_bytes_can_be_claimed(tmp_path: Path) -> None:
    data = os.urandom(2 * PL)
    store = new_task(tmp_path, len(data))
    digester = InOrderDigest(store, TID, sha256_of(data))
    try:
        assert digester.claim(PL) is None  # piece 1 before piece 0: read back later instead
        land(store, data, 1)
        feed = digester.claim(0)
        assert feed is not None
        feed.update(piece_of(data, 0))
        feed.commit()
        land(store, data, 0)
        await asyncio.wait_for(digester.check("blob"), 5.0)
        assert digester.fed == PL  # piece 1 was read back from the file
    finally:
        await digester.close()


async def test_an_abandoned_feed_leaves_no_trace_in_the_digest(tmp_path: Path) -> None:
    # A piece whose crc32 failed was fed on its way in: the digest must forget those bytes.
    data = os.urandom(2 * PL)
    store = new_task(tmp_path, len(data))
    digester = InOrderDigest(store, TID, sha256_of(data))
    try:
        feed = digester.claim(0)
        assert feed is not None
        feed.update(os.urandom(PL))  # corrupt bytes
        feed.abandon()
        feed.commit()  # too late: a feed settles once
        land(store, data, 0)
        land(store, data, 1)
        await asyncio.wait_for(digester.check("blob"), 5.0)  # the hasher was free again, still at 0
        assert digester.fed == 0
    finally:
        await digester.close()


async def test_a_feed_settling_after_its_piece_landed_wakes_the_hashing(tmp_path: Path) -> None:
    # The last piece is in the store while a feed still holds the hasher: no later store
    # change will come, so the feed's end must wake the digester (not its 5 s timeout).
    data = os.urandom(2 * PL)
    store = new_task(tmp_path, len(data))
    digester = InOrderDigest(store, TID, sha256_of(data))
    try:
        land(store, data, 0)
        await asyncio.wait_for(digester.advanced(0, 5.0), 5.0)
        feed = digester.claim(PL)
        assert feed is not None
        land(store, data, 1)
        await until(lambda: parked_on(store, TID), "the hashing saw piece 1 land while the feed holds it")
        assert not digester.done
        await asyncio.to_thread(feed.update, piece_of(data, 1))
        await asyncio.to_thread(feed.commit)  # from a worker thread, as the piece receivers do
        await asyncio.wait_for(digester.check("blob"), 1.0)
        assert digester.fed == PL
    finally:
        await digester.close()
