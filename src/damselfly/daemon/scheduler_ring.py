"""Which scheduler a task belongs to: a consistent-hash ring over the schedulers' addresses.

Every daemon given the same schedulers asks the same one about the same task,
so a task's peers meet on one scheduler, as with Dragonfly's client (which keeps
its schedulers on a hash ring and looks a task up by its ID,
``dragonfly-client/src/grpc/scheduler.rs``). Dragonfly's ring has one point per
scheduler, which leaves one scheduler with most of the tasks when there are few
(a known pain: "one hot scheduler"); this one gives each scheduler
:data:`VNODES` points, so the share of each is near 1/n.

A task whose scheduler is down belongs to the next live one clockwise: the same
answer as a ring built from the live schedulers alone (each point's place
depends only on its own scheduler), so daemons that agree on who is down agree
on where a task goes, and a scheduler that comes back takes exactly its own
share back. Pure: no I/O, no clock.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterable

VNODES = 160  # points per scheduler: the largest share stays within ~15 % of 1/n for n <= 10


def _point(text: str) -> int:
    """A place on the ring: the first 8 bytes of the sha256 of ``text`` (the same on every host)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


class HashRing:
    """A consistent-hash ring of scheduler addresses (``host:port``)."""

    def __init__(self, nodes: Iterable[str] = (), *, vnodes: int = VNODES) -> None:
        self._vnodes = vnodes
        self._points: list[int] = []
        self._owners: list[str] = []
        self._nodes: set[str] = set()
        self.set_nodes(nodes)

    @property
    def nodes(self) -> frozenset[str]:
        return frozenset(self._nodes)

    def set_nodes(self, nodes: Iterable[str]) -> None:
        """Make the ring hold exactly ``nodes``."""
        self._nodes = set(nodes)
        ring = sorted((_point(f"{node}#{i}"), node) for node in self._nodes for i in range(self._vnodes))
        self._points = [p for p, _ in ring]
        self._owners = [n for _, n in ring]

    def lookup(self, key: str, alive: Callable[[str], bool] = lambda _: True) -> str | None:
        """The first node clockwise from ``key``'s place that ``alive`` accepts; None if none does."""
        if not self._points:
            return None
        start = bisect.bisect(self._points, _point(key))
        seen: set[str] = set()
        count = len(self._points)
        for i in range(count):
            node = self._owners[(start + i) % count]
            if node in seen:
                continue
            if alive(node):
                return node
            seen.add(node)
            if len(seen) == len(self._nodes):
                break
        return None
