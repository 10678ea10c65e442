"""Identity and authorization with TLS off, with real processes: a host is who it calls from.

A scheduler (admins: 127.0.0.1 only), a seed and a peer run on 127.0.0.1; other hosts are
played from 127.0.0.2 and 127.0.0.3 (:mod:`helpers.grpc_from` binds the source address):

- an announce whose IP is not the address it calls from is refused, so a rogue "seed" never
  gets a preheat, nor the registry credentials that come with it (a fake upload server
  records what reaches it);
- a host ID belongs to its first announcer: another address cannot take it over nor delete
  it, while the host itself may;
- a daemon acts (downloads, deletes) only for the address of its configured scheduler: from
  elsewhere PERMISSION_DENIED, before the request is looked at (no NOT_FOUND for an unknown
  task), while peers' calls stay open; the real scheduler still has the seed fetch a task;
- a dual-stack scheduler sees IPv4 callers as ``::ffff:a.b.c.d`` and compares them as IPv4;
- a bad ``security.*`` entry refuses the start with one line naming the key.
mTLS: tests/integration/test_authz_mtls.py.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from scheduler_harness import running_scheduler

from damselfly.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from damselfly.runtime.children import ChildProcess, python_module_command
from damselfly.units import MiB
from helpers.grpc_from import acall_from, call_from
from helpers.metrics import sample_now
from helpers.processes import OriginProcess, Procs, random_file, run_dfget, sha256_of, short_tempdir

pytestmark = pytest.mark.integration

SCHED = "/scheduler.v2.Scheduler/"
UPLOAD = "/dfdaemon.v2.DfdaemonUpload/"
SECRET = "Bearer s3cret-registry-token"


@dataclass
class Plain:
    procs: Procs
    scheduler: ChildProcess
    seed: ChildProcess
    peer: ChildProcess
    origin: OriginProcess
    origin_dir: Path

    @property
    def port(self) -> int:
        return int(self.scheduler.ready["grpc_port"])

    def stub(self, channel: grpc.Channel) -> Any:
        return scheduler_pb2_grpc.SchedulerStub(channel)

    def logs(self) -> str:
        return "\n".join(f"--- {c.name}\n{c.log_tail(20)}" for c in self.procs.children)


@pytest.fixture(scope="module")
def plain() -> Iterator[Plain]:
    root = short_tempdir("authz-")
    procs = Procs(root)
    try:
        config = root / "scheduler.yaml"
        config.write_text("security:\n  adminAddresses: [127.0.0.1]\n")
        origin_dir = root / "origin"
        origin_dir.mkdir()
        origin = procs.origin(origin_dir)
        scheduler = procs.scheduler(config=config)
        port = int(scheduler.ready["grpc_port"])
        seed = procs.daemon("seed", scheduler_port=port, seed=True)
        peer = procs.daemon("peer", scheduler_port=port)
        yield Plain(procs, scheduler, seed, peer, origin, origin_dir)
    finally:
        procs.close()
        shutil.rmtree(root, ignore_errors=True)


def host(host_id: str, ip: str, *, port: int = 4000, seed: bool = False) -> Any:
    return common_pb2.Host(
        id=host_id, type=1 if seed else 0, hostname=host_id, ip=ip, port=port, download_port=port
    )


def announce(host_pb: Any) -> Any:
    return scheduler_pb2.AnnounceHostRequest(host=host_pb)


def grpc_code(fn: Any, *args: Any, **kwargs: Any) -> grpc.StatusCode:
    try:
        fn(*args, timeout=10, **kwargs)
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def host_ids(plain: Plain) -> set[str]:
    with grpc.insecure_channel(f"127.0.0.1:{plain.port}") as ch:
        hosts = plain.stub(ch).ListHosts(scheduler_pb2.ListHostsRequest(), timeout=10).hosts
    return {h.id for h in hosts}


class RecordingUpload(dfdaemon_pb2_grpc.DfdaemonUploadServicer):  # type: ignore[misc]
    """A rogue daemon's upload port: records every DownloadTask's request header."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    def DownloadTask(self, request: Any, context: Any) -> Iterator[Any]:
        self.headers.append(dict(request.download.request_header))
        context.abort(grpc.StatusCode.INTERNAL, "rogue")
        yield from ()


