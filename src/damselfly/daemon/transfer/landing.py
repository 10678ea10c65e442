"""Where a piece body's bytes go as they arrive from a parent, and how often we wake for them.

Every byte a peer receives passes here once: from the socket with ``recv_into``
into one reused buffer, then ``os.pwrite`` to the piece's offset in the task's
content file, its crc32 computed while the bytes are in hand, the task's
whole-content digest fed when this piece is the next it needs, and the
cut-through count advanced (after the write, so what it counts is on disk).

The CPU this costs is mostly per *step*, not per byte: each wake-up runs a few
Python calls whatever its size. Over a link slower than the reader a plain
blocking ``recv`` returns whatever came since the last wake-up, a packet or a
few, so :func:`receive_blocking` sets ``SO_RCVLOWAT`` and the kernel wakes
the reader only once a step's worth is there: what this parent sends in
:data:`RECV_STEP_S` at its measured pace (:class:`Pace`), within
``RECV_LOW_WATER_MIN`` .. ``RECV_LOW_WATER`` and never more than the piece has
left. Short in time on purpose: children streaming the piece from us see its
bytes in those steps (a fixed 128 KiB step, 42 ms per hop at 25 mbit/s, took
16 x 25 mbit from max 1.17 to 1.24 x T_min; the pace-following one did not
lose time). Measured, A/B medians of 3: peers' CPU-s on 4 x 100 mbit 6.05 ->
4.01, on 16 x 25 mbit 21.9 -> 17.2 (benchmarks/ab_trees.py).

Owner: :class:`~damselfly.daemon.transfer.piece_client.PieceClient` makes one
:class:`Landing` per piece and one :class:`Pace` per connection.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import socket
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ...checksum import crc32
from ...errors import StorageError
from ...units import MiB
from ..store.digesting import Feed
from ..store.files import pwrite_all, reserve
from ..store.receiving import Receiving

RECV_BUFFER_SIZE = 1 * MiB
RECV_STEP_S = 0.01
RECV_LOW_WATER = 128 * 1024
RECV_LOW_WATER_MIN = 16 * 1024
# The longest a stepped read on the event loop waits for its mark before reading what is
# there: a few steps of the pace, short enough that a wrong mark costs little.
STEP_WAIT_MAX_S = 0.03
_SMOOTHING = 0.25


@dataclass(slots=True)
class Landing:
    """Where one piece body's bytes go as they arrive, from the one reused buffer.

    Both ways of receiving (:func:`receive_blocking` in a worker thread and the
    client's paced loop on the event loop) recv into :meth:`room` and hand the
    count to :meth:`land`, which does the per-step work once.
    """

    view: memoryview
    fd: int
    offset: int
    end: int
    progress: Receiving | None
    feed: Feed | None
    pos: int = field(init=False)
    crc: int = 0

    def __post_init__(self) -> None:
        self.pos = self.offset
        reserve(self.fd, self.offset, self.end - self.offset)

    def room(self) -> memoryview:
        """The part of the buffer the next recv may fill: never past the piece's end."""
        return self.view[: min(len(self.view), self.end - self.pos)]

    def land(self, n: int) -> None:
        """The first ``n`` bytes of the buffer arrived: write them where they go."""
        chunk = self.view[:n]
        try:
            pwrite_all(self.fd, chunk, self.pos)
        except OSError as e:  # our own disk (full, failing, read-only): never the parent's doing
            raise StorageError(e.errno, f"cannot write a piece into the store: {e.strerror}") from e
        self.pos += n
        self.crc = crc32(chunk, self.crc)
        if self.feed is not None:
            self.feed.update(chunk)
        if self.progress is not None:
            self.progress.advance(self.pos - self.offset)


@dataclass(slots=True)
class Pace:
    """How fast piece bodies come from one parent: seconds per byte, smoothed.

    Seconds per byte rather than bytes per second, so a step that found its
    bytes already waiting (a near-zero time) weighs little, and a wait on a
    stalled parent weighs much: errors go toward shorter steps, the safe side.
    """

    seconds_per_byte: float = -1.0  # < 0: nothing measured yet

    def low_water(self) -> int:
        """Bytes the next recv waits for."""
        if self.seconds_per_byte < 0:
            return RECV_LOW_WATER_MIN
        step = int(RECV_STEP_S / max(self.seconds_per_byte, 1e-12))
        return max(RECV_LOW_WATER_MIN, min(RECV_LOW_WATER, step))

    def note(self, n: int, elapsed: float) -> None:
        spb = elapsed / n
        old = self.seconds_per_byte
        self.seconds_per_byte = spb if old < 0 else old + _SMOOTHING * (spb - old)


def pending(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s receive queue (FIONREAD)."""
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf, True)
    return buf[0]


@dataclass(slots=True)
class LowWater:
    """``sock``'s ``SO_RCVLOWAT``: set only when it changes, back at 1 when a body is done."""

    sock: socket.socket
    mark: int = 1

    def set(self, want: int) -> None:
        if want != self.mark:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
            self.mark = want

    def reset(self) -> None:
        """Back to 1 for the frames that follow a body; a connection already gone is left be."""
        if self.mark != 1:
            try:
                self.set(1)
            except OSError:
                pass  # nothing reads from it again


def receive_blocking(
    sock: socket.socket,
    body: Landing,
    pace: Pace,
    got: Callable[[int], int],
) -> None:
    """Receive ``body`` whole from ``sock`` (blocking, or with the socket's own timeout) in steps of
    ``pace``; ``got(n)`` vets each recv's count (it raises on a closed connection).

    Raises ``TimeoutError`` only when nothing at all came for the socket's timeout: a parent
    slower than the low water mark is read byte by byte from then on. The mark is back at 1
    afterwards, for the frames that follow the body. (Bodies over TLS are received on the event
    loop, in the same steps: ``piece_tls.TLSSession.receive_body``.)
    """
    low = LowWater(sock)
    stepped = type(sock) is socket.socket
    read = sock.recv_into
    clock = time.monotonic
    try:
        while body.pos < body.end:
            if stepped:
                low.set(min(pace.low_water(), body.end - body.pos))
            began = clock()
            try:
                n = read(body.room())
            except TimeoutError:
                if low.mark > 1 and pending(sock):
                    stepped = False
                    low.set(1)
                    continue
                raise
            body.land(got(n))
            if n >= low.mark > 1:
                pace.note(n, clock() - began)
    finally:
        low.reset()


async def stepped_recv(loop: asyncio.AbstractEventLoop, sock: socket.socket, into: memoryview) -> int | None:
    """On the event loop: wait until non-blocking ``sock`` holds its low water mark (the
    kernel wakes epoll no sooner) or :data:`STEP_WAIT_MAX_S` passed, then read what it holds
    into ``into``: a count (0 at EOF), or None when nothing had come."""
    woken = loop.create_future()

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    fd = sock.fileno()
    loop.add_reader(fd, wake)
    timer = loop.call_later(STEP_WAIT_MAX_S, wake)
    try:
        await woken
    finally:
        loop.remove_reader(fd)
        timer.cancel()
    try:
        return sock.recv_into(into)
    except BlockingIOError:
        return None
