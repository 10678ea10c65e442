"""Identity and authorization under mTLS, with real processes: a host is its certificate.

Certificates from one CA (``damselfly certs``): the scheduler's (127.0.0.1, DNS
``sched.test``), a seed's and a peer's (127.0.0.1), ``rogue`` (127.0.0.1, a host like any
other), ``far`` (only 10.9.9.9) and ``ops`` (an admin, no IP). The scheduler allows seeds
only to ``seed`` (``security.seedPeers``) and administration to ``ops``
(``security.admins``); the daemons obey only ``sched.test`` (``scheduler.certificateName``).

- an announce whose IP is not among the certificate's IP SANs is refused, and so is a seed
  from a certificate not in the allow-list: neither gets a preheat;
- a host ID belongs to the certificate that announced it first: another certificate cannot
  announce it, delete it or its tasks; the host itself and an admin may;
- a daemon refuses DownloadTask, the deletes and the persistent cache download from any
  certificate but its scheduler's (PERMISSION_DENIED, also for an unknown task), while the
  scheduler's own calls work: a dfget goes through the seed, and an admin's preheat reaches it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from damselfly.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from damselfly.runtime.children import ChildProcess
from damselfly.security.certs import issue, make_ca
from damselfly.units import MiB
from helpers.metrics import sample_now
from helpers.processes import OriginProcess, Procs, random_file, run_dfget, sha256_of, short_tempdir

pytestmark = pytest.mark.integration

SIZE = 9 * MiB
SECRET = "Bearer s3cret-registry-token"
NAMES = {
    "scheduler": (["127.0.0.1"], ["sched.test"]),
    "seed": (["127.0.0.1"], []),
    "peer": (["127.0.0.1"], []),
    "rogue": (["127.0.0.1"], []),
    "far": (["10.9.9.9"], []),
    "ops": ([], ["ops.test"]),
}


@dataclass
class Fleet:
    procs: Procs
    certs: Path
    scheduler: ChildProcess
    seed: ChildProcess
    peer: ChildProcess
    origin: OriginProcess
    origin_dir: Path

    def credentials(self, name: str) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=(self.certs / "ca" / "ca.crt").read_bytes(),
            private_key=(self.certs / name / f"{name}.key").read_bytes(),
            certificate_chain=(self.certs / name / f"{name}.crt").read_bytes(),
        )

    def channel(self, name: str, port: int | None = None) -> grpc.Channel:
        port = port or int(self.scheduler.ready["grpc_port"])
        return grpc.secure_channel(f"127.0.0.1:{port}", self.credentials(name))

    def logs(self) -> str:
        return "\n".join(f"--- {c.name}\n{c.log_tail(20)}" for c in self.procs.children)


def tls_yaml(certs: Path, name: str, extra: str = "") -> str:
    return (
        f"tls:\n  caCert: {certs / 'ca' / 'ca.crt'}\n  cert: {certs / name / f'{name}.crt'}\n"
        f"  key: {certs / name / f'{name}.key'}\n{extra}"
    )


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    root = short_tempdir("authz-tls-")
    procs = Procs(root)
    try:
        certs = root / "certs"
        make_ca(certs / "ca")
        for name, (ips, dns) in NAMES.items():
            issue(certs / "ca", name, ips=ips, dns=dns, out=certs / name)
        (root / "scheduler.yaml").write_text(
            tls_yaml(certs, "scheduler", "security:\n  seedPeers: [seed]\n  admins: [ops]\n")
        )
        daemon_extra = "storage:\n  localShare: false\nscheduler:\n  certificateName: sched.test\n"
        for name in ("seed", "peer"):
            (root / f"{name}.yaml").write_text(tls_yaml(certs, name, daemon_extra))
        origin_dir = root / "origin"
        origin_dir.mkdir()
        origin = procs.origin(origin_dir)
        scheduler = procs.scheduler(config=root / "scheduler.yaml")
        port = int(scheduler.ready["grpc_port"])
        seed = procs.daemon("seed", scheduler_port=port, seed=True, config=root / "seed.yaml")
        peer = procs.daemon("peer", scheduler_port=port, config=root / "peer.yaml")
        yield Fleet(procs, certs, scheduler, seed, peer, origin, origin_dir)
    finally:
        procs.close()
        shutil.rmtree(root, ignore_errors=True)


class RecordingUpload(dfdaemon_pb2_grpc.DfdaemonUploadServicer):  # type: ignore[misc]
    """A rogue daemon's upload port (over mTLS, its own certificate): records DownloadTask headers."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    def DownloadTask(self, request: Any, context: Any) -> Iterator[Any]:
        self.headers.append(dict(request.download.request_header))
        context.abort(grpc.StatusCode.INTERNAL, "rogue")
        yield from ()


