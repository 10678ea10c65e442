"""mTLS where a certificate names a DNS name instead of the IP dialed (docs/TLS.md, "Fleets").

Schedulers given by name: a daemon resolves ``scheduler.addrs`` names to IPs and
dials those, checking the scheduler's certificate against the NAME. Processes: a
scheduler whose certificate carries only the DNS SAN ``localhost`` (no IP SAN),
a seed and a peer given ``--scheduler localhost:PORT``: they announce, the
scheduler has the seed fetch (its certificate passes the seed's scheduler gate
by that name) and the peer gets every piece from the seed over TLS. In one
process: a link made from the name ``localhost`` refuses a scheduler whose
certificate names 127.0.0.1 but not ``localhost``, and a link given the IP
checks the IP.

``tls.peerName``: daemons that share one certificate with only the DNS SAN
``peer.fleet.internal`` exchange pieces (piece port and peer gRPC) with the
name set, and refuse each other without it (their certificate names no IP).
Processes: such a seed and peer, and a scheduler with ``tls.peerName``, move a
file through the swarm.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import zlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from damselfly.api.health import Health
from damselfly.config import TLSConfig
from damselfly.daemon.scheduler_fleet import SchedulerFleet
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer.piece_client import PieceConnectionPool
from damselfly.daemon.transfer.piece_server import PieceServer
from damselfly.domain import PieceInfo
from damselfly.errors import PeerError
from damselfly.ids import task_id
from damselfly.runtime.children import ChildProcess, spawn
from damselfly.runtime.cluster import DaemonPorts, daemon_command
from damselfly.security.certs import issue, make_ca
from damselfly.security.tls import (
    TLSFiles,
    client_ssl_context,
    load_tls,
    peer_channel,
    peer_server_name,
    server_credentials,
    server_ssl_context,
)
from damselfly.units import MiB
from helpers.metrics import sample_now
from helpers.processes import READY_TIMEOUT, Procs, random_file, run_dfget, sha256_of, short_tempdir

pytestmark = pytest.mark.integration

SIZE = 6 * MiB  # two pieces
PEER_NAME = "peer.fleet.internal"
TID = task_id("http://example.com/tls-names")
PL = 256 * 1024


def _tls(ca: Path, root: Path, name: str, *, ips: tuple[str, ...] = (), peer_name: str = "") -> TLSFiles:
    out = issue(ca, name, ips=list(ips), out=root / name)
    config = TLSConfig(ca_cert=str(out.ca_cert), cert=str(out.cert), key=str(out.key), peer_name=peer_name)
    files = load_tls(config)
    assert files is not None
    return files


def _yaml(tls: TLSFiles, extra: str = "") -> str:
    name = f"  peerName: {tls.peer_name}\n" if tls.peer_name else ""
    return f"tls:\n  caCert: {tls.ca_cert}\n  cert: {tls.cert}\n  key: {tls.key}\n{name}{extra}"


# -- in one process: what a link checks --------------------------------------------------------


@dataclass
class Certs:
    node: TLSFiles  # a daemon's: IP SAN 127.0.0.1
    by_name: TLSFiles  # a scheduler's: DNS SAN "localhost" only
    by_ip: TLSFiles  # a scheduler's: IP SAN 127.0.0.1, DNS SAN "sched-ip" (not "localhost")
    shared: TLSFiles  # every daemon's under tls.peerName: DNS SAN peer.fleet.internal only
    shared_without_name: TLSFiles  # the same certificate, tls.peerName not set


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    make_ca(tmp_path / "ca")
    ca = tmp_path / "ca"
    shared = _tls(ca, tmp_path, PEER_NAME, peer_name=PEER_NAME)
    return Certs(
        node=_tls(ca, tmp_path, "node", ips=("127.0.0.1",)),
        by_name=_tls(ca, tmp_path, "localhost"),
        by_ip=_tls(ca, tmp_path, "sched-ip", ips=("127.0.0.1",)),
        shared=shared,
        shared_without_name=dataclasses.replace(shared, peer_name=""),
    )


async def _health_server(tls: TLSFiles) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    health = Health(server, [])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
    await server.start()
    await health.serving()
    return server, port


async def _link_up(addr: str, client: TLSFiles) -> tuple[str, bool]:
    """(the name the link checks, whether its health check passes) for a fleet given ``addr``."""
    fleet = SchedulerFleet([addr], credentials=client.channel_credentials, health_interval=60)
    try:
        await fleet.start()
        # Dialed by IP, whatever was configured: a name gives a link per address it resolves to
        # (Debian's /etc/hosts also maps localhost to ::1, where these servers do not listen).
        links = list(fleet.links.values())
        assert links and all(link.addr.startswith(("127.0.0.1:", "[::1]:")) for link in links), links
        assert len({link.target_name for link in links}) == 1  # every link checks the same name
        (link,) = [link for link in links if link.addr.startswith("127.0.0.1:")]
        return link.target_name, await link.check(timeout=5)
    finally:
        await fleet.close()


async def test_a_scheduler_given_by_name_is_checked_against_the_name(certs: Certs) -> None:
    named, named_port = await _health_server(certs.by_name)
    by_ip, ip_port = await _health_server(certs.by_ip)
    try:
        answers = {
            ("localhost", "name cert"): await _link_up(f"localhost:{named_port}", certs.node),
            ("localhost", "ip cert"): await _link_up(f"localhost:{ip_port}", certs.node),
            ("127.0.0.1", "ip cert"): await _link_up(f"127.0.0.1:{ip_port}", certs.node),
            ("127.0.0.1", "name cert"): await _link_up(f"127.0.0.1:{named_port}", certs.node),
        }
    finally:
        await named.stop(None)
        await by_ip.stop(None)
    assert answers == {
        ("localhost", "name cert"): ("localhost", True),
        # The certificate names the IP dialed, but not the name the IP came from: refused.
        ("localhost", "ip cert"): ("localhost", False),
        ("127.0.0.1", "ip cert"): ("", True),
        ("127.0.0.1", "name cert"): ("", False),
    }


@dataclass
class Parent:
    server: PieceServer
    port: int
    data: bytes
    grpc_port: int


def _hold(store: PieceStore, data: bytes) -> None:
    """``data`` as a finished task ``TID`` of ``PL``-byte pieces in ``store``."""
    store.create_task(TID)
    store.set_content_length(TID, len(data), PL)
    fd = store.open_write_fd(TID)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
    for n, offset in enumerate(range(0, len(data), PL)):
        chunk = data[offset : offset + PL]
        store.finish_piece(TID, PieceInfo(n, offset, len(chunk), f"crc32:{zlib.crc32(chunk)}"))
    store.mark_succeeded(TID)


@pytest.fixture
async def shared_parent(tmp_path: Path, certs: Certs) -> AsyncIterator[Parent]:
    """A daemon's piece port and a gRPC port, both with the shared certificate (no IP SAN)."""
    store = PieceStore(tmp_path / "parent")
    data = os.urandom(3 * PL + 17)
    _hold(store, data)
    server = PieceServer(store)
    port = await server.start("127.0.0.1", 0, ssl=server_ssl_context(certs.shared))
    grpc_server, grpc_port = await _health_server(certs.shared)
    yield Parent(server, port, data, grpc_port)
    await grpc_server.stop(None)
    await server.close()
    store.close()


