"""The piece port's bounds over real sockets (daemon/transfer/send_guard.py).

Children that ask for pieces and never read them lose their upload slots after the
idle timeout; one address holds at most so many connections, stalled ones evicted
first; a slow but honest reader still gets its piece. Timeouts are scaled down by
the limits the server is given, and every check is on what happened (a connection
reset, a piece served), never on how long it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer import vortex
from damselfly.daemon.transfer.piece_client import PieceClient
from damselfly.daemon.transfer.piece_server import PieceServer
from damselfly.daemon.transfer.send_guard import SendLimits
from damselfly.domain import PieceInfo
from damselfly.errors import ResourceExhausted
from damselfly.ids import task_id
from helpers.wait import until

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
TID = task_id("http://example.com/bounds")
PL = 4 * MiB
PIECES = 4
TCP_ESTABLISHED, TCP_CLOSE = 1, 7


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PieceStore]:
    """A task of four 4 MiB pieces, all held."""
    s = PieceStore(tmp_path / "store")
    data = os.urandom(PL * PIECES)
    s.create_task(TID)
    s.set_content_length(TID, len(data), PL)
    fd = s.open_write_fd(TID)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
    for n in range(PIECES):
        chunk = data[n * PL : (n + 1) * PL]
        s.finish_piece(TID, PieceInfo(n, n * PL, PL, f"crc32:{zlib.crc32(chunk)}"))
    s.mark_succeeded(TID)
    yield s
    s.close()


class Clock:
    """Time the test moves: when connections last made progress, as the cap sees it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def held(store: PieceStore, number: int) -> bytes:
    fd = store.open_read_fd(TID)
    try:
        return os.pread(fd, PL, number * PL)
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def serve(
    store: PieceStore, limits: SendLimits, **kw: object
) -> AsyncIterator[tuple[PieceServer, int]]:
    server = PieceServer(store, limits=limits, **kw)  # type: ignore[arg-type]
    port = await server.start("127.0.0.1", 0)
    try:
        yield server, port
    finally:
        await server.close()


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def greedy(port: int, number: int, *, damselfly: bool = True) -> socket.socket:
    """A child that asks for a piece and never reads: a 4 KiB receive window, nothing read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    tag = vortex.Tag.DOWNLOAD_PIECE_TRAILER if damselfly else vortex.Tag.DOWNLOAD_PIECE
    sock.sendall(vortex.encode_download_piece(1, TID, number, tag=tag))
    return sock


def silent(port: int) -> socket.socket:
    """A connection that asks nothing (a child's pooled connection between requests)."""
    return socket.create_connection(("127.0.0.1", port))


async def honest(port: int, out: int, number: int = 0) -> bool:
    """A Damselfly child asks for a piece: True when served, False when refused busy."""
    client = await PieceClient.connect("127.0.0.1", port)
    client.damselfly = True
    try:
        await client.download_piece(TID, number, out, number * PL, PL)
        return True
    except ResourceExhausted:
        return False
    finally:
        await client.close()


async def test_children_that_never_read_lose_their_slots(store: PieceStore, tmp_path: Path) -> None:
    limits = SendLimits(idle_timeout=0.5, min_rate=1 * MiB)
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT)
    socks: list[socket.socket] = []
    async with serve(store, limits, upload_slots=4) as (server, port):
        try:
            # Four slots and four places in the queue: eight greedy children take them all.
            socks = [greedy(port, n % PIECES) for n in range(8)]
            await until(lambda: server.active_connections == 8, "the eight greedy children are connected")
            refused_before = server.busy_refusals
            busy = not await honest(port, out)
            # Either the greedy ones filled every slot (the honest child was told "busy"), or the
            # first of them were dropped already; both mean they were sending and stuck.
            assert busy or server.stalled_sends > 0
            if busy:
                assert server.busy_refusals == refused_before + 1
            await until(lambda: honest(port, out), "an honest child is served again")
            assert os.pread(out, PL, 0) == held(store, 0)
            # Every greedy connection was reset by the server, and each for a stalled send.
            await until(
                lambda: all(tcp_state(s) == TCP_CLOSE for s in socks), "every greedy connection is reset"
            )
            assert server.stalled_sends >= 8
        finally:
            for s in socks:
                s.close()
            os.close(out)


