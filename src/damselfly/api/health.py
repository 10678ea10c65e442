"""``grpc.health.v1.Health`` on every gRPC server, as Dragonfly's parts expect it.

Dragonfly's Rust dfdaemon checks each scheduler with ``Check(service="")`` and
uses only those answering SERVING (``dragonfly-client/src/dynconfig/*.rs``);
its servers report the overall status ``""`` and each service by its full
name (``dfdaemon.v2.DfdaemonDownload``, ``dfdaemon.v2.DfdaemonUpload``), and
dfget checks ``dfdaemon.v2.DfdaemonDownload`` on the unix socket before it
downloads (``dragonfly-client/src/grpc/health.rs``). The Go scheduler serves
the standard health service beside ``scheduler.v2.Scheduler``.

A server is marked SERVING once it has started and NOT_SERVING when it begins
to stop, so a checker moves away before the port closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

SCHEDULER = "scheduler.v2.Scheduler"
DFDAEMON_UPLOAD = "dfdaemon.v2.DfdaemonUpload"
DFDAEMON_DOWNLOAD = "dfdaemon.v2.DfdaemonDownload"
HEALTH = "grpc.health.v1.Health"


class Health:
    """The health service of one gRPC server, naming the services that server carries."""

    def __init__(self, server: Any, services: Sequence[str]) -> None:
        self._servicer = HealthServicer()
        self._services = ("", *services)
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    async def serving(self) -> None:
        """The server has started: every service it carries answers SERVING."""
        for name in self._services:
            await self._servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stopping(self) -> None:
        """The server is about to stop: NOT_SERVING from now on, for good."""
        await self._servicer.enter_graceful_shutdown()