@pytest.fixture(scope="module")
def rogue_upload(fleet: Fleet) -> Iterator[tuple[RecordingUpload, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    recorder = RecordingUpload()
    dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(recorder, server)
    rogue = fleet.certs / "rogue"
    credentials = grpc.ssl_server_credentials(
        [((rogue / "rogue.key").read_bytes(), (rogue / "rogue.crt").read_bytes())],
        root_certificates=(fleet.certs / "ca" / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield recorder, port
    finally:
        server.stop(None)


def code(fn: Any, request: Any) -> grpc.StatusCode:
    try:
        result = fn(request, timeout=30)
        if not hasattr(result, "ByteSize"):  # a server stream: read it through
            list(result)
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def announce(host_id: str, ip: str, *, seed: bool = False, port: int = 4000) -> Any:
    return scheduler_pb2.AnnounceHostRequest(
        host=common_pb2.Host(
            id=host_id, type=1 if seed else 0, hostname=host_id, ip=ip, port=port, download_port=port
        )
    )


def hosts(fleet: Fleet) -> dict[str, Any]:
    with fleet.channel("ops") as ch:
        listed = scheduler_pb2_grpc.SchedulerStub(ch).ListHosts(scheduler_pb2.ListHostsRequest(), timeout=10)
    return {h.id: h for h in listed.hosts}


def test_announces_are_bound_to_the_certificate(
    fleet: Fleet, rogue_upload: tuple[RecordingUpload, int]
) -> None:
    denied = grpc.StatusCode.PERMISSION_DENIED
    _, rogue_port = rogue_upload
    with fleet.channel("far") as ch:
        # Its certificate says 10.9.9.9: it may not claim 127.0.0.1 (the seed's address).
        far = announce("0-far", "127.0.0.1", seed=True, port=rogue_port)
        assert code(scheduler_pb2_grpc.SchedulerStub(ch).AnnounceHost, far) == denied
    with fleet.channel("rogue") as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        # Not in security.seedPeers: no seed, whatever the ID (one that sorts first, its own address).
        rogue = announce("0-rogue-seed", "127.0.0.1", seed=True, port=rogue_port)
        assert code(stub.AnnounceHost, rogue) == denied
        assert code(stub.AnnounceHost, announce("127.0.0.1-rogue", "127.0.0.1")) == grpc.StatusCode.OK
    listed = hosts(fleet)
    assert "0-far" not in listed and "0-rogue-seed" not in listed and "127.0.0.1-rogue" in listed
    seeds = [h for h in listed.values() if h.type != 0]
    assert len(seeds) == 1 and seeds[0].hostname.endswith("-seed"), listed


def test_a_host_id_is_its_first_certificates_and_only_it_or_an_admin_deletes(fleet: Fleet) -> None:
    denied = grpc.StatusCode.PERMISSION_DENIED
    seed_id = next(h.id for h in hosts(fleet).values() if h.type != 0)
    with fleet.channel("rogue") as ch:
        stub = scheduler_pb2_grpc.SchedulerStub(ch)
        # The real seed's ID, at the same (certified) address, as a normal host: still not the rogue's.
        assert code(stub.AnnounceHost, announce(seed_id, "127.0.0.1")) == denied
        assert code(stub.DeleteHost, scheduler_pb2.DeleteHostRequest(host_id=seed_id)) == denied
        delete_task = scheduler_pb2.DeleteTaskRequest(host_id=seed_id, task_id="a" * 64)
        assert code(stub.DeleteTask, delete_task) == denied
        preheat = scheduler_pb2.PreheatFileRequest(url=fleet.origin.url("x.bin"), scope="all_seed_peers")
        assert code(stub.PreheatFile, preheat) == denied
        # Its own host it may delete.
        assert code(stub.AnnounceHost, announce("127.0.0.1-rogue2", "127.0.0.1")) == grpc.StatusCode.OK
        assert code(stub.DeleteHost, scheduler_pb2.DeleteHostRequest(host_id="127.0.0.1-rogue2")) == (
            grpc.StatusCode.OK
        )
    assert seed_id in hosts(fleet) and "127.0.0.1-rogue2" not in hosts(fleet)
    with fleet.channel("rogue") as ch:
        assert (
            code(scheduler_pb2_grpc.SchedulerStub(ch).AnnounceHost, announce("127.0.0.1-rogue3", "127.0.0.1"))
            == grpc.StatusCode.OK
        )
        assert (
            code(scheduler_pb2_grpc.SchedulerStub(ch).AnnounceHost, announce("127.0.0.1-rogue4", "127.0.0.1"))
            == grpc.StatusCode.OK
        )
    # An admin may delete another's host: one named in security.admins, and the scheduler's own certificate.
    for admin, victim in (("ops", "127.0.0.1-rogue3"), ("scheduler", "127.0.0.1-rogue4")):
        with fleet.channel(admin) as ch:
            stub = scheduler_pb2_grpc.SchedulerStub(ch)
            assert (
                code(stub.DeleteHost, scheduler_pb2.DeleteHostRequest(host_id=victim)) == grpc.StatusCode.OK
            )
        assert victim not in hosts(fleet)


ACTING = {
    "DownloadTask": dfdaemon_pb2.DownloadTaskRequest(
        download=common_pb2.Download(url="http://127.0.0.1:9/x", type=0, priority=0, need_back_to_source=True)
    ),
    "DeleteTask": dfdaemon_pb2.DeleteTaskRequest(task_id="c" * 64),
    "DownloadPersistentCacheTask": dfdaemon_pb2.DownloadPersistentCacheTaskRequest(task_id="d" * 64),
    "DeletePersistentCacheTask": dfdaemon_pb2.DeletePersistentCacheTaskRequest(task_id="e" * 64),
}


@pytest.mark.parametrize("method", sorted(ACTING))
def test_a_daemon_obeys_only_its_schedulers_certificate(fleet: Fleet, method: str) -> None:
    for daemon in (fleet.seed, fleet.peer):
        port = int(daemon.ready["upload_port"])
        # rogue's certificate even names the daemons' scheduler address (127.0.0.1).
        for who in ("rogue", "peer", "ops"):
            with fleet.channel(who, port) as ch:
                stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(ch)
                assert code(getattr(stub, method), ACTING[method]) == grpc.StatusCode.PERMISSION_DENIED, (
                    daemon.name,
                    who,
                )
    # The scheduler's certificate gets past the gate: the request is looked at.
    with fleet.channel("scheduler", int(fleet.seed.ready["upload_port"])) as ch:
        stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(ch)
        if method == "DeleteTask":
            assert code(stub.DeleteTask, ACTING[method]) not in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.OK,
            )
        if method == "DeletePersistentCacheTask":
            assert code(stub.DeletePersistentCacheTask, ACTING[method]) == grpc.StatusCode.OK


def test_the_scheduler_still_commands_the_seed_and_an_admins_preheat_reaches_it(
    fleet: Fleet, rogue_upload: tuple[RecordingUpload, int], tmp_path: Path
) -> None:
    digest = random_file(fleet.origin_dir / "blob.bin", SIZE)
    out = tmp_path / "out.bin"
    r = run_dfget(fleet.origin.url("blob.bin"), out, fleet.peer.ready["socket"])
    assert r.returncode == 0, r.stderr + fleet.logs()
    assert sha256_of(out) == digest
    peer_metrics = int(fleet.peer.ready["metrics_port"])
    from_peers = sample_now(peer_metrics, "dragonfly_client_download_traffic", type="REMOTE_PEER")
    assert from_peers == SIZE, fleet.logs()
    assert fleet.origin.bytes_for("/blob.bin") == SIZE  # once, by the seed
    random_file(fleet.origin_dir / "preheat.bin", 2 * MiB)
    with fleet.channel("ops") as ch:
        scheduler_pb2_grpc.SchedulerStub(ch).PreheatFile(
            scheduler_pb2.PreheatFileRequest(
                url=fleet.origin.url("preheat.bin"), scope="all_seed_peers", header={"Authorization": SECRET}
            ),
            timeout=60,
        )
    assert fleet.origin.bytes_for("/preheat.bin") == 2 * MiB
    # The refused "seeds" never got it, nor the credentials.
    assert rogue_upload[0].headers == []
