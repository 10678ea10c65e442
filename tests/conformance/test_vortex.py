"""Vortex as Dragonfly's release speaks it: golden frames both ways, and a Rust peer played on a socket.

Sources (docs/INTEROP.md, section 4), read for facts, never copied:
- V = ``dragonflyoss/vortex-protocol`` v0.1.5, commit 9bdd5557c52c9e519fc85970ba93ed3ed9e911d3
  (the release the Rust client pins; HEAD 3bca5de checked: the same bytes);
- C = ``dragonflyoss/client`` (Rust dfdaemon 1.5.1), commit ff17c0b771f69aa801910ba96b7058abad24dbf2.

The golden vectors are docs/INTEROP.md 4.3, built by hand from V's layouts. The socket tests
play the Rust client (C:dragonfly-client-storage/src/client/tcp.rs) against Damselfly's piece
server, and the Rust server (C:dragonfly-client-storage/src/server/tcp.rs) against Damselfly's
piece client, as a child uses it for a parent that did not announce Damselfly's extensions.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer import vortex
from damselfly.daemon.transfer.piece_client import PieceClient, PieceConnectionPool
from damselfly.daemon.transfer.piece_server import PieceServer
from damselfly.domain import PieceInfo
from damselfly.errors import NotFound, PeerError, ResourceExhausted
from damselfly.ids import task_id
from damselfly.pieces import piece_span
from helpers.rust_peer import crc, rust_client_download, rust_piece_server
from helpers.store import put_piece

Tag, Code = vortex.Tag, vortex.ErrorCode

# --------------------------------------------------------------------------- golden frames
# Header: packet_id u8, tag u8, length u32 BE, 6 bytes (V:src/lib.rs:26,213-221).
# DownloadPiece value: task id, 64 bytes, then piece number u32 BE
# (V:src/tlv/download_piece.rs:22-25,111-118).
# Tags (V:src/tlv/mod.rs:31-105): 0 DownloadPiece, 1 PieceContent, 2/3 persistent, 4/5 persistent cache,
# 6/7 cache, 8-253 reserved, 254 Close, 255 Error.

A64 = "a" * 64
HEX4 = "0123456789abcdef" * 4
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# (packet id, task id, piece number, the frame): INTEROP 4.3, V:src/tlv/download_piece.rs:111-118.
DOWNLOAD_PIECE_VECTORS = [
    (
        0x01,
        A64,
        3,
        "0100000000446161616161616161616161616161616161616161616161616161"
        "6161616161616161616161616161616161616161616161616161616161616161"
        "61616161616100000003",
    ),
    (
        0xFF,
        HEX4,
        0,
        "ff00000000443031323334353637383961626364656630313233343536373839"
        "6162636465663031323334353637383961626364656630313233343536373839"
        "61626364656600000000",
    ),
    (
        0x7F,
        EMPTY_SHA256,
        4294967295,
        "7f00000000446533623063343432393866633163313439616662663463383939"
        "3666623932343237616534316534363439623933346361343935393931623738"
        "353262383535ffffffff",
    ),
]

# PieceContent (V:src/tlv/piece_content.rs:21-48 sizes, 355-392 encoding): u32 metadata_length, then
# number u32, offset u64, length u64, digest_length u32, digest, parent_id_length u32, parent_id,
# traffic_type u8, cost u64 (Duration::as_secs), created_at i64 (Unix seconds); the frame's length is
# 4 + metadata_length and the content follows the frame (C:dragonfly-client-storage/src/server/tcp.rs:
# 226-260 writes the frame, then sendfile). Fields: packet id, number, offset, length, digest, parent id,
# traffic type, cost, created_at, the frame (content not included), and the content that follows.
PIECE_CONTENT_VECTORS = [
    (
        0x2A, 3, 12582912, 5, "crc32:907060870", "", 1, 0, 1700000000,
        "2a01" "00000040" "0000003c" "00000003" "0000000000c00000" "0000000000000005"
        "0000000f" "63726333323a393037303630383730" "00000000" "01" "0000000000000000" "000000006553f100",
        b"hello",
    ),
    (
        0x05, 0, 0, 4194304, "crc32:1234567890", "10.0.0.1-host-1b4e28ba-2fa1-11d2-883f-0016d3cca427",
        1, 2, 1693152000,
        "0501000000730000006f00000000000000000000000000000000004000000000"
        "001063726333323a313233343536373839300000003231302e302e302e312d68"
        "6f73742d31623465323862612d326661312d313164322d383833662d30303136"
        "64336363613432370100000000000000020000000064eb7300",
        b"",
    ),
    (
        0x00, 7, 29360128, 0, "", "", 0, 0, 0,
        "0001000000310000002d000000070000000001c0000000000000000000000000"
        "0000000000000000000000000000000000000000000000",
        b"",
    ),
]  # fmt: skip

# Error (V:src/tlv/error.rs:24-57 codes, 120-127 encoding): code u8, then the UTF-8 message.
# 0 Unknown, 1 InvalidArgument, 2 NotFound, 3 Internal; 4-255 reserved.
ERROR_VECTORS = [
    (0x01, 2, "NOT_FOUND", "piece x-3 not found", "01ff0000001402706965636520782d33206e6f7420666f756e64"),
    (0x9C, 1, "INVALID_ARGUMENT", "bad", "9cff0000000401626164"),
    (0x00, 3, "INTERNAL", "", "00ff0000000103"),
    (0x42, 0, "UNKNOWN", "?", "42ff00000002003f"),
]

# Close (V:src/tlv/close.rs: an empty value): INTEROP 4.3.
CLOSE_VECTOR = (0x11, "11fe00000000")


def test_vortex_codes_and_tags_are_dragonflys() -> None:
    # V:src/tlv/error.rs:24-57; V:src/tlv/mod.rs:31-105.
    assert [Code.UNKNOWN, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.INTERNAL] == [0, 1, 2, 3]
    assert [Tag.DOWNLOAD_PIECE, Tag.PIECE_CONTENT, Tag.DOWNLOAD_PERSISTENT_PIECE] == [0, 1, 2]
    assert [Tag.PERSISTENT_PIECE_CONTENT, Tag.DOWNLOAD_PERSISTENT_CACHE_PIECE] == [3, 4]
    assert [Tag.PERSISTENT_CACHE_PIECE_CONTENT, Tag.DOWNLOAD_CACHE_PIECE, Tag.CACHE_PIECE_CONTENT] == [
        5,
        6,
        7,
    ]
    assert (Tag.CLOSE, Tag.ERROR) == (254, 255)
    # Damselfly's own live in Vortex's reserved ranges (tags 8-253, codes 4-255).
    assert 8 <= Tag.DOWNLOAD_PIECE_TRAILER <= 253 and 8 <= Tag.PIECE_DIGEST <= 253
    assert Code.RESOURCE_EXHAUSTED >= 4 and Code.ELSEWHERE >= 4


def parse(raw: bytes) -> list[vortex.Event]:
    parser = vortex.FrameParser()
    parser.feed(raw)
    events: list[vortex.Event] = []
    while (event := parser.next_event()) is not None:
        events.append(event)
    assert parser.buffered == 0
    return events


REQUEST_TAGS = [0, 2, 4, 6]  # DownloadPiece, DownloadPersistentPiece, -PersistentCachePiece, -CachePiece
CONTENT_TAGS = [1, 3, 5, 7]  # PieceContent, PersistentPieceContent, -PersistentCachePiece-, -CachePiece-


@pytest.mark.parametrize("request_tag", REQUEST_TAGS)
@pytest.mark.parametrize(("packet_id", "tid", "number", "frame"), DOWNLOAD_PIECE_VECTORS)
def test_download_piece_both_ways(
    request_tag: int, packet_id: int, tid: str, number: int, frame: str
) -> None:
    # Tags 2/4/6 share tag 0's layout (V:src/tlv/download_persistent_piece.rs,
    # download_persistent_cache_piece.rs, download_cache_piece.rs: the same 64 + 4 bytes).
    raw = bytes.fromhex(frame)
    raw = raw[:1] + bytes([request_tag]) + raw[2:]
    assert vortex.encode_download_piece(packet_id, tid, number, Tag(request_tag)) == raw
    assert parse(raw) == [vortex.DownloadPiece(packet_id, tid, number, Tag(request_tag))]


@pytest.mark.parametrize("content_tag", CONTENT_TAGS)
@pytest.mark.parametrize(
    (
        "packet_id",
        "number",
        "offset",
        "length",
        "digest",
        "parent",
        "traffic",
        "cost",
        "created",
        "frame",
        "content",
    ),
    PIECE_CONTENT_VECTORS,
)
def test_piece_content_both_ways(
    content_tag: int, packet_id: int, number: int, offset: int, length: int, digest: str, parent: str,
    traffic: int, cost: int, created: int, frame: str, content: bytes,
) -> None:  # fmt: skip
    # Tags 3/5/7 share tag 1's layout (V:src/tlv/persistent_piece_content.rs:24-48,355-392,
    # persistent_cache_piece_content.rs and cache_piece_content.rs: the same fields).
    raw = bytes.fromhex(frame)
    raw = raw[:1] + bytes([content_tag]) + raw[2:]
    encoded = vortex.encode_piece_header(
        packet_id, number, offset, length, digest, parent_id=parent, traffic_type=traffic,
        cost_s=cost, created_at=created, tag=Tag(content_tag),
    )  # fmt: skip
    assert encoded == raw
    header = vortex.PieceHeader(
        packet_id, number, offset, length, digest, parent, traffic, cost, created, Tag(content_tag)
    )
    events = parse(raw + content)
    assert events[0] == header
    assert b"".join(e.data for e in events[1:] if isinstance(e, vortex.PieceData)) == content
    if content:  # the content is outside the frame: a reader stops exactly at the frame's end
        parser = vortex.FrameParser()
        parser.feed(raw)
        assert parser.next_event() == header and parser.bytes_needed() == len(content)


@pytest.mark.parametrize(("packet_id", "code", "name", "message", "frame"), ERROR_VECTORS)
def test_error_both_ways(packet_id: int, code: int, name: str, message: str, frame: str) -> None:
    raw = bytes.fromhex(frame)
    assert vortex.encode_error(packet_id, Code[name], message) == raw
    assert parse(raw) == [vortex.Error(packet_id, code, message)]


def test_close_both_ways() -> None:
    packet_id, frame = CLOSE_VECTOR
    assert vortex.encode_close(packet_id) == bytes.fromhex(frame)
    assert parse(bytes.fromhex(frame)) == [vortex.Close(packet_id)]


def test_damselflys_own_frames_are_fixed_too() -> None:
    """Not Dragonfly's: Damselfly's request (224) and digest trailer (225), between its own peers."""
    raw = vortex.encode_download_piece(0x01, A64, 3, Tag.DOWNLOAD_PIECE_TRAILER)
    assert raw == bytes.fromhex(DOWNLOAD_PIECE_VECTORS[0][3].replace("0100", "01e0", 1))
    assert vortex.encode_piece_digest(0x2A, "crc32:907060870") == bytes.fromhex(
        "2ae10000000f63726333323a393037303630383730"
    )


# --------------------------------------------------------------------------- a Rust peer on a socket

TID = task_id("http://example.com/vortex-conformance")
PL = 64 * 1024
PIECES = 4
DATA = random.Random(15).randbytes(PIECES * PL - 1000)


@pytest.fixture
async def parent(tmp_path: Path) -> AsyncIterator[tuple[PieceStore, PieceServer, int]]:
    store = PieceStore(tmp_path / "parent")
    store.create_task(TID)
    store.set_content_length(TID, len(DATA), PL)
    server = PieceServer(store, wall_clock=lambda: 1700000000.5)
    port = await server.start("127.0.0.1", 0)
    yield store, server, port
    await server.close()
    store.close()


async def test_a_rust_client_pulls_dragonflys_layout_from_damselfly(
    parent: tuple[PieceStore, PieceServer, int],
) -> None:
    store, _, port = parent
    put_piece(store, TID, DATA, 0, PL, record=False)
    store.finish_piece(TID, PieceInfo(0, 0, PL, crc(DATA[:PL]), parent_id="10.0.0.7-up-1", cost_s=2.7))
    for n in range(1, PIECES):
        put_piece(store, TID, DATA, n, PL)
    for n in range(PIECES):
        span = piece_span(n, len(DATA), PL)
        tag, event, content, rest = await rust_client_download(port, TID, n)
        assert tag == Tag.PIECE_CONTENT and isinstance(event, vortex.PieceHeader)
        assert (event.number, event.offset, event.length) == (n, span.offset, span.length)
        assert content == DATA[span.offset : span.offset + span.length] and event.digest == crc(content)
        assert event.traffic_type == 1 and event.created_at == 1700000000  # REMOTE_PEER, Unix seconds
        if n == 0:  # where the parent got it, and its cost in whole seconds (Duration::as_secs)
            assert (event.parent_id, event.cost_s) == ("10.0.0.7-up-1", 2)
        assert rest == b""  # nothing after the content (no trailer), then the connection closed


async def test_a_rust_client_gets_dragonflys_error_codes(parent: tuple[PieceStore, PieceServer, int]) -> None:
    store, _, port = parent
    put_piece(store, TID, DATA, 0, PL)
    other = task_id("http://example.com/not-here")
    for tid, number, code in [
        (other, 0, Code.NOT_FOUND),
        (TID, 1, Code.NOT_FOUND),
        (TID, 99, Code.INVALID_ARGUMENT),
    ]:
        tag, event, _, rest = await rust_client_download(port, tid, number)
        assert tag == Tag.ERROR and isinstance(event, vortex.Error) and event.code == code
        assert rest == b""


async def test_a_busy_parent_makes_a_rust_client_wait_never_refuses_it(
    parent: tuple[PieceStore, PieceServer, int],
) -> None:
    """Damselfly children get "busy" (4) when every slot and the queue are taken; a Rust parent
    never refuses for load (it waits for its upload limiter, C:dragonfly-client-storage/src/server/
    tcp.rs:485-488), so a plain request waits its turn."""
    store, server, port = parent
    server.upload_slots, server._slots = 1, asyncio.Semaphore(1)
    for n in (1, 2, 3):
        put_piece(store, TID, DATA, n, PL)
    arriving = store.receiving.start(TID, 0, 0, PL, crc(DATA[:PL]))  # streams while it lands: holds the slot
    holder = await PieceClient.connect("127.0.0.1", port)
    queued = await PieceClient.connect("127.0.0.1", port)
    refused = await PieceClient.connect("127.0.0.1", port)
    for c in (holder, queued, refused):
        c.damselfly = True
    fd = os.open(store.content_path(TID).with_suffix(".child"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        first = asyncio.ensure_future(holder.download_piece(TID, 0, fd, 0, PL, timeout=10))
        second = asyncio.ensure_future(queued.download_piece(TID, 1, fd, PL, PL, timeout=10))
        for _ in range(500):  # until the second request waits for the slot
            if server._queued == 1:
                break
            await asyncio.sleep(0.01)
        assert server._queued == 1
        with pytest.raises(ResourceExhausted, match="busy"):
            await refused.download_piece(TID, 2, fd, 2 * PL, PL, timeout=10)
        rust = asyncio.ensure_future(rust_client_download(port, TID, 3))
        put_piece(store, TID, DATA, 0, PL)  # piece 0 lands: the slot frees up
        store.receiving.end(arriving, ok=True)
        await asyncio.wait_for(asyncio.gather(first, second), 10)
        tag, event, content, _ = await asyncio.wait_for(rust, 10)
        assert tag == Tag.PIECE_CONTENT and content == DATA[3 * PL : 4 * PL - 1000]
        assert isinstance(event, vortex.PieceHeader) and server.busy_refusals == 1
    finally:
        for c in (holder, queued, refused):
            await c.close()
        os.close(fd)


async def test_a_piece_still_arriving_reaches_a_rust_client_once_held(
    parent: tuple[PieceStore, PieceServer, int],
) -> None:
    """A Rust parent waits for a piece to finish before it serves it (C:dragonfly-client-storage/
    src/lib.rs:948-956); a plain request for a piece we still receive is answered the same way."""
    store, _, port = parent
    arriving = store.receiving.start(TID, 2, 2 * PL, PL, "")
    pending = asyncio.ensure_future(rust_client_download(port, TID, 2))
    await asyncio.sleep(0.1)
    assert not pending.done()
    put_piece(store, TID, DATA, 2, PL)
    store.receiving.end(arriving, ok=True)
    tag, event, content, rest = await asyncio.wait_for(pending, 10)
    assert tag == Tag.PIECE_CONTENT and isinstance(event, vortex.PieceHeader) and event.digest == crc(content)
    assert content == DATA[2 * PL : 3 * PL] and rest == b""


async def test_damselflys_request_is_an_unknown_tag_with_extensions_off(tmp_path: Path) -> None:
    """wire.extensions false: the server is a plain Vortex server; tag 224 closes the connection
    with no answer, as Dragonfly's does for a tag it does not serve (C:.../server/tcp.rs:447-450)."""
    store = PieceStore(tmp_path)
    server = PieceServer(store, extensions=False)
    port = await server.start("127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(vortex.encode_download_piece(1, TID, 0, Tag.DOWNLOAD_PIECE_TRAILER))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
        await writer.wait_closed()
        await server.close()
        store.close()


async def test_damselflys_pool_pulls_from_a_rust_server(tmp_path: Path) -> None:
    """A parent that did not announce Damselfly's extensions: tag 0, a new connection per piece,
    any packet id, the connection never reused and no Close or second request on it."""
    pieces = {n: (n * PL, DATA[n * PL : (n + 1) * PL]) for n in range(PIECES)}
    out = tmp_path / "child"
    fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o644)
    pool = PieceConnectionPool()
    try:
        async with rust_piece_server(pieces) as (rust, port):
            for n in range(PIECES):
                span = piece_span(n, len(DATA), PL)
                info = await pool.download_piece(
                    "127.0.0.1", port, TID, n, fd, span.offset, span.length, timeout=10, damselfly=False
                )
                assert info.digest == crc(pieces[n][1])
            await pool.close()
            for _ in range(500):  # every connection's end has been seen
                if len(rust.after) == PIECES:
                    break
                await asyncio.sleep(0.01)
        assert os.pread(fd, len(DATA), 0) == DATA
        assert rust.connections == PIECES
        assert rust.requests == [(c, Tag.DOWNLOAD_PIECE) for c in range(1, PIECES + 1)]
        assert rust.after == [b""] * PIECES
    finally:
        os.close(fd)
        await pool.close()


