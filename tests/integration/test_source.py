"""Back-to-source against real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import re
import socket
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from damselfly.config import SourceConfig
from damselfly.daemon.origin.source import HTTPSource
from damselfly.daemon.store.digesting import InOrderDigest
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.store.receiving import Receiving
from damselfly.domain import PieceInfo, TrafficType
from damselfly.errors import ConfigError, DownloadTimeout, SourceError, SourceStatusError, SourceUnreachable
from damselfly.ids import task_id
from damselfly.pieces import Digest, piece_span
from helpers.wait import until

pytestmark = pytest.mark.integration

PL = 16 * 1024
DATA = bytes((i * 7 + i // 251) & 0xFF for i in range(5 * PL + 321))  # 6 pieces, last one short
TID = task_id("http://origin/file")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


@dataclass
class Origin:
    url: str
    requests: list[dict[str, str]] = field(default_factory=list)
    bytes_served: int = 0


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    state = Origin("")

    async def file(request: web.Request) -> web.StreamResponse:
        state.requests.append(dict(request.headers))
        start, end, status = 0, len(DATA) - 1, 200
        m = _RANGE.fullmatch(request.headers.get("Range", ""))
        if m and "norange" not in request.query:
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(DATA) - 1
            status = 206
        body = DATA[start : end + 1]
        headers = {"X-Origin": "yes", "Content-Type": "application/x-test"}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{len(DATA)}"
        resp = web.StreamResponse(status=status, headers=headers)
        if "chunked" in request.query:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(body)
        await resp.prepare(request)
        for i in range(0, len(body), 5000):  # odd-sized writes, straddling piece boundaries
            await resp.write(body[i : i + 5000])
            state.bytes_served += len(body[i : i + 5000])
        await resp.write_eof()
        return resp

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="nope")

    app = web.Application()
    app.router.add_get("/file", file)
    app.router.add_get("/status/{code}", status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


@pytest.fixture(params=[True, False], ids=["rawhttp", "aiohttp"])
async def source(request: pytest.FixtureRequest) -> AsyncIterator[HTTPSource]:
    # Every case runs on both body paths: they must behave the same.
    src = HTTPSource(SourceConfig(connect_timeout=2, read_timeout=0.5), fast_path=request.param)
    yield src
    await src.close()


@dataclass
class Result:
    length: int
    pieces: list[PieceInfo]
    starts: list[tuple[int | None, dict[str, str]]]


async def fetch(
    source: HTTPSource,
    store: PieceStore,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    have: set[int] | None = None,
    piece_length: int | None = None,
    digest: InOrderDigest | None = None,
) -> Result:
    """Do what the conductor does: size the store in on_start, record each piece."""
    store.create_task(TID)
    pieces: list[PieceInfo] = []
    starts: list[tuple[int | None, dict[str, str]]] = []

    async def on_start(length: int | None, hdrs: dict[str, str]) -> int:
        starts.append((length, hdrs))
        if length is not None:
            store.set_content_length(TID, length, PL, hdrs)
        else:
            store.set_piece_length(TID, PL)
        return PL

    def on_piece(info: PieceInfo) -> None:
        store.finish_piece(TID, info)
        pieces.append(info)

    length = await source.fetch_into(
        url,
        headers or {},
        fd_factory=lambda: store.open_write_fd(TID),
        on_start=on_start,
        on_piece=on_piece,
        have=have or set(),
        piece_length=piece_length,
        digest=digest,
    )
    return Result(length, pieces, starts)


def assert_pieces_right(pieces: list[PieceInfo], numbers: list[int]) -> None:
    assert sorted(p.number for p in pieces) == numbers
    for p in pieces:
        span = piece_span(p.number, len(DATA), PL)
        assert (p.offset, p.length) == (span.offset, span.length)
        assert p.digest == f"crc32:{zlib.crc32(DATA[span.offset : span.offset + span.length])}"
        assert p.traffic_type is TrafficType.BACK_TO_SOURCE and p.cost_s >= 0 and p.parent_id == ""


async def test_fresh_download_is_one_get_byte_exact(
    origin: Origin, source: HTTPSource, tmp_path: Path
) -> None:
    store = PieceStore(tmp_path)
    result = await fetch(source, store, origin.url + "/file", headers={"Authorization": "Bearer s3cret"})
    assert result.length == len(DATA)
    assert_pieces_right(result.pieces, list(range(6)))
    assert [p.number for p in result.pieces] == list(range(6))  # reported in order, as they arrive
    assert store.content_path(TID).read_bytes() == DATA
    assert store.get(TID).is_complete  # type: ignore[union-attr]
    # One fetch of the file; user headers reach the origin; bytes come unencoded.
    assert len(origin.requests) == 1 and origin.bytes_served == len(DATA)
    sent = origin.requests[0]
    assert sent["Authorization"] == "Bearer s3cret"
    assert sent["Accept-Encoding"] == "identity"
    assert "Range" not in sent
    ((length, hdrs),) = result.starts
    assert length == len(DATA)
    assert hdrs["X-Origin"] == "yes" and hdrs["Content-Length"] == str(len(DATA))


async def test_chunked_response(origin: Origin, source: HTTPSource, tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    result = await fetch(source, store, origin.url + "/file?chunked=1")
    assert result.starts[0][0] is None
    assert result.length == len(DATA)
    assert_pieces_right(result.pieces, list(range(6)))
    store.set_content_length(TID, result.length, PL)
    assert store.get(TID).is_complete  # type: ignore[union-attr]
    assert store.content_path(TID).read_bytes() == DATA


async def test_resume_requests_only_missing_runs(origin: Origin, source: HTTPSource, tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    store.create_task(TID)
    store.set_content_length(TID, len(DATA), PL)
    fd = store.open_write_fd(TID)
    for n in (0, 2):
        span = piece_span(n, len(DATA), PL)
        chunk = DATA[span.offset : span.offset + span.length]
        os.pwrite(fd, chunk, span.offset)
        store.finish_piece(TID, PieceInfo(n, span.offset, span.length, f"crc32:{zlib.crc32(chunk)}"))
    os.close(fd)
    result = await fetch(source, store, origin.url + "/file", have={0, 2}, piece_length=PL)
    assert_pieces_right(result.pieces, [1, 3, 4, 5])
    assert store.content_path(TID).read_bytes() == DATA
    assert [r["Range"] for r in origin.requests] == [
        f"bytes={PL}-{2 * PL - 1}",
        f"bytes={3 * PL}-{len(DATA) - 1}",
    ]
    assert origin.bytes_served == len(DATA) - 2 * PL
    assert result.starts[0][0] == len(DATA)
    assert "Content-Range" not in result.starts[0][1]


async def test_resume_when_origin_ignores_range(origin: Origin, source: HTTPSource, tmp_path: Path) -> None:
    store = PieceStore(tmp_path)
    store.create_task(TID)
    store.set_content_length(TID, len(DATA), PL)
    fd = store.open_write_fd(TID)
    os.pwrite(fd, b"\xaa" * PL, PL)  # piece 1 "held" with other bytes: must not be rewritten
    os.close(fd)
    result = await fetch(source, store, origin.url + "/file?norange=1", have={1}, piece_length=PL)
    assert_pieces_right(result.pieces, [0, 2, 3, 4, 5])
    content = store.content_path(TID).read_bytes()
    assert content[PL : 2 * PL] == b"\xaa" * PL
    assert content[:PL] == DATA[:PL] and content[2 * PL :] == DATA[2 * PL :]
    assert len(origin.requests) == 1


@pytest.mark.parametrize("code", [404, 500, 403])
async def test_error_status(origin: Origin, source: HTTPSource, tmp_path: Path, code: int) -> None:
    with pytest.raises(SourceStatusError) as caught:
        await fetch(source, PieceStore(tmp_path), origin.url + f"/status/{code}")
    assert caught.value.status == code and str(code) in str(caught.value)


async def test_connection_refused_is_unreachable(source: HTTPSource, tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(SourceUnreachable):
        await fetch(source, PieceStore(tmp_path), f"http://127.0.0.1:{port}/file")


async def test_tls_failure_is_unreachable(origin: Origin, source: HTTPSource, tmp_path: Path) -> None:
    # TLS to a plain-HTTP port fails the handshake.
    with pytest.raises(SourceUnreachable):
        await fetch(source, PieceStore(tmp_path), origin.url.replace("http://", "https://") + "/file")


# ----------------------------------------------------------------- misbehaving origins (raw TCP)

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_origin() -> AsyncIterator[Callable[[Behaviour], Awaitable[str]]]:
    servers: list[asyncio.Server] = []
    tasks: set[asyncio.Task[None]] = set()

    async def start(behaviour: Behaviour) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                await behaviour(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.get_running_loop().create_task(handle(reader, writer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/file"

    yield start
    for server in servers:
        server.close()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for server in servers:
        await server.wait_closed()


async def test_truncated_body_is_a_source_error(
    raw_origin: Callable[[Behaviour], Awaitable[str]], source: HTTPSource, tmp_path: Path
) -> None:
    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(DATA)}\r\n\r\n".encode())
        writer.write(DATA[: 2 * PL + 10])
        await writer.drain()

    store = PieceStore(tmp_path)
    with pytest.raises(SourceError) as caught:
        await fetch(source, store, await raw_origin(truncated))
    assert not isinstance(caught.value, (SourceStatusError, SourceUnreachable))
    # The two whole pieces that did arrive were recorded; nothing else.
    assert sorted(store.get(TID).pieces) == [0, 1]  # type: ignore[union-attr]


async def test_silent_origin_is_a_download_timeout(
    raw_origin: Callable[[Behaviour], Awaitable[str]], source: HTTPSource, tmp_path: Path
) -> None:
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(DATA)}\r\n\r\n".encode())
        writer.write(DATA[:100])
        await writer.drain()
        await asyncio.sleep(3600)

    with pytest.raises(DownloadTimeout, match="no byte"):
        await fetch(source, PieceStore(tmp_path), await raw_origin(stalls))


async def test_a_cancelled_fetch_stops_writing_before_it_returns(
    raw_origin: Callable[[Behaviour], Awaitable[str]], source: HTTPSource, tmp_path: Path
) -> None:
    # The body lands in a worker thread (rawhttp) or on the loop (aiohttp); either way, once
    # the cancelled fetch has returned, nothing writes into the store's file any more.
    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(DATA)}\r\n\r\n".encode())
        writer.write(DATA[: PL + 100])
        await writer.drain()
        await asyncio.sleep(3600)

    source._config.read_timeout = 60  # the cancel, not the timeout, must end it
    store = PieceStore(tmp_path)
    job = asyncio.ensure_future(fetch(source, store, await raw_origin(stalls)))

    def second_piece_begun() -> bool:  # piece 0 recorded, piece 1's first bytes written: the rest awaited
        meta = store.get(TID)
        if meta is None or not meta.pieces:
            return False
        with open(store.content_path(TID), "rb") as f:
            return os.pread(f.fileno(), 100, PL) == DATA[PL : PL + 100]

    await until(second_piece_begun, "piece 0 landed and piece 1 began")
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(job, 5)
    assert sorted(store.get(TID).pieces) == [0]  # type: ignore[union-attr]


async def test_body_longer_than_a_content_range_is_refused(
    raw_origin: Callable[[Behaviour], Awaitable[str]], source: HTTPSource, tmp_path: Path
) -> None:
    async def wrong_range(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Asked for piece 1 onwards, answers from byte 0.
        writer.write(
            f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-99/{len(DATA)}\r\n"
            "Content-Length: 100\r\n\r\n".encode()
        )
        writer.write(DATA[:100])
        await writer.drain()

    store = PieceStore(tmp_path)
    store.create_task(TID)
    store.set_content_length(TID, len(DATA), PL)
    with pytest.raises(SourceError, match="from 0"):
        await fetch(source, store, await raw_origin(wrong_range), have={0}, piece_length=PL)


# ----------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    ca = "-subj /CN=damselfly-test-CA -addext basicConstraints=critical,CA:TRUE"
    ca += " -addext keyUsage=critical,keyCertSign,cRLSign"
    steps = [
        ["openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", *ca.split()],
        ["openssl", "req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=127.0.0.1"],
        [
            *["openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key"],
            *["-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext.cnf"],
        ],
    ]
    for step in steps:
        subprocess.run(step, cwd=d, check=True, capture_output=True)
    return d


@pytest.fixture
async def tls_origin(certs: Path) -> AsyncIterator[str]:
    async def file(request: web.Request) -> web.Response:
        return web.Response(body=DATA)

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs / "srv.crt", certs / "srv.key")
    app = web.Application()
    app.router.add_get("/file", file)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"https://127.0.0.1:{port}/file"
    await runner.cleanup()


@pytest.mark.parametrize("trust", ["ca_cert", "insecure"])
async def test_https_with_a_trusted_ca_or_insecure(
    tls_origin: str, certs: Path, tmp_path: Path, trust: str
) -> None:
    config = (
        SourceConfig(ca_cert=str(certs / "ca.crt"))
        if trust == "ca_cert"
        else SourceConfig(insecure_skip_verify=True)
    )
    src = HTTPSource(config)
    try:
        store = PieceStore(tmp_path)
        result = await fetch(src, store, tls_origin)
    finally:
        await src.close()
    assert result.length == len(DATA)
    assert store.content_path(TID).read_bytes() == DATA


async def test_https_with_an_unknown_ca_is_unreachable(tls_origin: str, tmp_path: Path) -> None:
    src = HTTPSource(SourceConfig())
    try:
        with pytest.raises(SourceUnreachable, match="certificate"):
            await fetch(src, PieceStore(tmp_path), tls_origin)
    finally:
        await src.close()


async def test_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    src = HTTPSource(SourceConfig(ca_cert=str(tmp_path / "nope.pem")))
    try:
        with pytest.raises(ConfigError, match="caCert"):
            await fetch(src, PieceStore(tmp_path), "https://127.0.0.1:1/file")
    finally:
        await src.close()


# ----------------------------------------------------------------- parallel byte ranges


@pytest.fixture(params=[True, False], ids=["rawhttp", "aiohttp"])
async def split_source(request: pytest.FixtureRequest) -> AsyncIterator[HTTPSource]:
    config = SourceConfig(connect_timeout=2, read_timeout=0.5, range_streams=3)
    src = HTTPSource(config, fast_path=request.param)
    yield src
    await src.close()


@pytest.mark.parametrize("probe", [PL, PL // 2 + 123], ids=["probe-one-piece", "probe-mid-piece"])
async def test_split_download_fetches_each_byte_once(
    origin: Origin, split_source: HTTPSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, probe: int
) -> None:
    from damselfly.daemon.origin import ranges as planning

    monkeypatch.setattr(planning, "PROBE_BYTES", probe)
    monkeypatch.setattr(planning, "MIN_PIECES_PER_STREAM", 1)
    store = PieceStore(tmp_path)
    result = await fetch(split_source, store, origin.url + "/file")
    assert result.length == len(DATA) and len(result.starts) == 1
    assert_pieces_right(result.pieces, list(range(6)))
    assert store.content_path(TID).read_bytes() == DATA
    # A probe for the first bytes, then the rest in three ranges: every byte served once.
    assert origin.bytes_served == len(DATA)
    ranges = [r["Range"] for r in origin.requests]
    assert ranges[0] == f"bytes=0-{probe - 1}" and len(ranges) == 4
    spans = sorted(tuple(int(x) for x in r.removeprefix("bytes=").split("-")) for r in ranges)
    assert spans[0][0] == 0 and spans[-1][1] == len(DATA) - 1
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(spans))  # contiguous, no overlap


@pytest.mark.parametrize("streams", [1, 3])
async def test_the_body_feeds_the_content_digest_in_order(
    origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streams: int
) -> None:
    from damselfly.daemon.origin import ranges as planning

    monkeypatch.setattr(planning, "PROBE_BYTES", PL)
    monkeypatch.setattr(planning, "MIN_PIECES_PER_STREAM", 1)
    src = HTTPSource(SourceConfig(connect_timeout=2, read_timeout=0.5, range_streams=streams))
    store = PieceStore(tmp_path)
    store.create_task(TID)
    digester = InOrderDigest(store, TID, Digest("sha256", hashlib.sha256(DATA).hexdigest()))
    try:
        await fetch(src, store, origin.url + "/file", digest=digester)
        await asyncio.wait_for(digester.check("content"), 5.0)
    finally:
        await digester.close()
        await src.close()
    if streams == 1:
        assert digester.fed == len(DATA)  # one body in order: nothing read back
    else:
        # Ranges land side by side: the first feeds, what lands out of order is read back.
        assert digester.fed >= PL


async def test_split_download_falls_back_when_the_origin_ignores_range(
    origin: Origin, split_source: HTTPSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from damselfly.daemon.origin import ranges as planning

    monkeypatch.setattr(planning, "PROBE_BYTES", PL)
    store = PieceStore(tmp_path)
    result = await fetch(split_source, store, origin.url + "/file?norange=1")
    assert_pieces_right(result.pieces, list(range(6)))
    assert store.content_path(TID).read_bytes() == DATA
    assert len(origin.requests) == 1 and origin.bytes_served == len(DATA)


async def test_pieces_are_announced_as_they_land(origin: Origin, source: HTTPSource, tmp_path: Path) -> None:
    """on_piece_start: each piece's bytes are counted as they are written, before its digest
    is known (the seed serves them on at once, daemon/store/receiving.py)."""
    store = PieceStore(tmp_path)
    store.create_task(TID)
    events: list[tuple[str, int, int]] = []  # (what, piece, bytes counted so far)

    class Counting(Receiving):
        def advance(self, written: int) -> None:
            events.append(("advance", self.number, written))
            self.written = written

    landing: dict[int, Counting] = {}

    def on_piece_start(number: int, offset: int, length: int) -> Receiving:
        span = piece_span(number, len(DATA), PL)
        assert (offset, length) == (span.offset, span.length)
        landing[number] = Counting(TID, number, offset, length, "")
        return landing[number]

    async def on_start(length: int | None, hdrs: dict[str, str]) -> int:
        assert length is not None
        store.set_content_length(TID, length, PL, hdrs)
        return PL

    def on_piece(info: PieceInfo) -> None:
        events.append(("done", info.number, landing[info.number].written))
        store.finish_piece(TID, info)

    await source.fetch_into(
        origin.url + "/file",
        {},
        fd_factory=lambda: store.open_write_fd(TID),
        on_start=on_start,
        on_piece=on_piece,
        on_piece_start=on_piece_start,
    )
    assert sorted(landing) == list(range(6))
    for n in range(6):
        mine = [(what, written) for what, number, written in events if number == n]
        counts = [written for what, written in mine if what == "advance"]
        # Counted as the bytes landed, growing, whole before the piece was reported done.
        assert counts and counts == sorted(counts) and counts[-1] == landing[n].length
        assert mine[-1] == ("done", landing[n].length)
    assert store.content_path(TID).read_bytes() == DATA
