"""Prometheus metrics of one daemon (served by :func:`damselfly.process.metrics_app`).

Where a metric means what one of Dragonfly's client (``dragonfly_client_*``)
means, it carries Dragonfly's name and labels, so its dashboards and alerts
work unchanged; the others are ``damselfly_daemon_*``. docs/METRICS.md lists
them all. Each daemon owns a private :class:`CollectorRegistry`, so several
daemons can run in one process (swarm tests) without colliding.
"""

from __future__ import annotations

import platform
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .. import __version__
from ..domain import PieceInfo, TrafficType

CLIENT = "dragonfly_client"
PREFIX = "damselfly_daemon"

# Dragonfly's label values: the TrafficType enum's protobuf names.
TRAFFIC_LABEL = {
    TrafficType.BACK_TO_SOURCE: "BACK_TO_SOURCE",
    TrafficType.REMOTE_PEER: "REMOTE_PEER",
    TrafficType.LOCAL_PEER: "LOCAL_PEER",
}
# As Dragonfly's client: 1 ms doubling 24 times (about 2.3 hours).
DURATION_BUCKETS_MS = tuple(float(2**i) for i in range(24))
_MIB = 1024 * 1024
# Upper bounds of Dragonfly's task size levels 1..19 (level 0: empty, 20: larger).
_SIZE_LEVELS = (1, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 8192, 16384, 32768, 65536, 131072,
                262144, 524288, 1048576)  # fmt: skip


def task_size_level(size: int) -> str:
    """Dragonfly's ``task_size_level`` label: 0 for empty, 1 below 1 MiB, ... 20 from 1 TiB."""
    if size <= 0:
        return "0"
    for level, mib in enumerate(_SIZE_LEVELS, start=1):
        if size < mib * _MIB:
            return str(level)
    return "20"


class RawCounter(Collector):
    """A counter exported under its name as given, without the ``_total`` that
    ``prometheus_client`` appends: Dragonfly's ``dragonfly_client_download_traffic``
    and ``..._upload_traffic`` have none, and dashboards query them so. Exported as
    ``untyped`` (the text format ties a counter's TYPE line to a ``_total`` name)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()  # the piece server counts from its threads too

    def inc(self, amount: float, *labels: str) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def collect(self) -> Iterator[Metric]:
        family = Metric(self.name, self.documentation, "unknown")
        with self._lock:
            for labels, value in self._values.items():
                family.add_sample(self.name, dict(zip(self.labelnames, labels, strict=True)), value)
        yield family


class DaemonMetrics:
    def __init__(self, store_dir: str | Path | None = None) -> None:
        r = self.registry = CollectorRegistry()
        self._store_dir = store_dir
        task_labels = ["type", "tag", "app", "priority"]
        version = Gauge(
            f"{CLIENT}_version",
            "Version info of the service.",
            ["git_version", "git_commit", "platform", "build_time"],
            registry=r,
        )
        version.labels(__version__, "", f"{platform.system().lower()}-{platform.machine()}", "").set(1)
        self.download_task_total = Counter(
            f"{CLIENT}_download_task_total",
            "Counter of the number of the download task.",
            task_labels,
            registry=r,
        )
        self.download_task_failure_total = Counter(
            f"{CLIENT}_download_task_failure_total",
            "Counter of the number of failed of the download task.",
            task_labels,
            registry=r,
        )
        self.download_task_duration = Histogram(
            f"{CLIENT}_download_task_duration_milliseconds",
            "Histogram of the download task duration.",
            ["task_type", "task_size_level"],
            buckets=DURATION_BUCKETS_MS,
            registry=r,
        )
        self.download_traffic = RawCounter(
            f"{CLIENT}_download_traffic",
            "Counter of the number of the download traffic.",
            ("type",),
        )
        r.register(self.download_traffic)
        self.upload_traffic = RawCounter(
            f"{CLIENT}_upload_traffic", "Counter of the number of the upload traffic."
        )
        r.register(self.upload_traffic)
        self.running_tasks = Gauge(
            f"{CLIENT}_concurrent_download_task_total",
            "Gauge of the number of concurrent of the download task.",
            registry=r,
        )
        self.disk_space = Gauge(f"{CLIENT}_disk_space_total", "Gauge of the disk space in bytes", registry=r)
        self.disk_usage = Gauge(
            f"{CLIENT}_disk_usage_space_total", "Gauge of the disk usage space in bytes", registry=r
        )
        self.tasks = Gauge(f"{PREFIX}_tasks", "Tasks in the piece store.", registry=r)
        self.store_bytes = Gauge(f"{PREFIX}_store_bytes", "Bytes the piece store uses.", registry=r)

    def on_piece(self, piece: PieceInfo) -> None:
        self.download_traffic.inc(piece.length, TRAFFIC_LABEL[piece.traffic_type])

    def on_upload(self, _task_id: str, nbytes: int) -> None:
        self.upload_traffic.inc(nbytes)

    @staticmethod
    def labels_of(download: Any) -> tuple[str, str, str, str]:
        """Dragonfly's download labels (type, tag, app, priority) of a ``common.v2.Download``."""
        return (str(download.type), download.tag, download.application, str(download.priority))

    def download_started(self, download: Any) -> tuple[str, str, str, str]:
        """Count a DownloadTask call; its labels, for :meth:`download_ended`."""
        labels = self.labels_of(download)
        self.download_task_total.labels(*labels).inc()
        return labels

    def download_ended(
        self, labels: tuple[str, str, str, str], *, ok: bool, size: int, seconds: float
    ) -> None:
        if ok:
            self.download_task_duration.labels(labels[0], task_size_level(size)).observe(seconds * 1000.0)
        else:
            self.download_task_failure_total.labels(*labels).inc()

    def refresh_disk(self) -> None:
        """The store's file system: its size and use (read at scrape time)."""
        if self._store_dir is None:
            return
        try:
            usage = shutil.disk_usage(self._store_dir)
        except OSError:
            return
        self.disk_space.set(usage.total)
        self.disk_usage.set(usage.used)