async def test_a_rust_servers_errors_reach_damselfly_as_dragonflys_codes(tmp_path: Path) -> None:
    errors = {1: (Code.INTERNAL, "failed to get piece"), 2: (Code.INVALID_ARGUMENT, "bad"), 3: (4, "?")}
    fd = os.open(tmp_path / "child", os.O_RDWR | os.O_CREAT, 0o644)
    pool = PieceConnectionPool()
    try:
        async with rust_piece_server({}, errors) as (rust, port):
            with pytest.raises(NotFound):
                await pool.download_piece("127.0.0.1", port, TID, 0, fd, 0, PL, timeout=10, damselfly=False)
            for n, what in [(1, "code 3"), (2, "code 1"), (3, "code 4")]:
                # Code 4 is Damselfly's "busy" only from a Damselfly parent: from this one, a failure.
                with pytest.raises(PeerError, match=what) as caught:
                    await pool.download_piece(
                        "127.0.0.1", port, TID, n, fd, n * PL, PL, timeout=10, damselfly=False
                    )
                assert type(caught.value) is PeerError
            assert rust.connections == 4
    finally:
        os.close(fd)
        await pool.close()


async def test_a_rust_server_closing_after_its_piece_is_normal(tmp_path: Path) -> None:
    """One request per connection: the client does not take the close for a failure, and a
    PieceClient used plainly is spent after one piece."""
    fd = os.open(tmp_path / "child", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        async with rust_piece_server({0: (0, DATA[:PL])}) as (_, port):
            client = await PieceClient.connect("127.0.0.1", port)
            try:
                info = await client.download_piece(TID, 0, fd, 0, PL, timeout=10)
                assert info.digest == crc(DATA[:PL]) and client.spent and not client.broken
                with pytest.raises(PeerError, match="no longer usable"):
                    await client.download_piece(TID, 0, fd, 0, PL, timeout=10)
            finally:
                await client.close()
    finally:
        os.close(fd)


async def test_a_damselfly_parent_is_pulled_from_on_pooled_connections(
    parent: tuple[PieceStore, PieceServer, int], tmp_path: Path
) -> None:
    """Between Damselfly peers the extensions stay: Damselfly's request on a kept connection."""
    store, server, port = parent
    for n in range(PIECES):
        put_piece(store, TID, DATA, n, PL)
    fd = os.open(tmp_path / "child", os.O_RDWR | os.O_CREAT, 0o644)
    pool = PieceConnectionPool()
    try:
        for n in range(PIECES):
            span = piece_span(n, len(DATA), PL)
            await pool.download_piece("127.0.0.1", port, TID, n, fd, span.offset, span.length, damselfly=True)
        assert os.pread(fd, len(DATA), 0) == DATA
        assert server.pieces_sent == PIECES and server.active_connections == 1  # one, still open
    finally:
        os.close(fd)
        await pool.close()
