"""A super-seed's piece server: each piece enters the swarm once while the seed is still fetching.

Real loopback sockets; two children are told apart by their source address
(127.0.0.1 and 127.0.0.2), as peers on different hosts are. "Elsewhere" is for
Damselfly children only; a plain child (any Dragonfly client) is served.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer.piece_client import PieceClient
from damselfly.daemon.transfer.piece_server import SUPER_SEED_RESEND, PieceServer
from damselfly.domain import PieceInfo
from damselfly.errors import PieceElsewhere
from damselfly.ids import task_id
from damselfly.pieces import piece_span
from helpers.store import put_piece
from helpers.wait import until

pytestmark = pytest.mark.integration

TID = task_id("http://example.com/seeded")
PL = 64 * 1024
PIECES = 4
DATA = bytes(range(256)) * (PIECES * PL // 256)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def hold(store: PieceStore, numbers: list[int]) -> None:
    """The seed holds these pieces of TID (its fetch from the origin is under way)."""
    if store.get(TID) is None:
        store.create_task(TID)
        store.set_content_length(TID, len(DATA), PL)
    for n in numbers:
        put_piece(store, TID, DATA, n, PL)


async def client_from(source: str, port: int, *, damselfly: bool = True) -> PieceClient:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    client = PieceClient(sock, ("127.0.0.1", port))
    client.damselfly = damselfly
    return client


class Seed:
    def __init__(self, store: PieceStore, server: PieceServer, port: int, clock: Clock) -> None:
        self.store, self.server, self.port, self.clock = store, server, port, clock


@pytest.fixture
async def seed(tmp_path: Path) -> AsyncIterator[Seed]:
    clock = Clock()
    store = PieceStore(tmp_path / "seed")
    server = PieceServer(store, super_seed=True, upload_slots=4, clock=clock)
    port = await server.start("127.0.0.1", 0)
    yield Seed(store, server, port, clock)
    await server.close()
    store.close()


async def fetch(client: PieceClient, number: int, tmp_path: Path) -> PieceInfo:
    span = piece_span(number, len(DATA), PL)
    fd = os.open(tmp_path / f"out-{id(client)}", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        return await client.download_piece(TID, number, fd, span.offset, span.length)
    finally:
        os.close(fd)


async def test_no_duplicate_leaves_a_seed_that_is_still_fetching(seed: Seed, tmp_path: Path) -> None:
    hold(seed.store, [0, 1])
    a = await client_from("127.0.0.1", seed.port)
    b = await client_from("127.0.0.2", seed.port)
    try:
        await fetch(a, 0, tmp_path)
        await fetch(a, 1, tmp_path)
        # Every held piece went out once, but the seed's fetch goes on: its upload
        # is for new pieces, so b gets piece 0 from a, not from the seed.
        with pytest.raises(PieceElsewhere):
            await fetch(b, 0, tmp_path)
        # a asking again (its copy failed) is served.
        assert (await fetch(a, 0, tmp_path)).number == 0
        # A piece that went out long ago is served again (its receiver may be gone).
        seed.clock.now += SUPER_SEED_RESEND + 1
        assert (await fetch(b, 0, tmp_path)).number == 0
        assert seed.server.elsewhere_refusals == 1
    finally:
        await a.close()
        await b.close()


async def test_a_complete_seed_serves_duplicates_once_all_went_out(seed: Seed, tmp_path: Path) -> None:
    hold(seed.store, list(range(PIECES)))
    a = await client_from("127.0.0.1", seed.port)
    b = await client_from("127.0.0.2", seed.port)
    try:
        await fetch(a, 0, tmp_path)
        # Pieces 1-3 never went out: the seed keeps its upload for them.
        with pytest.raises(PieceElsewhere):
            await fetch(b, 0, tmp_path)
        for n in range(1, PIECES):
            await fetch(a, n, tmp_path)
        # The whole task went out once and the seed has nothing new: duplicates help the tail.
        assert (await fetch(b, 0, tmp_path)).number == 0
    finally:
        await a.close()
        await b.close()


async def test_the_resend_clock_starts_when_the_first_copy_arrived(seed: Seed) -> None:
    """A first send still on its way is never duplicated (on a slow shared link it can take
    longer than SUPER_SEED_RESEND); a failed one is given to the next asker as a first send."""
    server, clock = seed.server, seed.clock
    held = {0: None, 1: None}
    assert server._super_seed_verdict(TID, 0, held, "10.0.0.1", complete=False) == "first"
    clock.now += 10 * SUPER_SEED_RESEND
    assert server._super_seed_verdict(TID, 0, held, "10.0.0.2", complete=False) == "elsewhere"
    assert server._super_seed_verdict(TID, 0, held, "10.0.0.1", complete=False) == "again"
    server._first_send_ended(TID, 0, "10.0.0.2", ok=True)  # not the first receiver: no effect
    server._first_send_ended(TID, 0, "10.0.0.1", ok=True)
    clock.now += SUPER_SEED_RESEND / 2
    assert server._super_seed_verdict(TID, 0, held, "10.0.0.2", complete=False) == "elsewhere"
    clock.now += SUPER_SEED_RESEND
    assert server._super_seed_verdict(TID, 0, held, "10.0.0.2", complete=False) == "again"
    # A first send that failed: the next asker gets the piece as a first send, not "elsewhere".
    assert server._super_seed_verdict(TID, 1, held, "10.0.0.1", complete=False) == "first"
    server._first_send_ended(TID, 1, "10.0.0.1", ok=False)
    assert server._super_seed_verdict(TID, 1, held, "10.0.0.3", complete=False) == "first"


async def test_a_piece_still_arriving_from_the_origin_goes_out_once_too(seed: Seed, tmp_path: Path) -> None:
    """The trailer path (a piece served while it lands, its digest after it) is under the
    same rule: the first asker gets it, another host is sent to the peers."""
    hold(seed.store, [0])
    span = piece_span(1, len(DATA), PL)
    entry = seed.store.receiving.start(TID, 1, span.offset, span.length, "")  # landing, no digest yet
    a = await client_from("127.0.0.1", seed.port)
    b = await client_from("127.0.0.2", seed.port)
    try:
        first = asyncio.ensure_future(fetch(a, 1, tmp_path))
        # The server has taken a's request: piece 1's first send is recorded, to a.
        await until(lambda: 1 in seed.server._first_sent.get(TID, {}), "a's request reached the seed")
        with pytest.raises(PieceElsewhere):  # a's copy is on its way
            await fetch(b, 1, tmp_path)
        info = put_piece(seed.store, TID, DATA, 1, PL, record=False)  # the origin's bytes land
        entry.advance(span.length)
        entry.digest = info.digest
        seed.store.finish_piece(TID, info)
        seed.store.receiving.end(entry, ok=True)
        assert (await asyncio.wait_for(first, 10)).digest == entry.digest
        assert seed.server.elsewhere_refusals == 1
    finally:
        await a.close()
        await b.close()


async def test_a_plain_child_is_served_what_went_out_already(seed: Seed, tmp_path: Path) -> None:
    """A Dragonfly child knows no "elsewhere" (it would count the seed as a failed parent)."""
    hold(seed.store, [0, 1])
    a = await client_from("127.0.0.1", seed.port)
    try:
        await fetch(a, 0, tmp_path)
    finally:
        await a.close()
    b = await client_from("127.0.0.2", seed.port, damselfly=False)
    try:
        assert (await fetch(b, 0, tmp_path)).number == 0
        assert seed.server.elsewhere_refusals == 0
    finally:
        await b.close()
