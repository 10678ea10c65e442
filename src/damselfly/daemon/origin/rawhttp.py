"""A minimal HTTP/1.1 GET for plain-HTTP origins: the body lands in one reused buffer.

Back-to-source is the hot path of a cold download: every byte of a new task
passes through it once. aiohttp's client hands the body over as a new
``bytes`` object per socket read (256 KiB at most); measured on this project's
machine, receiving 1 GiB that way cost ~35% more time than ``sock_recv_into``
into one reused 1 MiB buffer with the same crc32 and ``pwrite`` (see
BENCHMARKS.md). This module does just that for the common case: ``http://``,
a response with ``Content-Length`` and no transfer coding. Anything else
(a redirect, a chunked body, TLS) is reported as :class:`Unsupported` before
any body byte is read, and the caller uses aiohttp instead.

One request per connection (``Connection: close``): an origin fetch is one
long transfer, so reuse buys nothing here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from multidict import CIMultiDict

from ...errors import SourceError, SourceUnreachable
from .. import net

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
        while left > 0:
            # One timer moved forward per read (wait_for would make a task per read).
            async with asyncio.timeout(self._timeout):
                n = await loop.sock_recv_into(self._sock, view[: min(left, BUFFER_SIZE)])
            if n == 0:
                return  # the caller sees the short body and says so
            left -= n
            yield view[:n]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


def _request_bytes(host_header: str, target: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host_header}", "Connection: close"]
    for k, v in headers.items():
        if "\r" in k or "\n" in k or "\r" in v or "\n" in v:
            raise SourceError(f"header {k!r} contains a line break")
        lines.append(f"{k}: {v}")
    if not any(k.lower() == "user-agent" for k in headers):
        lines.append("User-Agent: damselfly")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_head(head: bytes) -> tuple[int, str, CIMultiDict[str]]:
    """Status line and headers of a response head (without the blank line)."""
    try:
        text = head.decode("latin-1")
        status_line, _, rest = text.partition("\r\n")
        version, _, tail = status_line.partition(" ")
        code, _, reason = tail.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ValueError(status_line)
        headers: CIMultiDict[str] = CIMultiDict()
        for line in rest.split("\r\n"):
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ValueError(line)
            headers.add(name, value.strip())
        return int(code), reason.strip(), headers
    except ValueError as e:
        raise SourceError(f"the origin sent a malformed response head: {e}") from None


async def get(
    url: str, headers: dict[str, str], *, connect_timeout: float, read_timeout: float
) -> RawResponse:
    """Send a GET and read the head; raise :class:`Unsupported` for what aiohttp must handle."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise Unsupported(parts.scheme)
    host, port = parts.hostname, parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    try:
        addresses = await net.resolve(host, port, timeout=connect_timeout)
    except OSError as e:  # TimeoutError is one
        raise SourceUnreachable(f"cannot resolve the origin {host}: {e}") from e
    try:
        sock = await net.connect_first(addresses, timeout=connect_timeout)
    except OSError as e:
        raise SourceUnreachable(f"cannot connect to the origin {host}:{port}: {e}") from e
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, _request_bytes(host_header, target, headers))
        received = bytearray()
        while (end := received.find(b"\r\n\r\n")) < 0:
            if len(received) > HEAD_LIMIT:
                raise SourceError("the origin's response head is larger than 64 KiB")
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), read_timeout)
            if not chunk:
                raise SourceError(f"the origin closed the connection before answering {url}")
            received += chunk
        status, reason, resp_headers = parse_head(bytes(received[:end]))
        if (
            300 <= status < 400
            or "Transfer-Encoding" in resp_headers
            or (status < 300 and "Content-Length" not in resp_headers)
        ):
            raise Unsupported(f"status {status}")
        if status < 300 and not resp_headers["Content-Length"].isdigit():
            raise SourceError(f"the origin sent Content-Length {resp_headers['Content-Length']!r}")
        if status >= 400:
            resp_headers["Content-Length"] = "0"
        return RawResponse(sock, status, reason, resp_headers, bytes(received[end + 4 :]), read_timeout)
    except BaseException:
        sock.close()
        raise
