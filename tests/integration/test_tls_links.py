"""The credentials of :mod:`damselfly.security.tls` on real sockets, in one process.

gRPC: a server with :func:`server_credentials` and a channel from
:func:`make_channel` talk; the servicer sees the caller's certificate identity
(:func:`grpc_peer_identity`); a server whose certificate lacks the IP dialed
is refused. The piece port: a :class:`PieceServer` with
:func:`server_ssl_context` serves pieces byte-exact over TLS to a
:class:`PieceConnectionPool` with :func:`client_ssl_context`, on the threaded
and the paced (limited) receive paths, several pieces per pooled connection;
a child without TLS, a parent without TLS and a parent whose certificate names
another IP all fail as a :class:`PeerError`; the server side sees the child's
identity (:func:`ssl_peer_identity`).
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from damselfly.config import TLSConfig
from damselfly.daemon.ratelimit import ByteLimiter
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer.piece_client import PieceConnectionPool
from damselfly.daemon.transfer.piece_server import PieceServer
from damselfly.domain import PieceInfo
from damselfly.errors import PeerError
from damselfly.ids import task_id
from damselfly.pieces import piece_count, piece_span
from damselfly.security.certs import issue, make_ca
from damselfly.security.tls import (
    PeerIdentity,
    TLSFiles,
    client_ssl_context,
    grpc_peer_identity,
    load_tls,
    make_channel,
    server_credentials,
    server_ssl_context,
    ssl_peer_identity,
)

pytestmark = pytest.mark.integration

TID = task_id("http://example.com/tls")
PL = 256 * 1024
SIZE = 5 * PL + 1234


@dataclass
class Fleet:
    node: TLSFiles  # 127.0.0.1 and "node.local"
    elsewhere: TLSFiles  # same CA, but only 10.9.9.9


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    make_ca(tmp_path / "ca")

    def files(name: str, ip: str, dns: list[str]) -> TLSFiles:
        out = issue(tmp_path / "ca", name, ips=[ip], dns=dns, out=tmp_path / name)
        loaded = load_tls(TLSConfig(ca_cert=str(out.ca_cert), cert=str(out.cert), key=str(out.key)))
        assert loaded is not None
        return loaded

    return Fleet(files("node", "127.0.0.1", ["node.local"]), files("elsewhere", "10.9.9.9", []))


# -- gRPC -----------------------------------------------------------------------------------


async def _grpc_server(tls: TLSFiles, seen: list[PeerIdentity | None]) -> tuple[grpc.aio.Server, int]:
    async def whoami(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(grpc_peer_identity(context))
        return request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(whoami)},  # bytes in, bytes out
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
    await server.start()
    return server, port


async def _echo(channel: grpc.aio.Channel) -> bytes:
    call = channel.unary_unary("/test.Echo/Echo")
    return bytes(await call(b"hello", timeout=5))


async def test_grpc_mtls_carries_the_callers_identity(fleet: Fleet) -> None:
    seen: list[PeerIdentity | None] = []
    server, port = await _grpc_server(fleet.node, seen)
    try:
        async with make_channel(f"127.0.0.1:{port}", fleet.elsewhere) as channel:
            assert await _echo(channel) == b"hello"
        identity = seen[0]
        assert identity is not None
        assert (identity.common_name, identity.ips, identity.dns_names) == (
            "elsewhere",
            frozenset({"10.9.9.9"}),
            frozenset({"elsewhere"}),
        )
        # Plaintext to the same port gets nothing.
        async with make_channel(f"127.0.0.1:{port}", None) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _echo(channel)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert len(seen) == 1
    finally:
        await server.stop(None)


async def test_grpc_refuses_a_server_whose_certificate_lacks_the_ip_dialed(fleet: Fleet) -> None:
    seen: list[PeerIdentity | None] = []
    server, port = await _grpc_server(fleet.elsewhere, seen)  # a certificate for 10.9.9.9 only
    try:
        async with make_channel(f"127.0.0.1:{port}", fleet.node) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _echo(channel)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert seen == []
    finally:
        await server.stop(None)


# -- the piece port -----------------------------------------------------------------------------


def _content() -> bytes:
    return os.urandom(SIZE)


def _hold(store: PieceStore, data: bytes) -> None:
    store.create_task(TID)
    store.set_content_length(TID, len(data), PL)
    fd = store.open_write_fd(TID)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
    for n in range(piece_count(len(data), PL)):
        span = piece_span(n, len(data), PL)
        chunk = data[span.offset : span.offset + span.length]
        store.finish_piece(TID, PieceInfo(n, span.offset, span.length, f"crc32:{zlib.crc32(chunk)}"))
    store.mark_succeeded(TID)


@dataclass
class Parent:
    server: PieceServer
    port: int
    data: bytes


@pytest.fixture
async def parent(tmp_path: Path, fleet: Fleet) -> AsyncIterator[Parent]:
    store = PieceStore(tmp_path / "parent")
    data = _content()
    _hold(store, data)
    server = PieceServer(store)
    port = await server.start("127.0.0.1", 0, ssl=server_ssl_context(fleet.node))
    yield Parent(server, port, data)
    await server.close()
    store.close()


async def _fetch_all(pool: PieceConnectionPool, port: int, out: Path) -> bytes:
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for n in range(piece_count(SIZE, PL)):
            span = piece_span(n, SIZE, PL)
            info = await pool.download_piece(
                "127.0.0.1", port, TID, n, fd, span.offset, span.length, timeout=10
            )
            assert (info.number, info.offset, info.length) == (n, span.offset, span.length)
        return os.pread(fd, SIZE + 1, 0)
    finally:
        os.close(fd)


@pytest.mark.parametrize("limited", [False, True], ids=["threaded", "paced"])
async def test_pieces_cross_the_piece_port_over_tls_byte_exact(
    parent: Parent, fleet: Fleet, tmp_path: Path, limited: bool
) -> None:
    # A limit sends the body down the event-loop path; none, the worker-thread path.
    limiter = ByteLimiter(64 * 1024 * 1024, name="download") if limited else None
    pool = PieceConnectionPool(tls=client_ssl_context(fleet.node), limiter=limiter)
    try:
        assert await _fetch_all(pool, parent.port, tmp_path / "out") == parent.data
    finally:
        await pool.close()
    assert parent.server.pieces_sent == piece_count(SIZE, PL)


async def test_a_pooled_tls_connection_carries_several_pieces(
    parent: Parent, fleet: Fleet, tmp_path: Path
) -> None:
    pool = PieceConnectionPool(tls=client_ssl_context(fleet.node))
    try:
        assert await _fetch_all(pool, parent.port, tmp_path / "out") == parent.data
        idle = pool._idle[("127.0.0.1", parent.port)]
        assert [c.requests for c in idle] == [piece_count(SIZE, PL)]
    finally:
        await pool.close()


async def test_mismatched_tls_fails_as_a_peer_error(parent: Parent, fleet: Fleet, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # A child without TLS toward a TLS parent.
        pool = PieceConnectionPool()
        try:
            with pytest.raises(PeerError):
                await pool.download_piece("127.0.0.1", parent.port, TID, 0, fd, 0, PL, timeout=5)
        finally:
            await pool.close()
        # A parent presenting a certificate for another IP.
        store = PieceStore(tmp_path / "other")
        _hold(store, parent.data)
        other = PieceServer(store)
        port = await other.start("127.0.0.1", 0, ssl=server_ssl_context(fleet.elsewhere))
        pool = PieceConnectionPool(tls=client_ssl_context(fleet.node))
        try:
            with pytest.raises(PeerError, match="certificate"):
                await pool.download_piece("127.0.0.1", port, TID, 0, fd, 0, PL, timeout=5)
        finally:
            await pool.close()
            await other.close()
            store.close()
        # A TLS child toward a plain parent.
        plain_store = PieceStore(tmp_path / "plain")
        _hold(plain_store, parent.data)
        plain = PieceServer(plain_store)
        port = await plain.start("127.0.0.1", 0)
        pool = PieceConnectionPool(tls=client_ssl_context(fleet.node))
        try:
            with pytest.raises(PeerError):
                await pool.download_piece("127.0.0.1", port, TID, 0, fd, 0, PL, timeout=5)
        finally:
            await pool.close()
            await plain.close()
            plain_store.close()
    finally:
        os.close(fd)


async def test_the_server_side_sees_the_childs_identity(fleet: Fleet) -> None:
    seen: asyncio.Future[PeerIdentity | None] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(ssl_peer_identity(writer.get_extra_info("ssl_object")))
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=server_ssl_context(fleet.node))
    port = server.sockets[0].getsockname()[1]
    try:
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ssl_context(fleet.elsewhere), server_hostname="127.0.0.1"
        )
        identity = await asyncio.wait_for(seen, 5)
        writer.close()
        assert identity is not None and identity.ips == frozenset({"10.9.9.9"})
        assert identity.common_name == "elsewhere"
        assert ssl_peer_identity(None) is None
    finally:
        server.close()
        await server.wait_closed()


async def test_large_bodies_over_tls_land_whole_on_the_event_loop(tmp_path: Path, fleet: Fleet) -> None:
    """4 MiB pieces (a task's usual size) over one pooled TLS connection: each body's last step
    waits only for bytes that are coming (the session may hold part of a record read but not
    decrypted), so no piece sits until its timeout."""
    size, pl = 3 * 4 * 1024 * 1024, 4 * 1024 * 1024
    store = PieceStore(tmp_path / "parent")
    data = os.urandom(size)
    store.create_task(TID)
    store.set_content_length(TID, size, pl)
    fd = store.open_write_fd(TID)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
    for n in range(3):
        chunk = data[n * pl : (n + 1) * pl]
        store.finish_piece(TID, PieceInfo(n, n * pl, pl, f"crc32:{zlib.crc32(chunk)}"))
    store.mark_succeeded(TID)
    server = PieceServer(store)
    port = await server.start("127.0.0.1", 0, ssl=server_ssl_context(fleet.node))
    pool = PieceConnectionPool(tls=client_ssl_context(fleet.node))
    out = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for _ in range(2):  # the second round on the warm connection, its pace measured
            for n in range(3):
                await pool.download_piece("127.0.0.1", port, TID, n, out, n * pl, pl, timeout=5)
        assert os.pread(out, size + 1, 0) == data
    finally:
        os.close(out)
        await pool.close()
        await server.close()
        store.close()