@pytest.fixture
def rogue_upload() -> Iterator[tuple[RecordingUpload, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    recorder = RecordingUpload()
    dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(recorder, server)
    port = server.add_insecure_port("127.0.0.2:0")
    server.start()
    try:
        yield recorder, port
    finally:
        server.stop(None)


def test_a_rogue_seed_from_another_address_is_refused_and_never_gets_preheat_credentials(
    plain: Plain, rogue_upload: tuple[RecordingUpload, int]
) -> None:
    recorder, rogue_port = rogue_upload
    # Sorts before the real seed, claims to be a seed at 127.0.0.2 while calling from 127.0.0.1.
    rogue = host("0000-rogue-seed", "127.0.0.2", port=rogue_port, seed=True)
    with grpc.insecure_channel(f"127.0.0.1:{plain.port}") as ch:
        assert grpc_code(plain.stub(ch).AnnounceHost, announce(rogue)) == grpc.StatusCode.PERMISSION_DENIED
    # Nor from a third address.
    status, _ = call_from("127.0.0.3", plain.port, SCHED + "AnnounceHost", announce(rogue))
    assert status == "PERMISSION_DENIED"
    assert "0000-rogue-seed" not in host_ids(plain)

    random_file(plain.origin_dir / "preheat.bin", 2 * MiB)
    preheat = scheduler_pb2.PreheatFileRequest(
        url=plain.origin.url("preheat.bin"), scope="all_seed_peers", header={"Authorization": SECRET}
    )
    # Only an admin preheats: not a host elsewhere.
    status, _ = call_from("127.0.0.2", plain.port, SCHED + "PreheatFile", preheat)
    assert status == "PERMISSION_DENIED"
    with grpc.insecure_channel(f"127.0.0.1:{plain.port}") as ch:
        plain.stub(ch).PreheatFile(preheat, timeout=60)
    assert recorder.headers == [], "the rogue got a preheat"
    # The real seed did get it (so the preheat ran and chose among the seeds).
    assert plain.origin.bytes_for("/preheat.bin") == 2 * MiB, plain.logs()


def test_a_host_id_belongs_to_its_first_address_which_alone_deletes_it(plain: Plain) -> None:
    mine = host("127.0.0.2-mine", "127.0.0.2")
    status, _ = call_from("127.0.0.2", plain.port, SCHED + "AnnounceHost", announce(mine))
    assert status == "OK"
    # Another address cannot repoint it, even to its own (true) address...
    taken = host("127.0.0.2-mine", "127.0.0.3")
    status, _ = call_from("127.0.0.3", plain.port, SCHED + "AnnounceHost", announce(taken))
    assert status == "PERMISSION_DENIED"
    # ... nor delete it or its tasks.
    delete = scheduler_pb2.DeleteHostRequest(host_id=mine.id)
    assert call_from("127.0.0.3", plain.port, SCHED + "DeleteHost", delete)[0] == "PERMISSION_DENIED"
    delete_task = scheduler_pb2.DeleteTaskRequest(host_id=mine.id, task_id="a" * 64)
    assert call_from("127.0.0.3", plain.port, SCHED + "DeleteTask", delete_task)[0] == "PERMISSION_DENIED"
    delete_pc = scheduler_pb2.DeletePersistentCacheTaskRequest(host_id="nobody", task_id="b" * 64)
    assert call_from("127.0.0.3", plain.port, SCHED + "DeletePersistentCacheTask", delete_pc)[0] == (
        "PERMISSION_DENIED"
    )
    # Nor register peers or persistent cache uploads under it.
    register = scheduler_pb2.AnnouncePeerRequest(
        host_id=mine.id,
        task_id="a" * 64,
        peer_id=f"{mine.id}-p",
        register_peer_request=scheduler_pb2.RegisterPeerRequest(
            download=common_pb2.Download(url="http://x/y")
        ),
    )
    assert call_from("127.0.0.3", plain.port, SCHED + "AnnouncePeer", register)[0] == "PERMISSION_DENIED"
    upload = scheduler_pb2.UploadPersistentCacheTaskStartedRequest(
        host_id=mine.id, task_id="b" * 64, peer_id=f"{mine.id}-c", persistent_replica_count=1
    )
    status, _ = call_from("127.0.0.3", plain.port, SCHED + "UploadPersistentCacheTaskStarted", upload)
    assert status == "PERMISSION_DENIED"
    assert mine.id in host_ids(plain)
    # The host itself may.
    assert call_from("127.0.0.2", plain.port, SCHED + "DeleteHost", delete)[0] == "OK"
    assert mine.id not in host_ids(plain)
    # Read-only RPCs stay open to anyone.
    assert (
        call_from("127.0.0.3", plain.port, SCHED + "ListHosts", scheduler_pb2.ListHostsRequest())[0] == "OK"
    )


ACTING = {
    "DownloadTask": lambda url: dfdaemon_pb2.DownloadTaskRequest(
        download=common_pb2.Download(url=url, type=0, priority=0, need_back_to_source=True)
    ),
    "DeleteTask": lambda url: dfdaemon_pb2.DeleteTaskRequest(task_id="c" * 64),
    "DownloadPersistentCacheTask": lambda url: dfdaemon_pb2.DownloadPersistentCacheTaskRequest(
        task_id="d" * 64, persistent=True
    ),
    "DeletePersistentCacheTask": lambda url: dfdaemon_pb2.DeletePersistentCacheTaskRequest(task_id="e" * 64),
    "UpdatePersistentCacheTask": lambda url: dfdaemon_pb2.UpdatePersistentCacheTaskRequest(
        task_id="f" * 64, persistent=True
    ),
}


@pytest.mark.parametrize("method", sorted(ACTING))
def test_a_daemon_acts_only_for_its_schedulers_address(plain: Plain, method: str) -> None:
    random_file(plain.origin_dir / "stranger.bin", 64 * 1024)
    request = ACTING[method](plain.origin.url("stranger.bin"))
    for daemon in (plain.seed, plain.peer):
        port = int(daemon.ready["upload_port"])
        status, messages = call_from("127.0.0.2", port, UPLOAD + method, request)
        assert (status, messages) == ("PERMISSION_DENIED", []), daemon.name
    assert plain.origin.bytes_for("/stranger.bin") == 0
    # From the scheduler's address the request is looked at: an unknown task is no longer hidden.
    if method == "DeleteTask":
        with grpc.insecure_channel(f"127.0.0.1:{plain.seed.ready['upload_port']}") as ch:
            stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(ch)
            assert grpc_code(stub.DeleteTask, request) not in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.OK,
            )


def test_peers_calls_stay_open_to_any_address(plain: Plain) -> None:
    port = int(plain.seed.ready["upload_port"])
    status, _ = call_from(
        "127.0.0.2", port, UPLOAD + "StatTask", dfdaemon_pb2.StatTaskRequest(task_id="9" * 64)
    )
    assert status == "NOT_FOUND"


def test_the_real_scheduler_still_has_the_seed_fetch_a_task(plain: Plain, tmp_path: Path) -> None:
    size = 9 * MiB
    digest = random_file(plain.origin_dir / "swarm.bin", size)
    out = tmp_path / "out.bin"
    r = run_dfget(plain.origin.url("swarm.bin"), out, plain.peer.ready["socket"])
    assert r.returncode == 0, r.stderr + plain.logs()
    assert sha256_of(out) == digest
    # The seed downloaded it on the scheduler's DownloadTask and served the peer.
    assert sample_now(int(plain.seed.ready["metrics_port"]), "dragonfly_client_upload_traffic") >= size
    assert plain.origin.bytes_for("/swarm.bin") == size


async def test_a_dual_stack_scheduler_compares_v4_mapped_callers_as_ipv4(tmp_path: Path) -> None:
    async with running_scheduler(tmp_path, server={"ip": "::"}) as s:
        port = int(s.address.rsplit(":", 1)[1])
        # grpcio from 127.0.0.1: the scheduler sees ipv6:[::ffff:127.0.0.1]
        await s.stub.AnnounceHost(announce(host("127.0.0.1-h", "127.0.0.1")), timeout=10)
        status, _ = await acall_from(
            "127.0.0.2", port, SCHED + "AnnounceHost", announce(host("x", "127.0.0.1"))
        )
        assert status == "PERMISSION_DENIED"
        status, _ = await acall_from(
            "127.0.0.2", port, SCHED + "AnnounceHost", announce(host("y", "127.0.0.2"))
        )
        assert status == "OK"
        hosts = (await s.stub.ListHosts(scheduler_pb2.ListHostsRequest(), timeout=10)).hosts
        assert {h.id for h in hosts} == {"127.0.0.1-h", "y"}


def test_a_bad_security_entry_refuses_the_start_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "scheduler.yaml"
    config.write_text("security:\n  trustedNetworks: [10.0.0.0/33]\n")
    argv = python_module_command("damselfly", "scheduler", "--config", str(config), "--port", "0")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    why = "security.trustedNetworks: '10.0.0.0/33' is neither an IP address nor a CIDR network"
    assert r.stderr.strip().splitlines() == [f"damselfly scheduler: {why}"]
