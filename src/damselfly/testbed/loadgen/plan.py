"""Who the simulated peers are, when they arrive, and how results add up (pure, no I/O).

Why a plan: the load is split over several generator processes (one Python
gRPC client cannot drive thousands of streams without its own queueing
dominating the latency it measures, DESIGN.md §6), yet every process must
agree on the hosts, tasks, peer IDs and arrival times. :class:`LoadPlan` is
that agreement, serialisable to JSON; each worker derives its share from it.

Arrivals are round-robin over the tasks: peer ``i`` downloads task
``i % tasks`` and arrives at ``start + i / rate``, so the first ``tasks``
arrivals are each task's first peer (it is sent back to source and reports
pieces, so the later peers get it as a candidate parent). Peer ``i`` lives on
host ``i // peers_per_host``: consecutive peers share a host, and with
``peers_per_host <= tasks`` no two peers of one task share a host (the
scheduler never pairs peers of one host).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

ORIGIN = "http://origin.loadgen.invalid"


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """The whole load: sizes, pacing, and the behaviour of each simulated peer."""

    peers: int = 5000
    tasks: int = 500
    peers_per_host: int = 1
    workers: int = 3
    rate: float = 250.0  # arrivals per second over all workers; 0: all at once
    pieces: int = 4  # piece reports per peer after its answer
    piece_length: int = 4 * 1024 * 1024
    hold_s: float = 2.0  # after the last arrival, every peer stays open this long before finishing
    answer_timeout_s: float = 30.0
    seeds: int = 0  # simulated seed hosts (type 1) answering the seed trigger; 0: trigger disabled
    channels_per_worker: int = 4

    def __post_init__(self) -> None:
        if self.peers < 1 or self.tasks < 1 or self.workers < 1 or self.peers_per_host < 1:
            raise ValueError("peers, tasks, workers and peers-per-host must be at least 1")
        if self.peers_per_host > self.tasks:
            raise ValueError("peers-per-host must not exceed tasks (two peers of one task on one host)")
        if self.rate < 0 or self.pieces < 0 or self.seeds < 0:
            raise ValueError("rate, pieces and seeds must not be negative")

    @property
    def hosts(self) -> int:
        return math.ceil(self.peers / self.peers_per_host)

    @property
    def arrival_window_s(self) -> float:
        """Seconds from the first arrival to the last."""
        return (self.peers - 1) / self.rate if self.rate > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadPlan:
        return cls(**data)

    # -- identities ------------------------------------------------------------

    def url(self, task: int) -> str:
        return f"{ORIGIN}/task-{task}.bin"

    def host_index(self, peer: int) -> int:
        return peer // self.peers_per_host

    def task_index(self, peer: int) -> int:
        return peer % self.tasks

    def is_first_of_task(self, peer: int) -> bool:
        return peer < self.tasks

    def arrival_s(self, peer: int) -> float:
        """Seconds after the start at which peer ``peer`` registers."""
        return peer / self.rate if self.rate > 0 else 0.0

    def worker_of_peer(self, peer: int) -> int:
        return peer % self.workers

    def worker_of_host(self, host: int) -> int:
        return host % self.workers

    def peers_of(self, worker: int) -> range:
        return range(worker, self.peers, self.workers)

    def hosts_of(self, worker: int) -> range:
        return range(worker, self.hosts, self.workers)


def host_ip(host: int) -> str:
    """A distinct address in 10.0.0.0/8 per simulated host (never dialled for normal hosts)."""
    n = host + 1
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def host_id(host: int) -> str:
    return f"{host_ip(host)}-loadgen-{host}"


def seed_host_id(seed: int) -> str:
    return f"127.0.0.1-loadgen-seed-{seed}-seed"


def peer_id(plan: LoadPlan, peer: int) -> str:
    return f"{host_id(plan.host_index(peer))}-peer-{peer}"


def seed_peer_id(seed: int, task_id: str) -> str:
    return f"127.0.0.1-loadgen-seed-{seed}-{task_id[:16]}-seed"


def idc_of(host: int) -> str:
    return f"idc-{host % 4}"


def location_of(host: int) -> str:
    return f"area|zone-{host % 3}|rack-{host % 7}"


# -- results ------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by the nearest-rank method; 0.0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def latency_summary(values_ms: Iterable[float]) -> dict[str, float]:
    """p50, p90, p99, max and mean of latencies in milliseconds, rounded to 0.01 ms."""
    s = sorted(values_ms)
    if not s:
        return {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    return {
        "count": len(s),
        "p50": round(percentile(s, 0.50), 2),
        "p90": round(percentile(s, 0.90), 2),
        "p99": round(percentile(s, 0.99), 2),
        "max": round(s[-1], 2),
        "mean": round(sum(s) / len(s), 2),
    }


def timeline(
    registered_at: Sequence[float], latencies_ms: Sequence[float], bucket_s: float = 1.0
) -> list[dict[str, float]]:
    """Latency by when the register was written (``bucket_s`` buckets from the first one):
    shows whether a tail is steady or one stall (a GC pause, a busy neighbour)."""
    if not registered_at:
        return []
    t0 = min(registered_at)
    buckets: dict[int, list[float]] = {}
    for t, ms in zip(registered_at, latencies_ms, strict=True):
        buckets.setdefault(int((t - t0) / bucket_s), []).append(ms)
    out = []
    for b in sorted(buckets):
        s = latency_summary(buckets[b])
        out.append(
            {"t_s": b * bucket_s, "count": s["count"], "p50": s["p50"], "p99": s["p99"], "max": s["max"]}
        )
    return out
