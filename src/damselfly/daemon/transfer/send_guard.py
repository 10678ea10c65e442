"""Bounds on the piece port, so a few bad children cannot starve the honest ones.

A child that asks for pieces and never reads them holds an upload slot for as
long as it stays; hundreds of idle connections from one address hold file
descriptors and memory. The piece server keeps to :class:`SendLimits`:

- **idle**: a send that makes no progress (no chunk of the piece accepted by the
  socket) for ``idle_timeout`` ends the connection, and with it its upload slot;
- **rate**: a piece of N bytes must be sent within ``max(idle_timeout, N / min_rate)``
  of time spent sending (time waiting for the host's own upload limiter does not
  count), so a child that reads a trickle cannot hold a slot for ever either. The
  default (64 KiB/s) lets a 64 MiB piece take 17 minutes: a 5 mbit link shared by
  eight pieces at once still finishes;
- **per address**: at most ``per_address`` connections from one remote address;
  a new one beyond that evicts a stalled one (:func:`to_evict`), else an idle one,
  else it is refused.

This module decides; :class:`~damselfly.daemon.transfer.piece_server.PieceServer`
does the I/O. The clock is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ...units import SECONDS, KiB, MiB

DEFAULT_IDLE_TIMEOUT = 5 * SECONDS
DEFAULT_MIN_RATE = 64 * KiB  # bytes per second
DEFAULT_PER_ADDRESS = 64
_MIN_CHUNK = 64 * KiB
_MAX_CHUNK = 1 * MiB


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
    def chunk(self) -> int:
        """Bytes handed to the socket at a time: a link at ``min_rate`` moves one in half the
        idle timeout, so each chunk's completion is the progress the idle timeout watches."""
        return max(_MIN_CHUNK, min(_MAX_CHUNK, int(self.idle_timeout * self.min_rate / 2)))

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
