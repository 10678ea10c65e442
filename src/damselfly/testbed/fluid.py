"""The fluid-model lower bound on distribution time (Kumar & Ross, HotWeb 2006).

Why: a swarm benchmark means little as raw seconds; divided by the time no
system could beat on the same links it says how much is left to win. For a file
of ``F`` bytes, a server (the origin) with upload ``u_s`` and ``N`` hosts that
each download the file and upload with ``u_i`` / download with ``d_i``::

    T_min = max(F / u_s, F / min d_i, N * F / (u_s + sum u_i))

The server must send every byte at least once; the slowest downloader must
receive every byte; and all ``N * F`` bytes must leave some uploader. Seed peers
are among the ``N`` hosts: they download from the origin and upload like peers.
Rates are bytes per second; the bound counts payload only (no TCP/IP headers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Link:
    """One downloading host's access link, in bytes per second."""

    up: float
    down: float


@dataclass(frozen=True, slots=True)
class FluidBound:
    """``T_min`` and the three terms it is the maximum of (seconds), so a report can say which binds."""

    t_min: float
    server_term: float
    download_term: float
    aggregate_term: float

    @property
    def binding(self) -> str:
        """Which term is ``T_min``: ``server``, ``download`` or ``aggregate`` (ties: the first)."""
        for name, value in (
            ("server", self.server_term),
            ("download", self.download_term),
            ("aggregate", self.aggregate_term),
        ):
            if value == self.t_min:
                return name
        return "server"  # pragma: no cover - t_min is one of the terms


def fluid_bound(file_bytes: int, server_up: float, hosts: Sequence[Link]) -> FluidBound:
    """``T_min`` for ``file_bytes`` from a server with upload ``server_up`` to ``hosts``."""
    if file_bytes < 0:
        raise InvalidArgument(f"file size must be >= 0, not {file_bytes}")
    if server_up <= 0:
        raise InvalidArgument(f"the server's upload rate must be > 0, not {server_up}")
    if not hosts:
        raise InvalidArgument("the bound needs at least one downloading host")
    if any(h.down <= 0 or h.up < 0 for h in hosts):
        raise InvalidArgument("every host needs a download rate > 0 and an upload rate >= 0")
    f = float(file_bytes)
    server = f / server_up
    download = f / min(h.down for h in hosts)
    aggregate = len(hosts) * f / (server_up + sum(h.up for h in hosts))
    return FluidBound(max(server, download, aggregate), server, download, aggregate)