async def _health_code(channel: grpc.aio.Channel) -> grpc.StatusCode:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


async def test_peer_name_lets_daemons_sharing_one_certificate_exchange_pieces(
    shared_parent: Parent, certs: Certs, tmp_path: Path
) -> None:
    data = shared_parent.data
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        # With tls.peerName: the parent's certificate is checked against the name, not 127.0.0.1.
        assert peer_server_name(certs.shared, "127.0.0.1") == PEER_NAME
        pool = PieceConnectionPool(
            tls=client_ssl_context(certs.shared), tls_name=peer_server_name(certs.shared, "127.0.0.1")
        )
        try:
            for n, offset in enumerate(range(0, len(data), PL)):
                length = min(PL, len(data) - offset)
                await pool.download_piece(
                    "127.0.0.1", shared_parent.port, TID, n, fd, offset, length, timeout=10
                )
        finally:
            await pool.close()
        assert os.pread(fd, len(data) + 1, 0) == data
        # Without it, the same certificates are refused: they name no IP.
        assert peer_server_name(certs.shared_without_name, "127.0.0.1") == "127.0.0.1"
        pool = PieceConnectionPool(tls=client_ssl_context(certs.shared_without_name))
        try:
            with pytest.raises(PeerError, match="certificate"):
                await pool.download_piece("127.0.0.1", shared_parent.port, TID, 0, fd, 0, 1024, timeout=5)
        finally:
            await pool.close()
    finally:
        os.close(fd)
    addr = f"127.0.0.1:{shared_parent.grpc_port}"
    assert await _health_code(peer_channel(addr, certs.shared)) is grpc.StatusCode.OK
    assert await _health_code(peer_channel(addr, certs.shared_without_name)) is grpc.StatusCode.UNAVAILABLE


