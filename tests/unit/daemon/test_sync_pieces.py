"""SyncPieces (the upload service): held pieces, pieces still arriving, and the end of the stream."""

from __future__ import annotations

import asyncio
import os
import types
from pathlib import Path
from typing import Any

from damselfly.api import dfdaemon_pb2
from damselfly.daemon.service import UploadService
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.ids import task_id
from helpers.store import put_piece
from helpers.wait import parked_on, until

TID = task_id("http://example.com/synced")
PL = 4096
DATA = os.urandom(3 * PL)


class Context:
    async def abort(self, code: Any, details: str) -> None:
        raise AssertionError(f"aborted: {code} {details}")


def hold(store: PieceStore, number: int) -> None:
    put_piece(store, TID, DATA, number, PL)


async def next_number(stream: Any) -> int:
    return int((await asyncio.wait_for(stream.__anext__(), 5)).number)


async def test_pieces_arriving_are_announced_and_again_after_a_failed_transfer(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    store.create_task(TID)
    store.set_content_length(TID, len(DATA), PL)
    hold(store, 0)
    incoming = store.receiving.start(TID, 1, PL, PL, "crc32:1")
    service = UploadService(types.SimpleNamespace(store=store), "127.0.0.1", 4005)  # type: ignore[arg-type]
    stream = service.SyncPieces(dfdaemon_pb2.SyncPiecesRequest(task_id=TID), Context())
    assert {await next_number(stream), await next_number(stream)} == {0, 1}
    # The transfer of piece 1 fails; nothing new to say until we hold it.
    store.receiving.end(incoming, ok=False)
    pending = asyncio.ensure_future(next_number(stream))
    await until(lambda: parked_on(store, TID), "the stream looked at the failed transfer")
    assert not pending.done()
    hold(store, 1)  # fetched again, from elsewhere
    assert await pending == 1
    hold(store, 2)
    assert await next_number(stream) == 2
    # Every piece held and announced: the stream ends.
    done = asyncio.ensure_future(stream.__anext__())
    await asyncio.wait({done}, timeout=5)
    assert isinstance(done.exception(), StopAsyncIteration)


async def test_a_piece_landing_while_the_stream_yields_is_not_lost(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    store.create_task(TID)
    store.set_content_length(TID, len(DATA), PL)
    hold(store, 0)
    hold(store, 1)
    service = UploadService(types.SimpleNamespace(store=store), "127.0.0.1", 4005)  # type: ignore[arg-type]
    stream = service.SyncPieces(dfdaemon_pb2.SyncPiecesRequest(task_id=TID), Context())
    seen = [await next_number(stream)]
    hold(store, 2)  # lands while the stream is suspended in the middle of a round
    store.mark_succeeded(TID, durable=False)
    while True:
        try:
            seen.append(await next_number(stream))
        except StopAsyncIteration:
            break
    assert sorted(seen) == [0, 1, 2]
