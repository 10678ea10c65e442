"""Prometheus metrics of one scheduler, with ``GET /healthy``.

Where a metric means what one of Dragonfly's scheduler (``dragonfly_scheduler_*``)
means, it carries Dragonfly's name and labels; the others are
``damselfly_scheduler_*``. docs/METRICS.md lists them all. Each
:class:`SchedulerMetrics` has its own ``CollectorRegistry``, so several
schedulers can run in one process (tests) without clashing names.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from functools import partial

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .. import __version__
from ..domain import HostType
from ..process import metrics_app
from .runtime import GCPauses

PREFIX = "damselfly_scheduler_"
DRAGONFLY = "dragonfly_scheduler_"
# Dragonfly's label values: HostType.Name() of its Go scheduler, common.v2 enum names.
_HOST_TYPE = {
    HostType.NORMAL: "normal",
    HostType.SUPER_SEED: "super",
    HostType.STRONG_SEED: "strong",
    HostType.WEAK_SEED: "weak",
}
PEER_LABELS = ["priority", "task_type", "host_type"]
# AnnounceHost's labels, from the host's own report (common.v2.Host and its Build).
HOST_LABELS = ["os", "platform", "platform_family", "platform_version", "kernel_version", "git_version",
               "git_commit", "go_version", "build_platform"]  # fmt: skip
_PLATFORM = f"{platform.system().lower()}-{platform.machine()}"


def peer_labels(priority: int, host_type: HostType) -> tuple[str, str, str]:
    """Dragonfly's (priority, task_type, host_type) labels of a peer (standard tasks only)."""
    return (f"LEVEL{priority}", "STANDARD", _HOST_TYPE.get(host_type, "normal"))


def _item(values: Sequence[float], index: int) -> float:
    return float(values[index])


