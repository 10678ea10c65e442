"""Host-wide rate limits: token buckets for bytes and for requests.

Dragonfly's point against wget and curl is a limit on the whole host, not on
one transfer: every download of the daemon draws from one ``download``
bucket, every child it serves from one ``upload`` bucket, every origin fetch
from one ``backToSource`` bucket. The limits sit on the byte path (before each
``recv`` and each ``sendfile`` chunk), so concurrent tasks and connections
share a limit by construction.

Three layers, from pure to async:

* :class:`TokenBucket` is the arithmetic only: tokens refill at ``rate`` per
  second up to ``burst``, read from an injected clock. No I/O, no sleeping;
  unit tests drive it with a fake clock.
* :class:`ByteLimiter` hands out bytes to asyncio consumers. Asks are served
  in start-time fair-queueing order per key (the task), each grant at most
  :attr:`ByteLimiter.grant_size` bytes, so four tasks pulling at once get a
  quarter each however many connections each uses, and no transfer between
  two grants can exceed the bucket size (the burst bound).
  :meth:`ByteLimiter.set_rate` changes the limit at run time and wakes the
  waiter at the head of the queue so a raised limit takes effect at once.
* :class:`RequestLimiter` answers yes/no for one request (servers answer
  RESOURCE_EXHAUSTED instead of queueing when it says no).

A rate of 0 means unlimited everywhere (Dragonfly's convention): consumers
return at once without touching the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import TYPE_CHECKING

from ..units import KiB, MiB

if TYPE_CHECKING:
    from ..config import DaemonConfig

# A bucket holds this many seconds of its rate unless told otherwise: small
# enough that a full bucket at the start adds < 1% to a 20 s transfer, large
# enough that one grant covers a useful chunk of I/O.
DEFAULT_BURST_SECONDS = 0.1
MIN_BURST = 64 * KiB
# One grant (the fairness quantum between concurrent consumers) is about 10 ms of
# the rate, within these bounds and never above the bucket: small enough to
# interleave consumers finely, large enough that a chunked sendfile at 500 MB/s
# is not dominated by per-call cost.
GRANT_SECONDS = 0.01
MIN_GRANT = 64 * KiB
MAX_GRANT = 4 * MiB


def default_burst(rate: float) -> int:
    """The bucket size used when none is configured: 100 ms of ``rate``, at least 64 KiB."""
    return max(MIN_BURST, int(rate * DEFAULT_BURST_SECONDS))


class TokenBucket:
    """Token-bucket arithmetic over an injected clock (seconds, monotonic).

    ``rate`` tokens per second refill the bucket up to ``burst``; it starts
    full. A rate of 0 is unlimited: every request is granted. Not thread-safe;
    the owner (:class:`ByteLimiter`, :class:`RequestLimiter`) serializes use.
    """

    def __init__(self, rate: float, burst: int | None = None, *, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.rate = 0.0
        self.burst = 0
        self._tokens = 0.0
        self._last = clock()
        self.set_rate(rate, burst)
        self._tokens = float(self.burst)

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._last
        self._last = now
        if elapsed > 0 and not self.unlimited:
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        self._refill()
        return self._tokens

    def set_rate(self, rate: float, burst: int | None = None) -> None:
        """Change the rate (and bucket size) from now on; tokens earned so far are kept, capped."""
        if rate < 0:
            raise ValueError(f"rate must be >= 0, not {rate}")
        self._refill()
        self.rate = float(rate)
        self.burst = int(burst) if burst else default_burst(rate)
        if self.burst <= 0:
            raise ValueError(f"burst must be > 0, not {burst}")
        self._tokens = min(self._tokens, float(self.burst))

    def delay(self, n: int) -> float:
        """Seconds until ``n`` tokens are available (0: now). ``n`` above the burst is capped to it."""
        if self.unlimited:
            return 0.0
        self._refill()
        need = min(n, self.burst) - self._tokens
        return 0.0 if need <= 0 else need / self.rate

    def try_take(self, n: int) -> bool:
        """Take ``n`` tokens if available now."""
        if self.unlimited:
            return True
        if self.delay(n) > 0:
            return False
        self._tokens -= min(n, self.burst)
        return True

    def give_back(self, n: int) -> None:
        """Return tokens taken but not used (capped at the burst)."""
        if not self.unlimited and n > 0:
            self._refill()
            self._tokens = min(float(self.burst), self._tokens + n)


Sleep = Callable[[float], Awaitable[None]]


class ByteLimiter:
    """A bandwidth limit shared by every consumer on this host (all tasks, all connections).

    Consumers call :meth:`consume` (``await limiter.consume(n)`` returns once
    ``n`` bytes may pass) or :meth:`acquire` (returns how many bytes, at most
    the ask, may pass now: the I/O then moves exactly that many). Owner of its
    bucket and its waiters; safe for any number of concurrent consumers in one
    event loop.

    Fairness is per ``key`` (the daemon passes the task ID), in bytes:
    start-time fair queueing. Each ask gets a start tag, the later of the
    limiter's virtual time and the end of its key's previous ask (in bytes);
    the smallest tag is served next. A task pulling over sixteen connections
    gets the same bytes as a task pulling over one, and a task that steps away
    for a moment (its one connection busy with I/O) does not lose its turn.

    ``sleep`` is injected for unit tests (a fake clock's advance); by default
    a waiter sleeps on an event that :meth:`set_rate` sets, so a raised limit
    is felt at once.
    """

    def __init__(
        self,
        rate: float = 0,
        *,
        burst: int | None = None,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep | None = None,
    ) -> None:
        self.name = name
        self._bucket = TokenBucket(rate, burst, clock=clock)
        # Waiting asks as a heap of (start tag, arrival, wake-up event); the head (smallest
        # tag) is the only one sleeping for tokens. Tags count bytes: _vtime is the tag of the
        # last grant, _finish[key] where the key's last ask ends.
        self._heap: list[tuple[float, int, asyncio.Event]] = []
        self._finish: dict[Hashable, float] = {}
        self._vtime = 0.0
        self._seq = 0
        self._changed = asyncio.Event()
        self._sleep = sleep
        self.bytes_granted = 0

    def __repr__(self) -> str:
        return f"ByteLimiter({self.name!r}, rate={self.rate:g}, burst={self.burst})"

    @property
    def rate(self) -> float:
        return self._bucket.rate

    @property
    def burst(self) -> int:
        return self._bucket.burst

    @property
    def unlimited(self) -> bool:
        return self._bucket.unlimited

    @property
    def grant_size(self) -> int:
        """The most one turn grants; I/O moved per grant is at most this (<= the burst)."""
        quantum = min(MAX_GRANT, max(MIN_GRANT, int(self._bucket.rate * GRANT_SECONDS)))
        return min(self._bucket.burst, quantum)

    def set_rate(self, rate: float, burst: int | None = None) -> None:
        """Change the limit at run time (0: unlimited); the waiting consumer re-checks at once."""
        self._bucket.set_rate(rate, burst)
        self._changed.set()

    @property
    def waiting(self) -> int:
        return len(self._heap)

    async def acquire(self, want: int, key: Hashable = None) -> int:
        """Wait for ``key``'s turn and return how many bytes (1..min(want, grant_size)) may pass now."""
        if want <= 0:
            return 0
        if self._bucket.unlimited:
            self.bytes_granted += want
            return want
        start = max(self._vtime, self._finish.get(key, 0.0))
        self._finish[key] = start + min(want, self.grant_size)
        self._seq += 1
        entry = (start, self._seq, asyncio.Event())
        me = entry[2]
        heapq.heappush(self._heap, entry)
        try:
            while self._heap[0] is not entry:
                await me.wait()
                me.clear()
            while True:
                if self._bucket.unlimited:
                    n = want
                    break
                n = min(want, self.grant_size)
                wait = self._bucket.delay(n)
                if wait <= 0:
                    self._bucket.try_take(n)
                    break
                await self._wait(wait)
        finally:
            self._leave(entry)
        self.bytes_granted += n
        return n

    def _leave(self, entry: tuple[float, int, asyncio.Event]) -> None:
        """Take an ask out of the heap (granted or cancelled) and wake the next head."""
        if self._heap and self._heap[0] is entry:
            heapq.heappop(self._heap)
            self._vtime = max(self._vtime, entry[0])
        else:
            self._heap.remove(entry)
            heapq.heapify(self._heap)
        if self._heap:
            self._heap[0][2].set()
        if len(self._finish) > 2 * len(self._heap) + 64:
            # Keys that stopped asking (finished tasks) would start at _vtime anyway.
            self._finish = {k: f for k, f in self._finish.items() if f > self._vtime}

    async def consume(self, nbytes: int, key: Hashable = None) -> None:
        """Return once ``nbytes`` may pass (taken in grants, so other consumers interleave)."""
        while nbytes > 0:
            nbytes -= await self.acquire(nbytes, key)

    def refund(self, nbytes: int) -> None:
        """Give back bytes granted but not moved (a recv that returned less than granted)."""
        if nbytes > 0:
            self.bytes_granted -= nbytes
            self._bucket.give_back(nbytes)

    async def _wait(self, seconds: float) -> None:
        if self._sleep is not None:
            await self._sleep(seconds)
            return
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._changed.wait()


class LimiterChain:
    """Several limits on one byte path (a per-download limit under the host's): every grant is
    taken from each; a grant is at most the smallest grant size, so no limit sees a burst
    above its bucket."""

    def __init__(self, limiters: Sequence[ByteLimiter]) -> None:
        self.limiters = [lim for lim in limiters if lim is not None]

    @property
    def unlimited(self) -> bool:
        return all(lim.unlimited for lim in self.limiters)

    @property
    def grant_size(self) -> int:
        sizes = [lim.grant_size for lim in self.limiters if not lim.unlimited]
        return min(sizes) if sizes else MAX_GRANT

    async def acquire(self, want: int, key: Hashable = None) -> int:
        n = min(want, self.grant_size)
        for lim in self.limiters:
            await lim.consume(n, key)
        return n

    async def consume(self, nbytes: int, key: Hashable = None) -> None:
        while nbytes > 0:
            nbytes -= await self.acquire(nbytes, key)

    def refund(self, nbytes: int) -> None:
        for lim in self.limiters:
            lim.refund(nbytes)


def chain(*limiters: ByteLimiter | None) -> LimiterChain | ByteLimiter | None:
    """The limiters that apply to a byte path, as one object with ``acquire``/``consume``/``refund``."""
    present = [lim for lim in limiters if lim is not None and not lim.unlimited]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    return LimiterChain(present)


class RequestLimiter:
    """A request-rate limit: :meth:`allow` says whether one more request may be served now.

    ``rate`` requests per second with bursts of ``burst`` (default: one
    second's worth); 0 is unlimited. Servers answer RESOURCE_EXHAUSTED (gRPC,
    Vortex Error code 4) or 429 (HTTP) when it says no, rather than queueing.
    """

    def __init__(
        self, rate: float = 0, burst: int | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._bucket = TokenBucket(rate, burst or max(1, int(rate)), clock=clock)
        self.refused = 0

    @property
    def rate(self) -> float:
        return self._bucket.rate

    def set_rate(self, rate: float, burst: int | None = None) -> None:
        self._bucket.set_rate(rate, burst or max(1, int(rate)))

    def allow(self) -> bool:
        if self._bucket.try_take(1):
            return True
        self.refused += 1
        return False


# The per-download limit of the download being run in this context (dfget --rate-limit).
# Set by the service around TaskManager.ensure, so the conductor's asyncio task and its
# piece workers (which copy the context when created) see it; read on the byte path.
TASK_LIMITER: contextvars.ContextVar[ByteLimiter | None] = contextvars.ContextVar(
    "damselfly_task_limiter", default=None
)


class HostLimiters:
    """Every limit of one daemon, built from its config and updated in place on reload.

    Owner: :class:`damselfly.daemon.app.Daemon`. The objects never change
    identity, so whoever holds one (piece server, connection pool, origin
    source, proxy) sees a new rate as soon as :meth:`update` runs.
    """

    def __init__(self, config: DaemonConfig) -> None:
        self.download = ByteLimiter(name="download")
        self.upload = ByteLimiter(name="upload")
        self.back_to_source = ByteLimiter(name="backToSource")
        self.prefetch = ByteLimiter(name="prefetch")
        self.upload_requests = RequestLimiter()
        self.piece_requests = RequestLimiter()
        self.update(config)

    def update(self, config: DaemonConfig) -> None:
        """Apply the limits of ``config`` (at start and on SIGHUP)."""
        self.download.set_rate(config.download.bandwidth_limit)
        self.upload.set_rate(config.upload.bandwidth_limit)
        self.back_to_source.set_rate(config.download.back_to_source_bandwidth_limit)
        proxy = getattr(config, "proxy", None)
        self.prefetch.set_rate(int(getattr(proxy, "prefetch_bandwidth_limit", 0) or 0))
        self.upload_requests.set_rate(config.upload.server.request_rate_limit)
        self.piece_requests.set_rate(config.storage.server.request_rate_limit)

    def describe(self) -> str:
        def r(lim: ByteLimiter) -> str:
            return "unlimited" if lim.unlimited else f"{lim.rate / 1e6:g} MB/s"

        return (
            f"download {r(self.download)}, upload {r(self.upload)}, "
            f"back-to-source {r(self.back_to_source)}, prefetch {r(self.prefetch)}"
        )
