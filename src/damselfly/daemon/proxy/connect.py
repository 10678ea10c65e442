"""CONNECT on the proxy port: TLS interception for hijacked hosts, plain tunnels for allowed ones.

The listener's first request head on a connection is sniffed (:class:`Sniffer`):
a CONNECT is handled here on the raw transport, anything else hands the
connection to aiohttp's HTTP protocol. Interception answers ``200``, runs the
TLS handshake with a leaf certificate for the host (signed by the proxy's CA),
then hands the decrypted connection to the same HTTP protocol (through another
Sniffer), remembering the host so requests inside go to ``https://host``. A head
not complete within ``proxy.server.headTimeout`` closes the connection; later
heads on a kept-alive connection are bounded by aiohttp's keep-alive timeout,
set to the same. Owner of the spawned handlers:
the :class:`~damselfly.daemon.proxy.proxy.ProxyServer`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ...errors import DamselflyError, InvalidArgument
from .headers import ERROR_BACKEND, ERROR_PROXY, ERROR_TYPE

if TYPE_CHECKING:
    from .proxy import ProxyServer

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024


def _split_hostport(authority: str, default_port: int) -> tuple[str, int]:
    try:
        parts = urlsplit(f"//{authority}")
        host, port = parts.hostname, parts.port  # port: ValueError when not a number in range
    except ValueError:
        host = None
    if not host:
        raise InvalidArgument(f"bad authority {authority!r}")
    return host, port or default_port


class ConnectHandler:
    """Carries out CONNECT requests for one :class:`ProxyServer`."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server

    async def handle(self, transport: asyncio.Transport, authority: str, early: bytes) -> None:
        try:
            host, port = _split_hostport(authority, 443)
        except InvalidArgument:
            refuse(transport, 400, "bad CONNECT target")
            return
        if self.server.is_hijacked(host) or self.server.is_hijacked(f"{host}:{port}"):
            self.server.metrics.request("connect", 200)
            if early:
                refuse(transport, 400, "data before the tunnel was established")
                return
            await self.intercept(transport, host, port)
        elif self.server.may_reach(host, port):
            self.server.metrics.request("tunnel", 200)
            await self.tunnel(transport, host, port, early)
        else:
            self.server.metrics.request("refused", 403)
            log.info("refused CONNECT to %s:%d (not a registry, hijacked or allowed host)", host, port)
            refuse(transport, 403, f"this proxy does not tunnel to {host}:{port}")

    async def intercept(self, transport: asyncio.Transport, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            # The CA too may be made here (first interception): off the event loop.
            ctx = await asyncio.to_thread(lambda: self.server.ca.server_context(host))
            holder = _Holder()
            transport.set_protocol(holder)
            transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            tls = await loop.start_tls(transport, holder, ctx, server_side=True, ssl_handshake_timeout=15)
        except (OSError, ConnectionError, TimeoutError, DamselflyError) as e:
            log.info("TLS interception of %s failed: %s", host, e)
            transport.abort()
            return
        if tls is None:
            transport.abort()
            return
        self.server.tunnel_hosts[tls] = host if port == 443 else f"{host}:{port}"
        # The first request inside the tunnel is sniffed too: its head has the same deadline.
        sniffer = Sniffer(self.server, tunnel=True)
        tls.set_protocol(sniffer)
        sniffer.connection_made(tls)
        holder.hand_over(sniffer)

    async def tunnel(self, transport: asyncio.Transport, host: str, port: int, early: bytes) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        proto = asyncio.StreamReaderProtocol(reader)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        writer = asyncio.StreamWriter(transport, proto, reader, loop)
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        except (OSError, TimeoutError) as e:
            refuse(transport, 502, f"cannot reach {host}:{port}: {e}")
            return
        transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        transport.resume_reading()
        if early:
            up_writer.write(early)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, ConnectionError):
        writer.close()


class Sniffer(asyncio.Protocol):
    """Reads a connection's first request head, then hands the connection on.

    ``tunnel``: the decrypted connection of an intercepted CONNECT, where another CONNECT
    is refused. A head not complete within the proxy's head timeout closes the connection.
    """

    def __init__(self, owner: ProxyServer, *, tunnel: bool = False) -> None:
        self.owner = owner
        self.tunnel = tunnel
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self.timed_out = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        timeout = self.owner.config.server.head_timeout
        self._deadline = asyncio.get_running_loop().call_later(timeout, self._too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()

    def _head_done(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self.timed_out = True
        self.owner.metrics.request("head-timeout", 408)
        log.info("closing a proxy connection: no complete request head within %gs (%d bytes)",
                 self.owner.config.server.head_timeout, len(self.buf))  # fmt: skip
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        self.buf += data
        if not self.buf[:1].isalpha():
            # A TLS ClientHello (clients that try https first, like skopeo with an
            # insecure mirror) or garbage: close at once so the client falls back.
            self._head_done()
            transport.abort()
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._head_done()
                refuse(transport, 431, "request head too large")
            return
        self._head_done()
        line = bytes(self.buf[: self.buf.find(b"\r\n")]).split(b" ")
        if line[0] == b"CONNECT" and self.tunnel:
            refuse(transport, 400, "CONNECT inside a tunnel")
            return
        if line[0] == b"CONNECT" and len(line) == 3:
            transport.pause_reading()
            early = bytes(self.buf[end + 4 :])
            self.owner.spawn(self.owner.connect.handle(transport, line[1].decode("latin-1"), early))
            return
        proto = self.owner.http_protocol()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(bytes(self.buf))


class _Holder(asyncio.Protocol):
    """Keeps decrypted bytes that arrive before the HTTP protocol takes the connection."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.closed = False

    def data_received(self, data: bytes) -> None:
        self.buf += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def hand_over(self, proto: asyncio.Protocol) -> None:
        if self.buf:
            proto.data_received(bytes(self.buf))
            self.buf.clear()


def refuse(transport: asyncio.Transport, status: int, reason: str) -> None:
    body = reason.encode() + b"\n"
    # Who failed, as Dragonfly's proxy says it: the tunnel's far end (502), else the proxy.
    kind = ERROR_BACKEND if status == 502 else ERROR_PROXY
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: text/plain\r\n"
        f"{ERROR_TYPE}: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    transport.write(head + body)
    transport.close()


_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
}
