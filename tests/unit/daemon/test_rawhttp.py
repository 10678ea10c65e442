import asyncio

import pytest

from damselfly.daemon.origin import rawhttp
from damselfly.errors import SourceError, SourceUnreachable


def test_parse_head():
    status, reason, headers = rawhttp.parse_head(
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nX-A: 1\r\nx-a: 2"
    )
    assert (status, reason) == (206, "Partial Content")
    assert headers["content-length"] == "10" and headers.getall("X-A") == ["1", "2"]
    for bad in [
        b"HTTX/1.1 200 OK",
        b"HTTP/1.1 abc OK",
        b"HTTP/1.1 200 OK\r\nno colon here",
        b"HTTP/1.1 200 OK\r\n X: y",
    ]:
        with pytest.raises(SourceError):
            rawhttp.parse_head(bad)


def test_request_refuses_header_injection():
    with pytest.raises(SourceError, match="line break"):
        rawhttp._request_bytes("h", "/", {"X-Evil": "a\r\nHost: other"})
    req = rawhttp._request_bytes("h:8", "/p?q=1", {"Range": "bytes=0-1"})
    assert req.startswith(b"GET /p?q=1 HTTP/1.1\r\nHost: h:8\r\n") and req.endswith(b"\r\n\r\n")


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
    ],
    ids=["redirect", "chunked", "no-length"],
)
async def test_what_needs_a_full_client_is_handed_over(response):
    server, port = await serve_once(response)
    async with server:
        with pytest.raises(rawhttp.Unsupported):
            await rawhttp.get(f"http://127.0.0.1:{port}/f", {}, connect_timeout=2, read_timeout=2)


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
