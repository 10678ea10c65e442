"""TLS over the piece client's bare socket (Vortex over TLS, docs/TLS.md).

The piece client (:mod:`.piece_client`) receives into one reused buffer with
``sock_recv_into`` on the event loop (bodies over TLS too: see
``piece_client.THREADED_BODY``); asyncio streams and ``loop.sock_*`` do not take
an ``ssl.SSLSocket``.
So TLS here is an :class:`ssl.SSLObject` over two memory BIOs: ciphertext is
read from the socket into a reused buffer and fed in, plaintext comes out
straight into the caller's buffer (as many records as are in hand per call,
so a body lands in large writes), and whatever the session has to send goes
out on the socket, all from the event loop (:meth:`TLSSession.recv_into`,
:meth:`sendall`).

A piece body is received in steps (:meth:`TLSSession.receive_body`), as the
plain path's :func:`.landing.receive_blocking` does in a thread: ``SO_RCVLOWAT``
keeps the event loop from waking until a step of the parent's pace has
arrived, so each wake-up decrypts several records instead of one packet's
worth. The mark never asks for more than the body still has on the wire (its
plaintext left, less the ciphertext the session holds), and a timer wakes the
reader anyway after :data:`STEP_WAIT_MAX_S`, so no step can wait for bytes that
are not coming: at worst it lands late.

EOF: a ``close_notify`` or a connection closed without one both read as 0
bytes (the piece client words it); any other TLS error is an
:class:`ssl.SSLError`, an ``OSError``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable

from .landing import STEP_WAIT_MAX_S, Landing, LowWater, Pace, stepped_recv

_RAW_BUFFER = 256 * 1024
__all__ = ["STEP_WAIT_MAX_S", "TLSSession"]


class TLSSession:
    """A client TLS session over the non-blocking ``sock``; owner: the piece client that made it."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext, server_hostname: str) -> None:
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(
            self._in, self._out, server_side=False, server_hostname=server_hostname
        )
        self._raw = memoryview(bytearray(_RAW_BUFFER))
        # read(n, buffer) fills any writable buffer and returns a count (typeshed says bytes).
        self._read: Callable[[int, memoryview], int] = self.ssl_object.read  # type: ignore[assignment]

    async def handshake(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                self.ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush(loop)
                if not await self._fill(loop):
                    raise ConnectionResetError(
                        "the parent closed the connection during the TLS handshake"
                    ) from None
                continue
            break
        await self._flush(loop)

    def _read_in_hand(self, view: memoryview) -> int | None:
        """Plaintext already decryptable into ``view``: a count, 0 at EOF, None when more is needed."""
        got = 0
        while got < len(view):
            try:
                n = self._read(len(view) - got, view[got:])
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return got
            if n == 0:
                return got
            got += n
        return got or None

    async def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._out.pending:
            await loop.sock_sendall(self.sock, self._out.read())

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> bool:
        n = await loop.sock_recv_into(self.sock, self._raw)
        return self._feed(n)

    def _feed(self, n: int) -> bool:
        if n == 0:
            self._in.write_eof()
            return False
        self._in.write(self._raw[:n])
        return True

    async def recv_into(self, view: memoryview) -> int:
        """Like ``loop.sock_recv_into``: at least one byte of plaintext into ``view``, or 0 at EOF."""
        loop = asyncio.get_running_loop()
        while True:
            got = self._read_in_hand(view)
            await self._flush(loop)  # a session ticket or key update answer, say
            if got is not None:
                return got
            if not await self._fill(loop):
                return self._read_in_hand(view) or 0

    async def sendall(self, data: bytes) -> None:
        self.ssl_object.write(data)
        await self._flush(asyncio.get_running_loop())

    async def receive_body(self, body: Landing, pace: Pace, got: Callable[[int], int]) -> None:
        """Receive ``body`` whole, decrypted, in steps of ``pace``; ``got(n)`` vets each count
        of plaintext landed (it raises on a closed connection, and notes progress)."""
        loop = asyncio.get_running_loop()
        low = LowWater(self.sock)
        try:
            while body.pos < body.end:
                n = self._read_in_hand(body.room())
                if self._out.pending:
                    await self._flush(loop)
                if n is not None:
                    body.land(got(n))
                    continue
                # Nothing decryptable: wait for a step of ciphertext, never for more than the
                # body can still send (its plaintext left, less what the session holds).
                low.set(max(1, min(pace.low_water(), body.end - body.pos - self._in.pending)))
                began = time.monotonic()
                raw = await stepped_recv(loop, self.sock, self._raw)
                if raw is None:
                    continue  # the timer woke us and nothing had come: wait again
                if not self._feed(raw):
                    body.land(got(self._read_in_hand(body.room()) or 0))
                    continue
                if raw >= low.mark > 1:
                    pace.note(raw, time.monotonic() - began)
        finally:
            low.reset()

    def send_nowait(self, data: bytes) -> None:
        """Best effort, without waiting (a Close frame before the socket is closed)."""
        self.ssl_object.write(data)
        self.sock.send(self._out.read())