async def test_a_full_address_evicts_stalled_connections_first(store: PieceStore) -> None:
    clock = Clock()
    # A long idle timeout: nothing here ends by it; the clock says who stalled.
    limits = SendLimits(idle_timeout=60, min_rate=1 * MiB, per_address=4)
    socks: list[socket.socket] = []
    async with serve(store, limits, clock=clock) as (server, port):
        try:
            stalled = [greedy(port, 0), greedy(port, 1)]
            socks = list(stalled)
            for _ in range(2):  # two waiting for a request, the first the longest
                clock.now += 1
                socks.append(silent(port))
                await until(lambda: len(server.address_connections("127.0.0.1")) == len(socks), "connected")

            def sending() -> int:
                return sum(c.sending for c in server.address_connections("127.0.0.1"))

            await until(lambda: len(server.address_connections("127.0.0.1")) == 4, "four connections")
            await until(lambda: sending() == 2, "the two greedy ones are sending")
            clock.now += 100  # the greedy ones have moved nothing since

            def reset() -> list[bool]:
                return [tcp_state(s) == TCP_CLOSE for s in socks]

            socks.append(silent(port))  # the fifth: the cap is four
            await until(lambda: sum(reset()) == 1, "one connection is evicted")
            assert reset()[:2] in ([True, False], [False, True])  # ... a stalled one
            await until(lambda: len(server.address_connections("127.0.0.1")) == 4, "four connections")
            socks.append(silent(port))
            await until(lambda: sum(reset()) == 2, "a second connection is evicted")
            assert reset()[:4] == [True, True, False, False]  # ... the other stalled one
            await until(lambda: len(server.address_connections("127.0.0.1")) == 4, "four connections")
            socks.append(silent(port))  # no stalled one left: the longest waiting one goes
            await until(lambda: sum(reset()) == 3, "a third connection is evicted")
            assert reset() == [True, True, True, False, False, False, False]
            assert server.evicted == 3 and server.stalled_sends == 0
            assert all(tcp_state(s) == TCP_ESTABLISHED for s in socks[3:])
        finally:
            for s in socks:
                s.close()


async def test_an_address_full_of_progressing_sends_refuses_a_new_connection(store: PieceStore) -> None:
    clock = Clock()
    limits = SendLimits(idle_timeout=60, min_rate=1 * MiB, per_address=2)
    socks: list[socket.socket] = []
    async with serve(store, limits, clock=clock) as (server, port):
        try:
            socks = [greedy(port, 0), greedy(port, 1)]  # sending; the clock says: just now
            await until(
                lambda: sum(c.sending for c in server.address_connections("127.0.0.1")) == 2,
                "both are sending",
            )
            socks.append(silent(port))
            await until(lambda: server.refused_connections == 1, "the third connection is refused")
            await until(lambda: tcp_state(socks[2]) == TCP_CLOSE, "the third connection is reset")
            assert [tcp_state(s) for s in socks[:2]] == [TCP_ESTABLISHED, TCP_ESTABLISHED]
        finally:
            for s in socks:
                s.close()


async def slow_read(port: int, number: int, rate: int) -> bytes:
    """Ask for piece ``number`` and read the answer at about ``rate`` bytes per second."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
    writer.write(vortex.encode_download_piece(1, TID, number))
    parser = vortex.FrameParser()
    content = bytearray()
    step = 16 * 1024
    try:
        while True:
            event = parser.next_event()
            if isinstance(event, vortex.PieceHeader):
                continue
            if isinstance(event, vortex.PieceData):
                content += event.data
                if len(content) >= PL:
                    return bytes(content)
                continue
            assert event is None, event
            data = await reader.read(step)
            if not data:
                return bytes(content)
            parser.feed(data)
            await asyncio.sleep(len(data) / rate)
    finally:
        writer.close()


async def test_a_slow_but_honest_reader_gets_its_piece(store: PieceStore) -> None:
    # Scaled down: a reader at 1 MiB/s against a 256 KiB/s minimum and a 1 s idle timeout is
    # a 5 mbit link against the defaults (64 KiB/s, 5 s) with a margin to spare.
    limits = SendLimits(idle_timeout=1.0, min_rate=256 * 1024)
    async with serve(store, limits, upload_slots=4) as (server, port):
        got = await asyncio.gather(slow_read(port, 0, 1 * MiB), slow_read(port, 1, 1 * MiB))
        for n, content in enumerate(got):
            assert len(content) == PL and content == held(store, n)
        assert server.stalled_sends == 0 and server.pieces_sent == 2
