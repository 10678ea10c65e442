"""A piece body over a slow parent: the receive path's low water mark never turns a slow parent
into a "silent" one (the idle timeout judges whether bytes came, not whether enough came)."""

from __future__ import annotations

import asyncio
import os
import socket
import zlib
from pathlib import Path

from damselfly.daemon.transfer import landing, vortex
from damselfly.daemon.transfer.piece_client import PieceConnectionPool

TID = "b" * 64
LENGTH = landing.RECV_LOW_WATER + 64 * 1024  # more than one low water mark
DRIBBLE = 4096


async def test_a_parent_slower_than_the_low_water_mark_still_delivers(tmp_path: Path) -> None:
    """The parent sends 4 KiB every 20 ms: the first low water mark's worth takes longer than the
    0.3 s idle timeout, yet bytes keep coming, so the piece lands whole and checks out."""
    payload = os.urandom(LENGTH)
    served = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = await reader.readexactly(vortex.HEADER_SIZE + vortex.DOWNLOAD_PIECE_LENGTH)
        parser = vortex.FrameParser()
        parser.feed(raw)
        req = parser.next_event()
        assert isinstance(req, vortex.DownloadPiece)
        digest = f"crc32:{zlib.crc32(payload)}"
        writer.write(vortex.encode_piece_header(req.packet_id, req.number, 0, LENGTH, digest))
        for i in range(0, LENGTH, DRIBBLE):
            writer.write(payload[i : i + DRIBBLE])
            await writer.drain()
            await asyncio.sleep(0.02)
        await reader.read()  # until the child closes
        writer.close()
        await writer.wait_closed()
        served.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    out = tmp_path / "out"
    fd = os.open(out, os.O_RDWR | os.O_CREAT)
    pool = PieceConnectionPool(extensions=False)
    try:
        info = await pool.download_piece(
            "127.0.0.1", port, TID, 0, fd, 0, LENGTH, timeout=0.3, damselfly=False
        )
    finally:
        os.close(fd)
        await pool.close()
        await asyncio.wait_for(served.wait(), 10)
        server.close()
        await server.wait_closed()
    assert info.digest == f"crc32:{zlib.crc32(payload)}"
    assert out.read_bytes() == payload


async def test_a_step_whose_low_water_mark_is_not_reached_still_reads_what_came() -> None:
    """The mark is a hint to the kernel, never a condition: ten bytes under a 64 KiB mark are
    read once the step's timer runs out (a wrong mark lands late, it does not stall). The
    event-loop paths (bodies over TLS, the origin's body) wait this way."""
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    receiver.setblocking(False)
    try:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 64 * 1024)
        sender.sendall(b"0123456789")
        into = memoryview(bytearray(64 * 1024))
        async with asyncio.timeout(5):
            got = await landing.stepped_recv(asyncio.get_running_loop(), receiver, into)
        assert got == 10
        assert bytes(into[:got]) == b"0123456789"
    finally:
        for s in (sender, receiver, listener):
            s.close()