_LAG_BUCKETS_MS = (1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000)
_SCHEDULE_BUCKETS_MS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000)


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # (id of the counter, labels) -> child
        self._children: dict[tuple[int, object], Counter] = {}
        self._lag_max = 0.0
        r = self.registry
        self.announce_peer = Counter(
            PREFIX + "announce_peer_request_total", "AnnouncePeer requests by type", ["type"], registry=r
        )
        self.announce_peer_streams = Counter(
            DRAGONFLY + "announce_peer_total", "Counter of the number of the announcing peer.", registry=r
        )
        self.concurrent_schedule = Gauge(
            DRAGONFLY + "concurrent_schedule_total",
            "Gauge of the number of concurrent of the scheduling (open AnnouncePeer streams).",
            registry=r,
        )
        self.register_peer = Counter(
            DRAGONFLY + "register_peer_total", "Counter of the number of the register peer.", PEER_LABELS,
            registry=r,
        )  # fmt: skip
        self.announce_host = Counter(
            DRAGONFLY + "announce_host_total",
            "Counter of the number of the announce host.",
            HOST_LABELS,
            registry=r,
        )
        self.peer_started = Counter(
            DRAGONFLY + "download_peer_started_total",
            "Counter of the number of the download peer started.",
            PEER_LABELS,
            registry=r,
        )
        self.peer_back_to_source_started = Counter(
            DRAGONFLY + "download_peer_back_to_source_started_total",
            "Counter of the number of the download peer back-to-source started.",
            PEER_LABELS,
            registry=r,
        )
        version = Gauge(
            DRAGONFLY + "version",
            "Version info of the service.",
            ["major", "minor", "git_version", "git_commit", "platform", "build_time", "go_version", "go_tags",
             "go_gcflags"],
            registry=r,
        )  # fmt: skip
        major, minor = [*__version__.split("."), ""][:2]
        version.labels(major, minor, __version__, "", _PLATFORM, "", "", "", "").set(1)
        self.schedule_duration = Histogram(
            DRAGONFLY + "schedule_duration_milliseconds",
            "Time to take one scheduling decision, in milliseconds",
            buckets=_SCHEDULE_BUCKETS_MS,
            registry=r,
        )
        self.decisions = Counter(
            PREFIX + "schedule_decision_total", "Scheduling decisions by kind", ["kind"], registry=r
        )
        self.back_to_source = Counter(PREFIX + "back_to_source_total", "Peers sent to the origin", registry=r)
        self.seed_trigger = Counter(
            PREFIX + "seed_trigger_total", "Seed peer downloads triggered", ["result"], registry=r
        )
        self.peer_finished = Counter(
            DRAGONFLY + "download_peer_finished_total",
            "Peers that ended their download, succeeded or failed.",
            PEER_LABELS,
            registry=r,
        )
        self.peer_failed = Counter(
            DRAGONFLY + "download_peer_finished_failure_total", "Peers that failed.", PEER_LABELS, registry=r
        )
        self.loop_lag = Histogram(
            PREFIX + "event_loop_lag_milliseconds",
            "How late the event loop ran a 50 ms timer, in milliseconds (answers wait behind this)",
            buckets=_LAG_BUCKETS_MS,
            registry=r,
        )
        self.loop_lag_max = Gauge(
            PREFIX + "event_loop_lag_max_milliseconds",
            "Longest event-loop lag seen, in milliseconds",
            registry=r,
        )
        self.hosts = Gauge(PREFIX + "hosts", "Hosts known", registry=r)
        self.peers = Gauge(PREFIX + "peers", "Peers known", registry=r)
        self.tasks = Gauge(PREFIX + "tasks", "Tasks known", registry=r)

    def count(self, counter: Counter, label: str) -> None:
        """``counter.labels(label).inc()``, looking the child up once: this runs for every
        AnnouncePeer message, and ``labels()`` takes a lock and builds a key each time."""
        key = (id(counter), label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(label)
        child.inc()

    def count_peer(self, counter: Counter, priority: int, host_type: HostType) -> None:
        """``counter.labels(*peer_labels(...)).inc()`` with the child looked up once."""
        key = (id(counter), (priority, int(host_type)))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = counter.labels(*peer_labels(priority, host_type))
        child.inc()

    def peer_done(self, priority: int, host_type: HostType, *, ok: bool) -> None:
        """A peer ended: Dragonfly counts every end as finished, and the failed ones again."""
        self.count_peer(self.peer_finished, priority, host_type)
        if not ok:
            self.count_peer(self.peer_failed, priority, host_type)

    def observe_loop_lag(self, ms: float) -> None:
        self.loop_lag.observe(ms)
        if ms > self._lag_max:
            self._lag_max = ms
            self.loop_lag_max.set(ms)

    def bind_gc(self, pauses: GCPauses) -> None:
        """Export the garbage collector's pauses (a stopped event loop is latency for every peer)."""
        count = Gauge(
            PREFIX + "gc_collections", "Garbage collections run", ["generation"], registry=self.registry
        )
        total = Gauge(
            PREFIX + "gc_pause_milliseconds_sum",
            "Time the garbage collector stopped the process, in milliseconds",
            ["generation"],
            registry=self.registry,
        )
        worst = Gauge(
            PREFIX + "gc_pause_milliseconds_max",
            "Longest garbage-collector pause, in milliseconds",
            ["generation"],
            registry=self.registry,
        )
        for gen in range(3):
            label = str(gen)
            count.labels(label).set_function(partial(_item, pauses.count, gen))
            total.labels(label).set_function(partial(_item, pauses.total_ms, gen))
            worst.labels(label).set_function(partial(_item, pauses.max_ms, gen))

    def bind_sizes(
        self, hosts: Callable[[], float], peers: Callable[[], float], tasks: Callable[[], float]
    ) -> None:
        """Make the size gauges read the live resources at scrape time."""
        self.hosts.set_function(hosts)
        self.peers.set_function(peers)
        self.tasks.set_function(tasks)

    def app(self) -> web.Application:
        return metrics_app(self.registry)
