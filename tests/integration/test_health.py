"""``grpc.health.v1`` on every gRPC server, checked as Dragonfly's parts check it.

Dragonfly's dfdaemon keeps only schedulers whose ``Check(service="")`` answers
SERVING, and dfget checks ``dfdaemon.v2.DfdaemonDownload`` on the daemon's unix
socket (``dragonfly-client/src/dynconfig/local.rs``, ``src/grpc/health.rs``).
Real processes; the checks go over the ports and socket they bound.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from helpers.processes import Procs, short_tempdir

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.fixture(scope="module")
def procs() -> Iterator[Procs]:
    root = short_tempdir("dfh-")
    p = Procs(root)
    try:
        yield p
    finally:
        p.close()
        shutil.rmtree(root, ignore_errors=True)


def _check(target: str, service: str) -> tuple[grpc.StatusCode, int]:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        except grpc.RpcError as e:
            return e.code(), -1
        return grpc.StatusCode.OK, answer.status


def test_scheduler_and_daemon_answer_health_checks(procs: Procs) -> None:
    scheduler = procs.scheduler()
    scheduler_target = f"127.0.0.1:{scheduler.ready['grpc_port']}"
    daemon = procs.daemon("peer", scheduler_port=int(scheduler.ready["grpc_port"]))
    upload_target = f"127.0.0.1:{daemon.ready['upload_port']}"
    socket_target = f"unix:{daemon.ready['socket']}"

    assert _check(scheduler_target, "") == (grpc.StatusCode.OK, SERVING)
    assert _check(scheduler_target, "scheduler.v2.Scheduler") == (grpc.StatusCode.OK, SERVING)
    assert _check(upload_target, "") == (grpc.StatusCode.OK, SERVING)
    assert _check(upload_target, "dfdaemon.v2.DfdaemonUpload") == (grpc.StatusCode.OK, SERVING)
    assert _check(socket_target, "dfdaemon.v2.DfdaemonDownload") == (grpc.StatusCode.OK, SERVING)
    # Damselfly's servers say they speak its wire extensions; a Dragonfly server would not know the name.
    assert _check(scheduler_target, "damselfly.v1.Extensions") == (grpc.StatusCode.OK, SERVING)
    assert _check(upload_target, "damselfly.v1.Extensions") == (grpc.StatusCode.OK, SERVING)
    # A service a server does not carry is unknown to its health service, as in gRPC's own.
    assert _check(scheduler_target, "dfdaemon.v2.DfdaemonUpload")[0] == grpc.StatusCode.NOT_FOUND
    assert _check(upload_target, "scheduler.v2.Scheduler")[0] == grpc.StatusCode.NOT_FOUND
