import asyncio

import h11
import pytest
from multidict import CIMultiDict

from damselfly.daemon.origin import rawhttp
from damselfly.errors import SourceError, SourceUnreachable


def test_request_refuses_header_injection():
    with pytest.raises(SourceError, match="cannot send"):
        rawhttp._request("h", "/", {"X-Evil": "a\r\nHost: other"})
    req = h11.Connection(h11.CLIENT).send(rawhttp._request("h:8", "/p?q=1", {"Range": "bytes=0-1"}))
    assert req is not None
    assert req.startswith(b"GET /p?q=1 HTTP/1.1\r\nHost: h:8\r\n") and req.endswith(b"\r\n\r\n")
    assert b"\r\nRange: bytes=0-1\r\n" in req and b"\r\nUser-Agent: damselfly\r\n" in req


def test_a_path_that_needs_quoting_is_handed_over():
    for target in ["/a b", "/caf\u00e9"]:
        with pytest.raises(rawhttp.Unsupported):
            rawhttp._request("h", target, {})


def test_what_needs_a_full_client():
    length = CIMultiDict({"Content-Length": "3"})
    assert not rawhttp.needs_full_client(200, length)
    assert not rawhttp.needs_full_client(404, CIMultiDict())  # an error's body is not read
    assert rawhttp.needs_full_client(200, CIMultiDict())  # no length: read to the close
    assert rawhttp.needs_full_client(302, length)
    assert rawhttp.needs_full_client(200, CIMultiDict({"Transfer-Encoding": "chunked"}))


async def serve_once(response: bytes) -> tuple[asyncio.base_events.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nabc",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
    ],
    ids=["redirect", "chunked", "no-length", "informational"],
)
async def test_what_needs_a_full_client_is_handed_over(response):
    server, port = await serve_once(response)
    async with server:
        with pytest.raises(rawhttp.Unsupported):
            await rawhttp.get(f"http://127.0.0.1:{port}/f", {}, connect_timeout=2, read_timeout=2)


@pytest.mark.parametrize(
    "response",
    [
        b"HTTX/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n X: y\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (2 * rawhttp.HEAD_LIMIT) + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Le",  # closed mid-head
    ],
    ids=["version", "status", "no-colon", "fold-first", "length", "two-lengths", "too-large", "cut"],
)
async def test_a_malformed_head_is_a_source_error(response):
    server, port = await serve_once(response)
    async with server:
        with pytest.raises(SourceError):
            await rawhttp.get(f"http://127.0.0.1:{port}/f", {}, connect_timeout=2, read_timeout=2)


async def test_head_fields_keep_their_case_and_repeats():
    head = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 3\r\nX-A: 1\r\nx-a: 2\r\n\r\nabc"
    server, port = await serve_once(head)
    async with server:
        resp = await rawhttp.get(f"http://127.0.0.1:{port}/f", {}, connect_timeout=2, read_timeout=2)
        resp.close()
    assert (resp.status, resp.reason, resp.content_length) == (206, "Partial Content", 3)
    assert resp.headers.getall("x-a") == ["1", "2"] and "X-A" in list(resp.headers.keys())


async def test_body_arrives_whole():
    body = bytes(range(256)) * 5000
    server, port = await serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    async with server:
        resp = await rawhttp.get(f"http://127.0.0.1:{port}/f", {}, connect_timeout=2, read_timeout=2)
        got = bytearray()
        async for view in resp.content.iter_any():
            got += view
        resp.close()
    assert resp.status == 200 and bytes(got) == body


async def test_unreachable():
    with pytest.raises(SourceUnreachable):
        await rawhttp.get("http://127.0.0.1:9/f", {}, connect_timeout=2, read_timeout=2)
