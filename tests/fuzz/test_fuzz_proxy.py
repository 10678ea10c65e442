"""The proxy's request-head handling and mirror parsing (daemon/proxy/) on arbitrary input: a
decision or a clear refusal (InvalidArgument, an HTTP error answer), never another exception.

The Sniffer, which reads each connection's first request head, runs against an in-memory
transport here (the real-socket behaviour is in tests/unit/proxy/); the parsers are plain functions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from damselfly.daemon.proxy import connect, headers, mirror
from damselfly.errors import InvalidArgument

from . import TIMEOUT

pytestmark = pytest.mark.timeout(TIMEOUT)


class Transport(asyncio.Transport):
    """Records what the Sniffer does to the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = self.aborted = self.paused = False
        self.protocol: Any = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return self.closed or self.aborted


class HTTPProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data


class Owner:
    """What a Sniffer asks of its ProxyServer."""

    def __init__(self) -> None:
        self.spawned: list[Any] = []
        self.handed: list[HTTPProtocol] = []
        self.config = type("C", (), {"server": type("S", (), {"head_timeout": 10.0})()})()
        self.metrics = type("M", (), {"request": lambda *_: None})()
        self.connect = self

    def handle(self, transport: Any, authority: str, early: bytes) -> tuple[str, bytes]:
        return authority, early  # what CONNECT would be handled with (not run here)

    def spawn(self, job: Any) -> None:
        self.spawned.append(job)

    def http_protocol(self) -> HTTPProtocol:
        self.handed.append(HTTPProtocol())
        return self.handed[-1]


heads = st.one_of(
    st.binary(max_size=2048),
    st.builds(
        lambda method, target, rest: method + b" " + target + b" HTTP/1.1\r\n" + rest,
        st.sampled_from([b"GET", b"HEAD", b"CONNECT", b"DELETE", b"G", b"connect"]),
        st.binary(max_size=200),
        st.binary(max_size=400),
    ),
)


@given(st.lists(heads, min_size=1, max_size=4), st.booleans())
def test_the_sniffer_decides_once_on_any_bytes(chunks: list[bytes], tunnel: bool) -> None:
    async def run() -> None:
        owner = Owner()
        transport = Transport()
        sniffer = connect.Sniffer(owner, tunnel=tunnel)  # type: ignore[arg-type]
        sniffer.connection_made(transport)
        try:
            for chunk in chunks:
                if transport.is_closing() or owner.spawned or owner.handed:
                    break  # the connection is no longer the sniffer's
                sniffer.data_received(chunk)
        finally:
            sniffer.connection_lost(None)
        outcomes = [bool(owner.spawned), bool(owner.handed), transport.is_closing()]
        assert sum(outcomes) <= 1, outcomes  # one of: a CONNECT, HTTP, closed (or still waiting)
        if owner.spawned:
            assert not tunnel  # no CONNECT inside a tunnel
            authority, _ = owner.spawned[0]
            assert isinstance(authority, str)
        if transport.written:
            assert transport.written.startswith(b"HTTP/1.1 4")  # refusals only, 400 or 431
        if sum(outcomes) == 0:
            assert len(sniffer.buf) <= connect.MAX_HEAD + 2048 and b"\r\n\r\n" not in sniffer.buf

    asyncio.run(run())


@given(st.text(max_size=200))
def test_connect_authority_is_split_or_refused(authority: str) -> None:
    try:
        host, port = connect._split_hostport(authority, 443)
    except InvalidArgument:
        return
    assert host and 0 <= port <= 65535


@given(st.dictionaries(st.sampled_from([*headers.IGNORED, headers.TAG, headers.PRIORITY, headers.PIECE_LENGTH,
                                        headers.FILTERED_QUERY_PARAMS, headers.USE_P2P, headers.PREFETCH,
                                        "Other"]),
                       st.text(max_size=80), max_size=8))  # fmt: skip
def test_dragonfly_request_headers_read_or_refuse(values: dict[str, str]) -> None:
    asked = headers.read(CIMultiDict(values))
    try:
        asked.check()
    except InvalidArgument as e:
        assert "Piece-Length" in str(e)
        return
    assert asked.piece_length is None or 4 << 20 <= asked.piece_length <= 64 << 20


@given(st.text(max_size=100))
def test_bytesize_parses_or_says_none(value: str) -> None:
    size = headers.parse_bytesize(value)
    assert size is None or 0 <= size <= 2**64 - 1


@given(st.text(max_size=120))
def test_a_registry_name_is_normalized_or_refused(value: str) -> None:
    try:
        url = mirror.normalize_registry(value)
    except InvalidArgument:
        return
    assert url.startswith(("http://", "https://")) and "/" not in url.split("://", 1)[1]


@given(
    st.dictionaries(st.sampled_from([mirror.REGISTRY_HEADER, "Other"]), st.text(max_size=60), max_size=2),
    st.text(max_size=120),
    st.text(max_size=200),
)
def test_a_mirror_request_has_one_upstream_or_is_refused(
    headers_: dict[str, str], query: str, path: str
) -> None:
    try:
        base = mirror.upstream_for(CIMultiDict(headers_), query, "https://registry.example.com")
    except InvalidArgument:
        return
    url = mirror.upstream_url(base, "/v2/" + path, query)
    assert url.startswith(base)
    mirror.blob_digest("/v2/" + path)


@given(st.text(max_size=120), st.text(max_size=60), st.binary(max_size=300))
def test_a_manifest_body_gives_a_blob_order_or_none(url: str, content_type: str, body: bytes) -> None:
    try:
        mirror.blob_order(url, content_type, body)
    except ValueError as e:  # urlsplit's "Invalid IPv6 URL": the URL is the proxy's own, never a client's
        assert "IPv6" in str(e)
