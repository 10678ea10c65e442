"""Bounds on the piece port, so a few bad children cannot starve the honest ones.

A child that asks for pieces and never reads them holds an upload slot for as
long as it stays; hundreds of idle connections from one address hold file
descriptors and memory. The piece server keeps to :class:`SendLimits`:

- **idle**: a send that makes no progress (no byte of it acknowledged by the child's
  TCP, ``TCP_INFO``'s ``tcpi_bytes_acked``, looked at by a timer four times per idle timeout)
  for ``idle_timeout`` ends the connection, and with it its upload slot; the piece
  still goes out in one ``sendfile`` (tried: sending in 160 KiB chunks, each under
  the idle timeout, halved the piece server's loopback throughput, 1.5 -> 0.8 GB/s);
- **rate**: a piece of N bytes must be sent within ``max(idle_timeout, N / min_rate)``
  of time spent sending (time waiting for the host's own upload limiter does not
  count), so a child that reads a trickle cannot hold a slot for ever either. N
  counts what the connection still had queued when the send began (:func:`queued_bytes`):
  a piece streamed as it arrives goes in many sends, and one behind megabytes in the
  socket waits for them at the link's pace, not at its own (64 x 5 mbit: children
  reading at 1.25 mbit lost their connections with "0 of 560376 bytes sent"). The
  default (64 KiB/s) lets a 64 MiB piece take 17 minutes: a 5 mbit link shared by
  eight pieces at once still finishes;
- **per address**: at most ``per_address`` connections from one remote address;
  a new one beyond that evicts a stalled one (:func:`to_evict`), else an idle one,
  else it is refused.

:func:`to_evict` decides, :func:`watched` keeps one send to the limits;
:class:`~damselfly.daemon.transfer.piece_server.PieceServer` does the rest of the
I/O. The clock for eviction is the caller's.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import io
import os
import socket
import struct
import termios
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ...units import SECONDS, KiB

DEFAULT_IDLE_TIMEOUT = 5 * SECONDS
DEFAULT_MIN_RATE = 64 * KiB  # bytes per second
DEFAULT_PER_ADDRESS = 64
_BYTES_ACKED = struct.Struct("=Q")  # struct tcp_info's tcpi_bytes_acked (Linux >= 4.1) ...
_BYTES_ACKED_AT = 120  # ... at this offset


@dataclass(frozen=True, slots=True)
class SendLimits:
    """How long a piece send may take and how many connections one address may hold."""

    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    min_rate: int = DEFAULT_MIN_RATE
    per_address: int = DEFAULT_PER_ADDRESS  # 0: no cap

    def __post_init__(self) -> None:
        if self.idle_timeout <= 0 or self.min_rate <= 0 or self.per_address < 0:
            raise ValueError(f"bad send limits: {self}")

    def budget(self, nbytes: int) -> float:
        """Seconds of sending a piece of ``nbytes`` may take in all."""
        return max(self.idle_timeout, nbytes / self.min_rate)

    @property
    def stall_after(self) -> float:
        """A connection sending with no progress for this long is stalled (evicted first)."""
        return self.idle_timeout / 2


@dataclass(eq=False, slots=True)
class Connection:
    """One connection's state as the limits see it; owned by the piece server's connection task."""

    address: str
    opened: float
    progress: float  # when bytes last moved: a request read or a chunk of a piece sent
    sending: bool = False
    dropped: bool = False  # evicted: reset, not closed gently
    evict: Callable[[], object] = field(default=lambda: None, repr=False)

    def moved(self, now: float) -> None:
        self.progress = now


def to_evict(connections: Iterable[Connection], limits: SendLimits, now: float) -> Connection | None:
    """Which connection of a full address gives way to a new one; None: refuse the new one.

    Stalled sends first (the longest without progress), then connections waiting for a
    request (the longest idle: a child reconnects when it needs one). A send making
    progress is never evicted for a newcomer."""
    stalled = [c for c in connections if c.sending and now - c.progress >= limits.stall_after]
    if stalled:
        return min(stalled, key=lambda c: c.progress)
    waiting = [c for c in connections if not c.sending]
    if waiting:
        return min(waiting, key=lambda c: c.progress)
    return None


def queued_bytes(sock: Any) -> int:
    """Bytes in ``sock``'s send queue not yet acknowledged by the peer (``SIOCOUTQ``); 0 where unknown."""
    try:
        out = array.array("i", [0])
        fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, out, True)
    except (OSError, AttributeError, ValueError):
        return 0
    return max(0, out[0])


