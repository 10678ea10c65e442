"""A minimal HTTP/1.1 GET for plain-HTTP origins: the body lands in one reused buffer.

Back-to-source is the hot path of a cold download: every byte of a new task
passes through it once. aiohttp's client hands the body over as a new
``bytes`` object per socket read (256 KiB at most); measured on this project's
machine, receiving 1 GiB that way cost ~35% more time than ``sock_recv_into``
into one reused 1 MiB buffer with the same crc32 and ``pwrite`` (see
BENCHMARKS.md). This module does just that for the common case: ``http://``,
a response with ``Content-Length`` and no transfer coding. Anything else
(a redirect, a chunked body, a 1xx, TLS) is reported as :class:`Unsupported`
before any body byte is read, and the caller uses aiohttp instead.

The request and the response head are ``h11``'s (it validates the status
line, header names and values, and ``Content-Length``); only the body bypasses
it. Measured before adopting it, A/B alternating on the shared two-core machine
(load 2-5, so noisy): parsing a head costs 46 µs with h11 vs 5 µs hand-written
(medians of 8 rounds of 20,000), once per request; 1 GiB through
``HTTPSource.fetch_into`` from a loopback sendfile origin into tmpfs, 16 pulls
each: median 0.92 s with h11 vs 1.25 s hand-written, fastest 0.740 vs 0.729 s;
``benchmarks/cold_dfget.py --size 256MiB --runs 3``, three runs each: cold
dfget median 0.76 vs 0.73 s (curl 0.64 vs 0.60 s); importing
``damselfly.daemon.app`` 499 vs 515 ms. Equal within the noise, so the library.

The body is read in steps of the origin's pace (``SO_RCVLOWAT``, as piece bodies
land: :mod:`..transfer.landing`), so a slow origin wakes the loop once per ~10 ms
of its bytes rather than once per packet or two: the seed of an 8 x 100 mbit
swarm spent more CPU on its origin stream than a peer on its parent's.

One request per connection (``Connection: close``): an origin fetch is one
long transfer, so reuse buys nothing here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import h11
from multidict import CIMultiDict

from ...errors import SourceError, SourceUnreachable
from .. import net
from ..transfer.landing import LowWater, Pace, stepped_recv

HEAD_LIMIT = 64 * 1024
BUFFER_SIZE = 1024 * 1024


class Unsupported(Exception):
    """The response needs a full HTTP client (redirect, chunked body, no length)."""


class RawResponse:
    """Status, headers and a body iterator, shaped like the parts of aiohttp's response we use."""

    def __init__(
        self,
        sock: socket.socket,
        status: int,
        reason: str,
        headers: CIMultiDict[str],
        first: bytes,
        read_timeout: float,
    ) -> None:
        self._sock = sock
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content_length: int | None = int(headers["Content-Length"])
        self._first = first
        self._timeout = read_timeout
        self.content = self  # aiohttp style: resp.content.iter_any()

    async def iter_any(self) -> AsyncIterator[memoryview]:
        """Body bytes as views of one reused buffer: each is valid until the next is asked for."""
        assert self.content_length is not None
        left = self.content_length
        if self._first:
            head = memoryview(self._first)[:left]
            left -= len(head)
            yield head
        loop = asyncio.get_running_loop()
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        pace, low = Pace(), LowWater(self._sock)
        while left > 0:
            # In steps of the origin's pace, as piece bodies land: the kernel wakes us once a
            # step's worth is here (or the step's timer ran out), not once per packet.
            low.set(max(1, min(pace.low_water(), left)))
            room = view[: min(left, BUFFER_SIZE)]
            began = loop.time()
            async with asyncio.timeout(self._timeout):  # nothing at all came for the read timeout
                while (n := await stepped_recv(loop, self._sock, room)) is None:
                    pass
            if n == 0:
                return  # the caller sees the short body and says so
            if n >= low.mark > 1:
                pace.note(n, loop.time() - began)
            left -= n
            yield view[:n]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


def _request(host_header: str, target: str, headers: dict[str, str]) -> h11.Request:
    if not (target.isascii() and target.isprintable()) or " " in target:
        raise Unsupported("a URL path that needs quoting")  # aiohttp quotes it
    fields = [("Host", host_header), ("Connection", "close"), *headers.items()]
    if not any(k.lower() == "user-agent" for k in headers):
        fields.append(("User-Agent", "damselfly"))
    try:
        encoded = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in fields]
        return h11.Request(method=b"GET", target=target.encode("ascii"), headers=encoded)
    except (UnicodeEncodeError, h11.LocalProtocolError) as e:  # a line break in a header, say
        raise SourceError(f"cannot send the request to the origin: {e}") from None


def needs_full_client(status: int, headers: CIMultiDict[str]) -> bool:
    """Whether the answer is one this module leaves to aiohttp: a redirect, a transfer
    coding, or a success whose body has no length."""
    return (
        300 <= status < 400
        or "Transfer-Encoding" in headers
        or (status < 300 and "Content-Length" not in headers)
    )


async def _read_head(
    sock: socket.socket, conn: h11.Connection, url: str, read_timeout: float
) -> h11.Response:
    loop = asyncio.get_running_loop()
    try:
        while (event := conn.next_event()) is h11.NEED_DATA:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), read_timeout)
            if not chunk:
                raise SourceError(f"the origin closed the connection before answering {url}")
            conn.receive_data(chunk)
    except h11.RemoteProtocolError as e:
        if e.error_status_hint == 431:
            raise SourceError("the origin's response head is larger than 64 KiB") from None
        raise SourceError(f"the origin sent a malformed response head: {e}") from None
    if not isinstance(event, h11.Response):
        raise Unsupported(type(event).__name__)  # an informational (1xx) answer
    return event


async def get(
    url: str, headers: dict[str, str], *, connect_timeout: float, read_timeout: float
) -> RawResponse:
    """Send a GET and read the head; raise :class:`Unsupported` for what aiohttp must handle."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise Unsupported(parts.scheme)
    host, port = parts.hostname, parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_LIMIT)
    request = conn.send(_request(parts.netloc.rpartition("@")[2], target, headers))
    try:
        addresses = await net.resolve(host, port, timeout=connect_timeout)
    except OSError as e:  # TimeoutError is one
        raise SourceUnreachable(f"cannot resolve the origin {host}: {e}") from e
    try:
        sock = await net.connect_first(addresses, timeout=connect_timeout)
    except OSError as e:
        raise SourceUnreachable(f"cannot connect to the origin {host}:{port}: {e}") from e
    try:
        await asyncio.get_running_loop().sock_sendall(sock, request)
        head = await _read_head(sock, conn, url, read_timeout)
        status = head.status_code
        resp_headers: CIMultiDict[str] = CIMultiDict(
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers.raw_items()
        )
        if needs_full_client(status, resp_headers):
            raise Unsupported(f"status {status}")
        if status >= 400:
            resp_headers["Content-Length"] = "0"
        first = conn.trailing_data[0]  # body bytes that came with the head
        return RawResponse(sock, status, head.reason.decode("latin-1"), resp_headers, first, read_timeout)
    except BaseException:
        sock.close()
        raise
