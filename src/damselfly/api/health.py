"""``grpc.health.v1.Health`` on every gRPC server, as Dragonfly's parts expect it.

Dragonfly's Rust dfdaemon checks each scheduler with ``Check(service="")`` and
uses only those answering SERVING (``dragonfly-client/src/dynconfig/*.rs``);
its servers report the overall status ``""`` and each service by its full
name (``dfdaemon.v2.DfdaemonDownload``, ``dfdaemon.v2.DfdaemonUpload``), and
dfget checks ``dfdaemon.v2.DfdaemonDownload`` on the unix socket before it
downloads (``dragonfly-client/src/grpc/health.rs``). The Go scheduler serves
the standard health service beside ``scheduler.v2.Scheduler``.

Damselfly's servers also mark :data:`DAMSELFLY_EXTENSIONS` SERVING: a client
that finds it may use Damselfly's wire extensions; a Dragonfly server answers
NOT_FOUND, and the client speaks only Dragonfly's wire to it.

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
# Not a gRPC service: a name a Damselfly server marks SERVING beside its real
# services, so a Damselfly client can tell it may use Damselfly's wire
# extensions there (a Dragonfly server answers NOT_FOUND for it).
DAMSELFLY_EXTENSIONS = "damselfly.v1.Extensions"


class Health:
    """The health service of one gRPC server, naming the services that server carries."""

    def __init__(self, server: Any, services: Sequence[str], *, extensions: bool = True) -> None:
        self._servicer = HealthServicer()
        self._services = ("", *services, *((DAMSELFLY_EXTENSIONS,) if extensions else ()))
        health_pb2_grpc.add_HealthServicer_to_server(self._servicer, server)

    async def serving(self) -> None:
        """The server has started: every service it carries answers SERVING."""
        for name in self._services:
            await self._servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stopping(self) -> None:
        """The server is about to stop: NOT_SERVING from now on, for good."""
        await self._servicer.enter_graceful_shutdown()
