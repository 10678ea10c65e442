"""Dragonfly's Rust dfdaemon played by a test: its piece client, its piece server, its SyncPieces.

Each behaves as the Rust client's source says (docs/INTEROP.md 3.3 and 4.2), read at
``dragonflyoss/client`` commit ff17c0b771f69aa801910ba96b7058abad24dbf2 (C) and
``dragonflyoss/vortex-protocol`` v0.1.5, commit 9bdd5557c52c9e519fc85970ba93ed3ed9e911d3 (V).
Only what the conformance tests need; the code is ours, written from those facts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from damselfly.api import dfdaemon_pb2, dfdaemon_pb2_grpc
from damselfly.daemon.transfer import vortex


def crc(data: bytes) -> str:
    return f"crc32:{zlib.crc32(data)}"


def parse_frame(raw: bytes) -> vortex.Event:
    """The one event in ``raw``, a whole frame."""
    parser = vortex.FrameParser()
    parser.feed(raw)
    event = parser.next_event()
    assert event is not None and parser.buffered == 0
    return event


async def rust_client_download(port: int, tid: str, number: int) -> tuple[int, vortex.Event, bytes, bytes]:
    """One piece as Dragonfly's Rust client fetches it (C:dragonfly-client-storage/src/client/tcp.rs:
    86-121, 255-360): a new connection, a random packet id, tag 0; then the 6-byte header, for tag 1
    the u32 metadata_length and the metadata, then the content up to the piece's length; the
    answer's packet id is not looked at. Its write half goes once the metadata is in (``_writer``
    dropped when the call returns). Returns (frame tag, event, content, what followed it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(vortex.encode_download_piece(random.randrange(256), tid, number))
        await writer.drain()
        head = await reader.readexactly(vortex.HEADER_SIZE)
        _, tag, length = struct.unpack(">BBI", head)
        if tag == vortex.Tag.PIECE_CONTENT:
            (metadata_length,) = struct.unpack(">I", await reader.readexactly(4))
            metadata = await reader.readexactly(metadata_length)
            assert length == 4 + metadata_length  # what Dragonfly's server always sends
            event = parse_frame(head + struct.pack(">I", metadata_length) + metadata)
            assert isinstance(event, vortex.PieceHeader)
            writer.write_eof()
            content = await reader.readexactly(event.length)
        else:
            event = parse_frame(head + await reader.readexactly(length))
            writer.write_eof()
            content = b""
        rest = await asyncio.wait_for(reader.read(), 10)  # the server closes: one request per connection
        return tag, event, content, rest
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


class RustPieceServer:
    """Dragonfly's piece server as C:dragonfly-client-storage/src/server/tcp.rs:198-500 behaves:
    one header and one request per accepted connection; tag 0 answered with a PieceContent frame
    (a random packet id, V:src/lib.rs:43-47,107-114) and the content, or an Error (NotFound, code 2,
    for a piece it does not hold); any other tag: the connection dropped with no frame; then closed.

    ``held``: piece number -> (offset, content); ``errors``: piece number -> (code, message).
    """

    def __init__(
        self, held: dict[int, tuple[int, bytes]], errors: dict[int, tuple[int, str]] | None = None
    ) -> None:
        self.held = held
        self.errors = errors or {}
        self.requests: list[tuple[int, int]] = []  # (connection, tag)
        self.after: list[bytes] = []  # what each connection sent after its request
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.rng = random.Random(7)

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        try:
            _, tag, length = struct.unpack(">BBI", await reader.readexactly(vortex.HEADER_SIZE))
            self.requests.append((connection, tag))
            value = await reader.readexactly(length)
            if tag != vortex.Tag.DOWNLOAD_PIECE:
                return
            (number,) = struct.unpack(">I", value[64:])
            pid = self.rng.randrange(256)
            if number in self.errors:
                code, message = self.errors[number]
                writer.write(vortex.encode_error(pid, code, message))
            elif number in self.held:
                offset, content = self.held[number]
                writer.write(
                    vortex.encode_piece_header(
                        pid, number, offset, len(content), crc(content), cost_s=1, created_at=1700000000
                    )
                )
                writer.write(content)
            else:
                message = f"piece {value[:64].decode()}-{number} not found"
                writer.write(vortex.encode_error(pid, vortex.ErrorCode.NOT_FOUND, message))
            await writer.drain()
            # Not part of the server: what the client sends before it drops the connection.
            with contextlib.suppress(ConnectionError):
                self.after.append(await asyncio.wait_for(reader.read(), 10))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@contextlib.asynccontextmanager
async def rust_piece_server(
    held: dict[int, tuple[int, bytes]], errors: dict[int, tuple[int, str]] | None = None
) -> AsyncIterator[tuple[RustPieceServer, int]]:
    rust = RustPieceServer(held, errors)
    port = await rust.start()
    try:
        yield rust, port
    finally:
        await rust.close()


class RustSyncPieces(dfdaemon_pb2_grpc.DfdaemonUploadServicer):  # type: ignore[misc]
    """``DfdaemonUpload.SyncPieces`` as C:dragonfly-client/src/grpc/dfdaemon_upload.rs:924-1142 serves it:
    for each interested number whose piece is finished, ``{number, offset, length, ip, tcp_port,
    quic_port}``; ends once the task is finished (after one pass) or nothing interesting is left,
    so an empty interest list gets nothing; an unknown task is INTERNAL "task <id> not found".

    ``pieces``: piece number -> (offset, length) of the finished pieces of ``task_id``.
    """

    def __init__(
        self, task_id: str, pieces: dict[int, tuple[int, int]], ip: str, tcp_port: int, *, finished: bool
    ) -> None:
        self.task_id = task_id
        self.pieces = pieces
        self.ip, self.tcp_port = ip, tcp_port
        self.finished = finished
        self.requests: list[tuple[list[int], dict[str, str]]] = []  # (interested, metadata)

    async def SyncPieces(
        self, request: dfdaemon_pb2.SyncPiecesRequest, context: Any
    ) -> AsyncIterator[dfdaemon_pb2.SyncPiecesResponse]:
        self.requests.append((list(request.interested_piece_numbers), dict(context.invocation_metadata())))
        if request.task_id != self.task_id:
            await context.abort(grpc.StatusCode.INTERNAL, f"task {request.task_id} not found")
        interested = list(request.interested_piece_numbers)
        while True:
            sent = []
            for number in interested:
                if number in self.pieces:
                    offset, length = self.pieces[number]
                    yield dfdaemon_pb2.SyncPiecesResponse(
                        number=number, offset=offset, length=length, ip=self.ip,
                        tcp_port=self.tcp_port, quic_port=self.tcp_port + 1,
                    )  # fmt: skip
                    sent.append(number)
            if self.finished:
                return  # "all existing pieces have been sent"
            interested = [n for n in interested if n not in sent]
            if not interested:
                return  # "all interested pieces have been finished"
            await asyncio.sleep(0.1)  # DEFAULT_WAIT_FOR_PIECE_FINISHED_INTERVAL


@contextlib.asynccontextmanager
async def rust_upload_server(service: RustSyncPieces) -> AsyncIterator[int]:
    """A gRPC server carrying ``service``; yields its port (a Rust host's ``port`` and ``download_port``)."""
    server = grpc.aio.server()
    dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)
