"""Prometheus metrics of one daemon (served by :func:`damselfly.process.metrics_app`).

Each daemon owns a private :class:`CollectorRegistry`, so several daemons can
run in one process (swarm tests) without colliding.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from ..domain import PieceInfo, TrafficType

PREFIX = "damselfly_daemon"


class DaemonMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.download_task_total = Counter(
            f"{PREFIX}_download_task", "Downloads started, by requester.", ["type"], registry=r
        )
        self.download_task_failure_total = Counter(
            f"{PREFIX}_download_task_failure", "Downloads that failed, by requester.", ["type"], registry=r
        )
        self.download_traffic = Counter(
            f"{PREFIX}_download_traffic_bytes",
            "Bytes downloaded, by where they came from.",
            ["type"],
            registry=r,
        )
        self.upload_traffic = Counter(
            f"{PREFIX}_upload_traffic_bytes", "Piece bytes served to peers.", registry=r
        )
        self.piece_failure_total = Counter(
            f"{PREFIX}_download_piece_failure", "Pieces that failed from a parent.", registry=r
        )
        self.tasks = Gauge(f"{PREFIX}_tasks", "Tasks in the piece store.", registry=r)
        self.running_tasks = Gauge(f"{PREFIX}_running_tasks", "Downloads in progress.", registry=r)
        self.store_bytes = Gauge(f"{PREFIX}_store_bytes", "Bytes the piece store uses.", registry=r)

    def on_piece(self, piece: PieceInfo) -> None:
        kind = {
            TrafficType.BACK_TO_SOURCE: "back_to_source",
            TrafficType.REMOTE_PEER: "remote_peer",
            TrafficType.LOCAL_PEER: "local_peer",
        }[piece.traffic_type]
        self.download_traffic.labels(kind).inc(piece.length)

    def on_upload(self, _task_id: str, nbytes: int) -> None:
        self.upload_traffic.inc(nbytes)