# -- processes ------------------------------------------------------------------------------------


def _daemon(procs: Procs, name: str, scheduler: str, config: Path, *, seed: bool = False) -> ChildProcess:
    """A daemon (``Procs.daemon``'s, but given the scheduler address ``scheduler`` as is)."""
    argv = daemon_command(
        procs.root,
        name,
        scheduler_port=0,
        hostname=f"{name}-host",
        seed=seed,
        ports=DaemonPorts(),
        config=config,
    )
    argv[argv.index("127.0.0.1:0")] = scheduler
    child = spawn(
        name,
        argv,
        log_path=procs.root / "logs" / f"{name}.log",
        ready_file=procs.root / "run" / f"{name}.ready.json",
    )
    procs.children.append(child)
    child.wait_ready(READY_TIMEOUT)
    return child


def _swarm_download(procs: Procs, seed: ChildProcess, peer: ChildProcess, tmp: Path) -> None:
    """A dfget through ``peer``: every byte from ``seed``'s piece port (over TLS), none from the origin."""
    origin_dir = procs.root / "origin"
    origin_dir.mkdir(exist_ok=True)
    origin = procs.origin(origin_dir)
    digest = random_file(origin_dir / "blob.bin", SIZE)
    out = tmp / "out.bin"
    r = run_dfget(f"http://127.0.0.1:{origin.port}/blob.bin", out, peer.ready["socket"])
    logs = "\n".join(f"--- {c.name}\n{c.log_tail(20)}" for c in procs.children)
    assert r.returncode == 0, r.stderr + logs
    assert sha256_of(out) == digest
    metrics = int(peer.ready["metrics_port"])
    from_peers = sample_now(metrics, "dragonfly_client_download_traffic", type="REMOTE_PEER")
    from_origin = sample_now(metrics, "dragonfly_client_download_traffic", type="BACK_TO_SOURCE")
    assert (from_peers, from_origin) == (SIZE, 0), logs
    assert sample_now(int(seed.ready["metrics_port"]), "dragonfly_client_upload_traffic") >= SIZE


@pytest.fixture
def procs() -> Iterator[Procs]:
    root = short_tempdir("tlsn-")
    procs = Procs(root)
    try:
        yield procs
    finally:
        procs.close()
        shutil.rmtree(root, ignore_errors=True)


def test_daemons_given_the_scheduler_by_name_announce_and_download(procs: Procs, tmp_path: Path) -> None:
    root = procs.root
    make_ca(root / "ca")
    scheduler_tls = _tls(root / "ca", root / "certs", "localhost")  # DNS SAN localhost, no IP SAN
    node_tls = _tls(root / "ca", root / "certs", "node", ips=("127.0.0.1",))
    (root / "scheduler.yaml").write_text(_yaml(scheduler_tls))
    (root / "daemon.yaml").write_text(_yaml(node_tls, "storage:\n  localShare: false\n"))
    scheduler = procs.scheduler(config=root / "scheduler.yaml")
    addr = f"localhost:{scheduler.ready['grpc_port']}"
    seed = _daemon(procs, "seed", addr, root / "daemon.yaml", seed=True)
    peer = _daemon(procs, "peer", addr, root / "daemon.yaml")
    # The scheduler had the seed fetch: its certificate passed the seed's gate by the name "localhost".
    _swarm_download(procs, seed, peer, tmp_path)


def test_daemons_sharing_one_certificate_under_peer_name_download_through_the_swarm(
    procs: Procs, tmp_path: Path
) -> None:
    root = procs.root
    make_ca(root / "ca")
    scheduler_tls = _tls(root / "ca", root / "certs", "sched", ips=("127.0.0.1",), peer_name=PEER_NAME)
    shared = _tls(root / "ca", root / "certs", PEER_NAME, peer_name=PEER_NAME)  # no IP SAN
    (root / "scheduler.yaml").write_text(_yaml(scheduler_tls))
    (root / "daemon.yaml").write_text(_yaml(shared, "storage:\n  localShare: false\n"))
    scheduler = procs.scheduler(config=root / "scheduler.yaml")
    addr = f"127.0.0.1:{scheduler.ready['grpc_port']}"
    seed = _daemon(procs, "seed", addr, root / "daemon.yaml", seed=True)
    peer = _daemon(procs, "peer", addr, root / "daemon.yaml")
    _swarm_download(procs, seed, peer, tmp_path)
