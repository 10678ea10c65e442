"""Preheat policy: which hosts warm which tasks, and how a job's outcome reads.

Pure functions over plain values, no I/O and no protobuf; the RPC side
(:mod:`.preheat_rpc`) translates requests into :class:`PreheatPlan` and
carries the plan out against the daemons.

Scope (``PreheatFileRequest.scope`` / ``PreheatImageRequest.scope``, Dragonfly's names):

* ``single_seed_peer`` (default): one seed host, the least loaded;
* ``all_seed_peers``: every seed host;
* ``all_peers``: every host, seed and normal, narrowed by ``count`` (that
  many hosts) or else ``percentage`` (that share, rounded up).

``ips`` picks hosts by IP among those of the scope and wins over ``count``
and ``percentage``; an IP that matches no host of the scope is an error
(preheating fewer hosts than asked must not look like success).

Within a job, seed hosts go first: the first seed fetches the origin once and
every other host then downloads from the swarm. Normal hosts only start once
the seeds hold the task, so the scheduler's own seed trigger (which sees the
normal peer's request with its credentials stripped) never races the preheat.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .. import ids
from ..domain import DownloadSpec, HostInfo
from ..errors import InvalidArgument, NotFound


class Scope(enum.Enum):
    SINGLE_SEED_PEER = "single_seed_peer"
    ALL_SEED_PEERS = "all_seed_peers"
    ALL_PEERS = "all_peers"

    @classmethod
    def parse(cls, value: str) -> Scope:
        if not value:
            return cls.SINGLE_SEED_PEER
        try:
            return cls(value.strip().lower())
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise InvalidArgument(f"preheat scope {value!r} is not one of {names}") from None


@dataclass(frozen=True, slots=True)
class HostLoad:
    """A candidate host and what the scheduler knows of its load (used upload slots / limit)."""

    info: HostInfo
    load: float = 0.0


@dataclass(frozen=True, slots=True)
class Targets:
    """Where to preheat: ``seeds`` first, then ``others``."""

    seeds: tuple[HostInfo, ...]
    others: tuple[HostInfo, ...] = ()

    @property
    def all(self) -> tuple[HostInfo, ...]:
        return self.seeds + self.others


def select_hosts(
    hosts: Iterable[HostLoad],
    scope: Scope,
    *,
    ips: Sequence[str] = (),
    count: int | None = None,
    percentage: int | None = None,
) -> Targets:
    """The hosts a preheat of this scope goes to; raises NotFound when there are none."""
    usable = [h for h in hosts if not h.info.disable_shared]
    usable.sort(key=lambda h: (h.load, h.info.id))
    pool = usable if scope is Scope.ALL_PEERS else [h for h in usable if h.info.type.is_seed]
    if not pool:
        kind = "host" if scope is Scope.ALL_PEERS else "seed host"
        raise NotFound(f"no {kind} has announced itself to the scheduler; nothing to preheat on")
    chosen: list[HostLoad]
    if ips:
        wanted = list(dict.fromkeys(ip.strip() for ip in ips if ip.strip()))
        chosen = [h for h in pool if h.info.ip in wanted]
        missing = [ip for ip in wanted if all(h.info.ip != ip for h in pool)]
        if missing:
            raise NotFound(f"no host of scope {scope.value} has IP {', '.join(missing)}")
        if scope is Scope.SINGLE_SEED_PEER:
            chosen = chosen[:1]
    elif scope is Scope.SINGLE_SEED_PEER:
        chosen = pool[:1]
    elif scope is Scope.ALL_SEED_PEERS:
        chosen = pool
    else:
        chosen = _narrow(pool, count, percentage)
    seeds = tuple(h.info for h in chosen if h.info.type.is_seed)
    others = tuple(h.info for h in chosen if not h.info.type.is_seed)
    return Targets(seeds, others)


def _narrow(pool: list[HostLoad], count: int | None, percentage: int | None) -> list[HostLoad]:
    """``count`` hosts, else ``percentage`` % of them (at least one), seeds first, least loaded first."""
    if count is not None:
        if count < 1:
            raise InvalidArgument(f"preheat count must be at least 1, not {count}")
        n = count
    elif percentage is not None:
        if not 1 <= percentage <= 100:
            raise InvalidArgument(f"preheat percentage must be within 1..100, not {percentage}")
        n = max(1, math.ceil(len(pool) * percentage / 100))
    else:
        return pool
    # Seeds first: they fetch the origin once for everyone else.
    ordered = [h for h in pool if h.info.type.is_seed] + [h for h in pool if not h.info.type.is_seed]
    return ordered[:n]


def task_id_of(spec: DownloadSpec) -> str:
    """The task ID a daemon computes for ``spec`` (one function for both: :func:`ids.download_task_id`)."""
    return ids.download_task_id(spec)


# --------------------------------------------------------------------------- jobs


@dataclass(frozen=True, slots=True)
class PreheatItem:
    """One task to warm: what the daemons are asked to download, and a name for reports."""

    spec: DownloadSpec
    name: str  # the URL for a file, the digest for an image blob

    @property
    def task_id(self) -> str:
        return task_id_of(self.spec)


@dataclass(frozen=True, slots=True)
class PreheatPlan:
    """A preheat job: every item on every target host, within the concurrency limits."""

    what: str  # for logs and errors: the image reference or "N files"
    items: tuple[PreheatItem, ...]
    targets: Targets
    concurrent_tasks: int
    concurrent_peers: int
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """One item on one host: ``error`` is "" when the host holds the task now."""

    item: str
    task_id: str
    host_id: str
    error: str = ""


@dataclass(slots=True)
class PreheatReport:
    """What a job did, filled in as downloads end (owner: the job's runner)."""

    what: str
    outcomes: list[Outcome] = field(default_factory=list)
    done: bool = False

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error]

    def summary(self, expected: int) -> str:
        """One line for the user: how many downloads succeeded, then each failure."""
        failed = self.failures
        ok = len(self.outcomes) - len(failed)
        head = f"preheat {self.what}: {ok} of {expected} downloads succeeded"
        if not failed:
            return head
        lines = [f"{o.item} on {o.host_id}: {o.error}" for o in failed[:20]]
        more = f"; and {len(failed) - 20} more" if len(failed) > 20 else ""
        return head + "; failed: " + "; ".join(lines) + more


def clamp(value: int | None, default: int, *, low: int = 1, high: int = 1000) -> int:
    """A concurrency from a request: unset or non-positive means ``default``; at most ``high``."""
    if value is None or value <= 0:
        return default
    return max(low, min(high, value))
