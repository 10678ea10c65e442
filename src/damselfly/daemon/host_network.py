"""How busy this host's network is, sampled once a second, for ``DfdaemonUpload.SyncHost``.

A Dragonfly child streams ``SyncHost`` from each of its parents and picks the
parent for a piece at random, weighted by idle upload bandwidth
(``max_tx_bandwidth - tx_bandwidth``, at least a tenth of the maximum;
dragonfly-client/src/resource/parent_selector.rs:157-195,387-402). The figures
are Dragonfly's (dragonfly-client-util/src/sysinfo/network.rs, client commit
ff17c0b7): **bits per second** of the network interface that carries the
host's IP, received and sent over one second; the maximum is the interface's
link speed (``/sys/class/net/<if>/speed``, Mbit/s), capped by the upload
bandwidth limit, or that limit alone when the speed is unknown. Unknown
everything (no such interface, no ``/proc``): the maximum is 0 and a child
falls back to its default weight.

Reading the counters is the only I/O (:class:`ProcNet`); the arithmetic is in
:func:`sample_stats` and :func:`max_bandwidth`, and the clock and sleep are
injected for tests.
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

SAMPLE_INTERVAL = 1.0  # seconds; Dragonfly's DEFAULT_NETWORK_REFRESH_INTERVAL
_SIOCGIFADDR = 0x8915

Counters = tuple[int, int]  # bytes received, bytes sent since boot


@dataclass(frozen=True, slots=True)
class NetworkStats:
    """One sample, in bits per second (``common.v2.Network``'s bandwidth fields); None: unknown."""

    max_rx_bandwidth: int
    max_tx_bandwidth: int
    rx_bandwidth: int | None = None
    tx_bandwidth: int | None = None


def parse_proc_net_dev(text: str) -> dict[str, Counters]:
    """Each interface's byte counters from ``/proc/net/dev``."""
    out: dict[str, Counters] = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if sep and len(fields) >= 9:
            out[name.strip()] = (int(fields[0]), int(fields[8]))
    return out


def parse_if_inet6(text: str, ip: str) -> str | None:
    """The interface holding IPv6 address ``ip``, from ``/proc/net/if_inet6``."""
    try:
        wanted = socket.inet_pton(socket.AF_INET6, ip).hex()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[0].lower() == wanted:
            return fields[5]
    return None


def max_bandwidth(speed_mbit: int | None, limit_bytes: int) -> int:
    """The interface's bandwidth in bit/s, capped by a byte/s limit (0: none); 0 when unknown."""
    limit = limit_bytes * 8
    if speed_mbit is None or speed_mbit <= 0:
        return limit
    speed = speed_mbit * 1_000_000
    return min(speed, limit) if limit else speed


def sample_stats(
    before: Counters | None, after: Counters | None, seconds: float, maximum: int
) -> NetworkStats:
    """The rates between two readings of one interface's counters."""
    if before is None or after is None or seconds <= 0:
        return NetworkStats(maximum, maximum)
    rx = round(max(0, after[0] - before[0]) * 8 / seconds)
    tx = round(max(0, after[1] - before[1]) * 8 / seconds)
    return NetworkStats(maximum, maximum, rx, tx)


class ProcNet:
    """Linux's view of the interfaces (``/proc``, ``/sys``, an ioctl); everything unknown elsewhere."""

    def __init__(self, proc: Path = Path("/proc"), sys: Path = Path("/sys")) -> None:
        self.proc = proc
        self.sys = sys

    def interface_of(self, ip: str) -> str | None:
        if ":" in ip:
            try:
                return parse_if_inet6((self.proc / "net" / "if_inet6").read_text(), ip)
            except OSError:
                return None
        try:
            names = [name for _, name in socket.if_nameindex()]
        except OSError:
            return None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for name in names:
                try:
                    raw = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
                except OSError:
                    continue  # no IPv4 address on it
                if socket.inet_ntoa(raw[20:24]) == ip:
                    return name
        return None

    def speed_mbit(self, interface: str) -> int | None:
        try:
            return int((self.sys / "class" / "net" / interface / "speed").read_text().strip())
        except (OSError, ValueError):
            return None

    def counters(self, interface: str) -> Counters | None:
        try:
            return parse_proc_net_dev((self.proc / "net" / "dev").read_text()).get(interface)
        except OSError:
            return None


class NetworkMonitor:
    """Samples the interface carrying ``ip``; each :meth:`samples` stream belongs to its caller."""

    def __init__(
        self,
        ip: str,
        upload_limit: int,
        *,
        net: ProcNet | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        interval: float = SAMPLE_INTERVAL,
    ) -> None:
        self.net = net or ProcNet()
        self.interface = self.net.interface_of(ip)
        speed = self.net.speed_mbit(self.interface) if self.interface else None
        self.maximum = max_bandwidth(speed, upload_limit)
        self._clock = clock
        self._sleep = sleep
        self.interval = interval

    def _read(self) -> Counters | None:
        return self.net.counters(self.interface) if self.interface else None

    async def samples(self) -> AsyncIterator[NetworkStats]:
        """One sample per interval, for as long as the caller iterates (a SyncHost stream)."""
        before, since = self._read(), self._clock()
        while True:
            await self._sleep(self.interval)
            after, now = self._read(), self._clock()
            yield sample_stats(before, after, now - since, self.maximum)
            before, since = after, now
