"""The AnnouncePeer stream's own checks (authz.HostAuthority), read from a fake call: a stream
registers peers only of its caller's hosts and reports only on its own peers."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from sched_world import FakeClock

from damselfly.api import common_pb2, scheduler_pb2
from damselfly.config import SchedulerConfig
from damselfly.domain import HostInfo
from damselfly.errors import PermissionDenied
from damselfly.scheduler.resources import PeerState
from damselfly.scheduler.service import SchedulerService
from damselfly.scheduler.stream import Abort, PeerStream
from damselfly.security.authz import Caller

TASK = "f" * 64


class Call:
    """A plaintext AnnouncePeer call from ``ip`` that sends ``requests`` and then ends."""

    def __init__(self, ip: str, *requests: Any) -> None:
        self.ip = ip
        self.requests = list(requests)

    def peer(self) -> str:
        return f"ipv4:{self.ip}:40000"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    async def read(self) -> Any:
        return self.requests.pop(0) if self.requests else grpc.aio.EOF


def register(host: str, peer: str) -> Any:
    download = common_pb2.Download(url="http://o/f")
    return scheduler_pb2.AnnouncePeerRequest(
        host_id=host,
        task_id=TASK,
        peer_id=peer,
        register_peer_request=scheduler_pb2.RegisterPeerRequest(download=download),
    )


def failed(host: str, peer: str) -> Any:
    return scheduler_pb2.AnnouncePeerRequest(
        host_id=host,
        task_id=TASK,
        peer_id=peer,
        download_peer_failed_request=scheduler_pb2.DownloadPeerFailedRequest(description="x"),
    )


def service(admin_addresses: tuple[str, ...] = ()) -> SchedulerService:
    cfg = SchedulerConfig()
    cfg.security.admin_addresses = list(admin_addresses)
    clock = FakeClock()
    svc = SchedulerService(cfg, clock=clock)
    for name, ip in (("a", "10.0.0.1"), ("b", "10.0.0.2")):
        svc.authority.admit_host(Caller(ip, None), name, ip, seed=False)
        svc.res.upsert_host(HostInfo(id=name, hostname=name, ip=ip, port=1, download_port=2), clock())
    return svc


def aborted(stream: PeerStream[Any]) -> list[grpc.StatusCode]:
    return [m.code for m in stream.pending() if isinstance(m, Abort)]


async def test_a_stream_registers_peers_only_of_its_callers_host() -> None:
    svc = service()
    mine = PeerStream[Any]()
    await svc._read(Call("10.0.0.1", register("a", "pa")), mine)
    assert aborted(mine) == [] and "pa" in svc.res.peers
    theirs = PeerStream[Any]()
    await svc._read(Call("10.0.0.2", register("a", "pb")), theirs)
    assert aborted(theirs) == [grpc.StatusCode.PERMISSION_DENIED]
    assert "pb" not in svc.res.peers


async def test_a_stream_may_not_report_on_another_hosts_peer() -> None:
    svc = service()
    await svc._read(Call("10.0.0.1", register("a", "pa")), PeerStream[Any]())
    svc.res.set_state(svc.res.peer("pa"), PeerState.RUNNING, 0.0)
    stranger = PeerStream[Any]()
    # Host b's stream reports a's peer failed (claiming a's host ID or its own): refused.
    await svc._read(Call("10.0.0.2", register("b", "pb"), failed("a", "pa"), failed("b", "pa")), stranger)
    assert aborted(stranger) == [grpc.StatusCode.PERMISSION_DENIED]
    assert svc.res.peer("pa").state is PeerState.RUNNING
    # a's own report goes through.
    await svc._read(Call("10.0.0.1", failed("a", "pa")), PeerStream[Any]())
    assert svc.res.peer("pa").state is PeerState.FAILED


class Aborted(Exception):
    pass


class Unary(Call):
    """A unary call's context: ``abort`` raises, as grpc's does."""

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise Aborted(code, details)


async def test_a_host_id_outlives_its_host_until_an_admin_deletes_it() -> None:
    svc = service(admin_addresses=("10.9.0.0/16",))
    svc.res.delete_host("a")  # expired (its ID stays 10.0.0.1's)
    with pytest.raises(PermissionDenied, match="belongs to another caller"):
        svc.authority.admit_host(Caller("10.0.0.3", None), "a", "10.0.0.3", seed=False)
    delete = scheduler_pb2.DeleteHostRequest(host_id="a")
    with pytest.raises(Aborted) as refused:
        await svc.DeleteHost(delete, Unary("10.0.0.3"))
    assert refused.value.args[0] is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(Aborted) as gone:
        await svc.DeleteHost(delete, Unary("10.9.0.1"))
    assert gone.value.args[0] is grpc.StatusCode.NOT_FOUND  # as before: the host is gone...
    svc.authority.admit_host(Caller("10.0.0.3", None), "a", "10.0.0.3", seed=False)  # ... and its ID free