def acked_bytes(sock: Any) -> int | None:
    """How many bytes the peer of TCP socket ``sock`` has acknowledged; None where unknown."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _BYTES_ACKED_AT + _BYTES_ACKED.size)
    except (OSError, AttributeError):
        return None
    if len(info) < _BYTES_ACKED_AT + _BYTES_ACKED.size:
        return None
    return int(_BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0])


@contextlib.asynccontextmanager
async def watched(
    acked: Callable[[], int | None],
    limits: SendLimits,
    budget: float,
    on_progress: Callable[[], None],
) -> AsyncIterator[None]:
    """Keep the send in the ``async with`` block to the limits: when the peer acknowledges
    nothing new for the idle timeout, or the block lasts more than ``budget`` seconds, the
    block is cancelled and TimeoutError raised (as :func:`asyncio.timeout` does). ``acked``
    says how far the peer has acknowledged (None: unknown, taken as progress). A timer looks
    four times per idle timeout; the send itself runs in the caller's task, untouched."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    start = last = loop.time()
    seen = acked()
    why = ""
    handle: asyncio.TimerHandle | None = None

    def look() -> None:
        nonlocal handle, seen, last, why
        now, current = loop.time(), acked()
        if current is None or current != seen:
            seen, last = current, now
            on_progress()
        if now - start >= budget:
            why = f"sending below the minimum rate ({limits.min_rate} bytes/s)"
        elif now - last >= limits.idle_timeout:
            why = f"no send progress for {limits.idle_timeout:g}s"
        else:
            handle = loop.call_later(min(limits.idle_timeout / 4, budget - (now - start)), look)
            return
        task.cancel()

    handle = loop.call_later(min(limits.idle_timeout / 4, budget), look)
    try:
        yield
    except asyncio.CancelledError:
        if why and task.uncancel() == 0:
            raise TimeoutError(why) from None
        raise
    finally:
        handle.cancel()


TLS_CHUNK = 256 * 1024  # bytes read and encrypted at a time on a TLS piece connection


def send_at_once(writer: asyncio.StreamWriter, file: io.FileIO, offset: int, length: int) -> int:
    """What of ``length`` bytes of ``file`` at ``offset`` the socket takes right now: one
    non-blocking ``sendfile`` when nothing is queued ahead in the transport, else 0.

    A piece streamed as it lands goes in a send per step of its parent (~10 ms), and
    ``loop.sendfile`` spends some 40 Python calls on each (reading paused and resumed, a
    waiter for the empty buffer, fstat, lseek); on a link that keeps up the socket takes
    the step at once, so :func:`send_plain` and its watch are left for what has to wait."""
    if writer.transport.get_write_buffer_size():
        return 0
    try:
        return os.sendfile(writer.get_extra_info("socket").fileno(), file.fileno(), offset, length)
    except BlockingIOError:
        return 0


async def send_plain(
    loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter, file: io.FileIO, offset: int, length: int
) -> int:
    """``length`` bytes of ``file`` at ``offset`` with the kernel's sendfile."""
    return await loop.sendfile(writer.transport, file, offset, length)


async def send_through_tls(
    loop: asyncio.AbstractEventLoop, writer: asyncio.StreamWriter, file: io.FileIO, offset: int, length: int
) -> int:
    """``length`` bytes of ``file`` at ``offset`` through a TLS transport, in large chunks, each
    written and drained (``loop.sendfile``'s own fallback reads 16 KiB per executor round trip,
    a sixth of this path's throughput). The read is on the loop, as ``sendfile``'s is in the
    kernel: not in the default executor, whose few threads the piece client's receives hold
    (a parent's sends queued behind its own receives stalled whole swarms)."""
    sent = 0
    while sent < length:
        chunk = os.pread(file.fileno(), min(TLS_CHUNK, length - sent), offset + sent)
        if not chunk:
            break
        writer.write(chunk)
        await writer.drain()
        sent += len(chunk)
    return sent


def reset_connection(writer: asyncio.StreamWriter) -> None:
    """Drop a connection at once: a reset, not a FIN queued behind bytes the child never reads."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # closed already
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
