"""SyncPieces (the upload service): held pieces, pieces still arriving, and the end of the stream.

A Damselfly child (it sends the extensions metadata) also hears of pieces still arriving; any
other child, as a Dragonfly parent would tell it, only of pieces held.
"""

from __future__ import annotations

import asyncio
import os
import types
from pathlib import Path
from typing import Any

import pytest

from damselfly.api import dfdaemon_pb2
from damselfly.daemon.service import UploadService
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer.peer_rpc import EXTENSIONS_METADATA
from damselfly.ids import task_id
from helpers.store import put_piece
from helpers.wait import parked_on, until

TID = task_id("http://example.com/synced")
PL = 4096
DATA = os.urandom(3 * PL)


class Aborted(Exception):
    pass


class Context:
    """The servicer context of a child that says it speaks Damselfly's extensions (or not)."""

    def __init__(self, *, damselfly: bool = True) -> None:
        self.metadata = ((EXTENSIONS_METADATA, "1"),) if damselfly else ()
        self.sent_metadata: list[tuple[tuple[str, str], ...]] = []

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    async def send_initial_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.sent_metadata.append(metadata)

    async def abort(self, code: Any, details: str) -> None:
        raise Aborted(code, details)


def service(store: PieceStore, *, extensions: bool = True) -> UploadService:
    downloads: Any = types.SimpleNamespace(store=store)
    return UploadService(downloads, "127.0.0.1", 4005, extensions=extensions)


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
    stream = service(store).SyncPieces(dfdaemon_pb2.SyncPiecesRequest(task_id=TID), Context())
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
    stream = service(store).SyncPieces(dfdaemon_pb2.SyncPiecesRequest(task_id=TID), Context())
    seen = [await next_number(stream)]
    hold(store, 2)  # lands while the stream is suspended in the middle of a round
    store.mark_succeeded(TID, durable=False)
    while True:
        try:
            seen.append(await next_number(stream))
        except StopAsyncIteration:
            break
    assert sorted(seen) == [0, 1, 2]


@pytest.mark.parametrize(
    ("damselfly", "extensions"), [(False, True), (True, False)], ids=["plain-child", "extensions-off"]
)
async def test_a_plain_child_hears_only_of_held_pieces(
    tmp_path: Path, damselfly: bool, extensions: bool
) -> None:
    """As from a Dragonfly parent: no piece still arriving, no extensions metadata."""
    store = PieceStore(tmp_path)
    store.create_task(TID)
    store.set_content_length(TID, len(DATA), PL)
    hold(store, 0)
    incoming = store.receiving.start(TID, 1, PL, PL, "crc32:1")
    context = Context(damselfly=damselfly)
    request = dfdaemon_pb2.SyncPiecesRequest(task_id=TID, interested_piece_numbers=[0, 1, 2])
    stream = service(store, extensions=extensions).SyncPieces(request, context)
    assert await next_number(stream) == 0
    pending = asyncio.ensure_future(next_number(stream))
    await asyncio.sleep(0.1)
    assert not pending.done()  # piece 1 is on its way here: not announced
    hold(store, 1)
    store.receiving.end(incoming, ok=True)
    assert await pending == 1
    assert context.sent_metadata == []


async def test_a_damselfly_child_is_told_we_speak_the_extensions(tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    store.create_task(TID)
    store.set_content_length(TID, len(DATA), PL)
    hold(store, 0)
    context = Context()
    stream = service(store).SyncPieces(dfdaemon_pb2.SyncPiecesRequest(task_id=TID), context)
    assert await next_number(stream) == 0
    assert context.sent_metadata == [((EXTENSIONS_METADATA, "1"),)]


@pytest.mark.parametrize(("damselfly", "code"), [(True, "NOT_FOUND"), (False, "INTERNAL")])
async def test_an_unknown_task_is_refused_as_each_child_expects(
    tmp_path: Path, damselfly: bool, code: str
) -> None:
    """A Dragonfly parent answers INTERNAL "task ... not found" (docs/INTEROP.md, 3.3)."""
    stream = service(PieceStore(tmp_path)).SyncPieces(
        dfdaemon_pb2.SyncPiecesRequest(task_id=TID, interested_piece_numbers=[0]),
        Context(damselfly=damselfly),
    )
    with pytest.raises(Aborted) as caught:
        await next_number(stream)
    assert caught.value.args[0].name == code and f"task {TID} not found" in caught.value.args[1]
