"""Prometheus metrics of the proxy, registered on the daemon's registry.

Requests are counted under Dragonfly's client names (``dragonfly_client_proxy_request_*``),
with Damselfly's ``route`` and ``status`` labels on the total (a ``sum()`` is
Dragonfly's unlabelled counter); the rest are ``damselfly_daemon_proxy_*``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

CLIENT = "dragonfly_client"
PREFIX = "damselfly_daemon_proxy"


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry or CollectorRegistry()
        self.request_total = Counter(
            f"{CLIENT}_proxy_request_total",
            "Requests to the mirror/proxy, by route (p2p, direct, connect, tunnel, refused) and status.",
            ["route", "status"],
            registry=r,
        )
        self.request_failure_total = Counter(
            f"{CLIENT}_proxy_request_failure_total",
            "Requests to the mirror/proxy that were refused or failed (a 5xx answer).",
            registry=r,
        )
        self.via_dfdaemon_total = Counter(
            f"{CLIENT}_proxy_request_via_dfdaemon_total",
            "Requests to the mirror/proxy answered through the swarm (route p2p).",
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
        if route == "refused" or status >= 500:
            self.request_failure_total.inc()
        elif route == "p2p":
            self.via_dfdaemon_total.inc()
