"""Prometheus metrics of the proxy, registered on the daemon's registry (``damselfly_daemon_proxy_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

PREFIX = "damselfly_daemon_proxy"


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.request_total = Counter(
            f"{PREFIX}_request",
            "Requests to the mirror/proxy, by route (p2p, direct, connect, refused) and status.",
            ["route", "status"],
            registry=r,
        )
        self.p2p_bytes = Counter(
            f"{PREFIX}_p2p_traffic_bytes", "Blob bytes served to clients from the swarm's store.", registry=r
        )
        self.read_ahead = Counter(
            f"{PREFIX}_read_ahead",
            "Read-ahead: blobs started before a client asked (started); asked blobs after which "
            "none was (asked_blob_failed; no_order: no manifest through this proxy listed it).",
            ["result"],
            registry=r,
        )

    def request(self, route: str, status: int) -> None:
        self.request_total.labels(route, str(status)).inc()
