"""mTLS on every TCP link, with real processes and certificates from ``damselfly certs``.

A scheduler, a seed and a peer run with ``tls.*`` (same-machine handover off,
so pieces cross the piece port): a dfget through the peer gets its pieces from
the seed over Vortex-over-TLS after the scheduler had the seed fetch it over
gRPC-with-mTLS. Every TCP port (scheduler gRPC, both upload gRPCs, both piece
ports) refuses a plaintext client, a TLS client without a certificate and one
whose certificate comes from another CA, and answers one with ours. TLS files
that are missing, partial, mismatched or from another CA refuse the start with
one line naming the key and the file.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from damselfly.daemon.transfer import vortex
from damselfly.runtime.children import ChildProcess, python_module_command
from damselfly.security.certs import issue, make_ca
from damselfly.units import MiB
from helpers.metrics import sample_now
from helpers.processes import Procs, random_file, run_dfget, sha256_of, short_tempdir

pytestmark = pytest.mark.integration

SIZE = 9 * MiB  # three pieces


@dataclass
class Certs:
    ca: Path  # ca.crt
    cert: Path
    key: Path
    foreign_cert: Path  # issued by another CA, for 127.0.0.1 too
    foreign_key: Path


def make_certs(root: Path) -> Certs:
    make_ca(root / "ca")
    ours = issue(root / "ca", "node", ips=["127.0.0.1"], dns=["localhost"], out=root / "node")
    make_ca(root / "other-ca")
    theirs = issue(root / "other-ca", "intruder", ips=["127.0.0.1"], out=root / "intruder")
    return Certs(ours.ca_cert, ours.cert, ours.key, theirs.cert, theirs.key)


def tls_yaml(certs: Certs, extra: str = "") -> str:
    return f"tls:\n  caCert: {certs.ca}\n  cert: {certs.cert}\n  key: {certs.key}\n{extra}"


@dataclass
class TLSCluster:
    procs: Procs
    certs: Certs
    scheduler: ChildProcess
    seed: ChildProcess
    peer: ChildProcess
    origin_dir: Path
    origin_port: int

    def logs(self) -> str:
        return "\n".join(f"--- {c.name}\n{c.log_tail(20)}" for c in self.procs.children)


@pytest.fixture(scope="module")
def cluster() -> Iterator[TLSCluster]:
    root = short_tempdir("mtls-")
    procs = Procs(root)
    try:
        certs = make_certs(root / "certs")
        scheduler_yaml = root / "scheduler.yaml"
        scheduler_yaml.write_text(tls_yaml(certs))
        daemon_yaml = root / "daemon.yaml"
        # Pieces must cross the piece port, not the same-machine handover.
        daemon_yaml.write_text(tls_yaml(certs, "storage:\n  localShare: false\n"))
        origin_dir = root / "origin"
        origin_dir.mkdir()
        origin = procs.origin(origin_dir)
        scheduler = procs.scheduler(config=scheduler_yaml)
        port = int(scheduler.ready["grpc_port"])
        seed = procs.daemon("seed", scheduler_port=port, seed=True, config=daemon_yaml)
        peer = procs.daemon("peer", scheduler_port=port, config=daemon_yaml)
        yield TLSCluster(procs, certs, scheduler, seed, peer, origin_dir, origin.port)
    finally:
        procs.close()
        shutil.rmtree(root, ignore_errors=True)


def test_a_download_goes_through_the_swarm_over_mtls(cluster: TLSCluster, tmp_path: Path) -> None:
    digest = random_file(cluster.origin_dir / "blob.bin", SIZE)
    out = tmp_path / "out.bin"
    r = run_dfget(f"http://127.0.0.1:{cluster.origin_port}/blob.bin", out, cluster.peer.ready["socket"])
    assert r.returncode == 0, r.stderr + cluster.logs()
    assert sha256_of(out) == digest
    # The scheduler had the seed fetch it (its DownloadTask over mTLS), the peer pulled every
    # byte from the seed's piece port over TLS, none from the origin.
    peer_metrics = int(cluster.peer.ready["metrics_port"])
    seed_metrics = int(cluster.seed.ready["metrics_port"])
    from_peers = sample_now(peer_metrics, "dragonfly_client_download_traffic", type="REMOTE_PEER")
    from_origin = sample_now(peer_metrics, "dragonfly_client_download_traffic", type="BACK_TO_SOURCE")
    assert (from_peers, from_origin) == (SIZE, 0), cluster.logs()
    assert sample_now(seed_metrics, "dragonfly_client_upload_traffic") >= SIZE


# -- every TCP port refuses strangers ---------------------------------------------------------


def _ports(cluster: TLSCluster) -> dict[str, int]:
    return {
        "scheduler gRPC": int(cluster.scheduler.ready["grpc_port"]),
        "seed upload gRPC": int(cluster.seed.ready["upload_port"]),
        "peer upload gRPC": int(cluster.peer.ready["upload_port"]),
    }


def _health(port: int, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """The status of a health check on 127.0.0.1:port with ``credentials`` (None: plaintext)."""
    target = f"127.0.0.1:{port}"
    channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    with channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as e:
            return e.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _grpc_clients(certs: Certs) -> dict[str, grpc.ChannelCredentials | None]:
    ca = certs.ca.read_bytes()
    return {
        "plaintext": None,
        "no client certificate": grpc.ssl_channel_credentials(root_certificates=ca),
        "another CA's certificate": grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=certs.foreign_key.read_bytes(),
            certificate_chain=certs.foreign_cert.read_bytes(),
        ),
    }


def test_grpc_ports_refuse_plaintext_no_certificate_and_another_ca(cluster: TLSCluster) -> None:
    certs = cluster.certs
    ours = grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=certs.key.read_bytes(),
        certificate_chain=certs.cert.read_bytes(),
    )
    answers = {}
    for where, port in _ports(cluster).items():
        answers[(where, "ours")] = _health(port, ours)
        for who, credentials in _grpc_clients(certs).items():
            answers[(where, who)] = _health(port, credentials)
    refused = {k for k, code in answers.items() if code is grpc.StatusCode.UNAVAILABLE}
    assert {k for k in answers if k[1] == "ours" and answers[k] is grpc.StatusCode.OK} == {
        (where, "ours") for where in _ports(cluster)
    }
    assert refused == {k for k in answers if k[1] != "ours"}, answers


def _vortex_answer(port: int, context: ssl.SSLContext | None) -> str:
    """Ask 127.0.0.1:port's piece server for a piece of an unknown task: what comes back."""
    request = vortex.encode_download_piece(1, "0" * 64, 0, vortex.Tag.DOWNLOAD_PIECE)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
    except BaseException:
        raw.close()
        raise
    with sock:
        try:
            sock.sendall(request)
            parser = vortex.FrameParser()
            while (event := parser.next_event()) is None:
                chunk = sock.recv(65536)
                if not chunk:
                    return "closed"
                parser.feed(chunk)
        except ssl.SSLError as e:
            return f"tls error {e.reason}"
        except ConnectionError:
            return "closed"
    return type(event).__name__ + (
        f" {vortex.ErrorCode(event.code).name}" if isinstance(event, vortex.Error) else ""
    )


def _client_context(certs: Certs, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def test_piece_ports_refuse_plaintext_no_certificate_and_another_ca(cluster: TLSCluster) -> None:
    certs = cluster.certs
    clients: dict[str, ssl.SSLContext | None] = {
        "ours": _client_context(certs, certs.cert, certs.key),
        "plaintext": None,
        "no client certificate": _client_context(certs, None, None),
        "another CA's certificate": _client_context(certs, certs.foreign_cert, certs.foreign_key),
    }
    for daemon in (cluster.seed, cluster.peer):
        port = int(daemon.ready["piece_port"])
        answers = {who: _vortex_answer(port, ctx) for who, ctx in clients.items()}
        assert answers["ours"] == "Error NOT_FOUND", answers
        for who in ("plaintext", "no client certificate", "another CA's certificate"):
            assert answers[who] == "closed" or answers[who].startswith("tls error"), answers


# -- bad TLS files refuse the start --------------------------------------------------------------


def _start(command: str, root: Path, yaml_text: str) -> subprocess.CompletedProcess[str]:
    config = root / f"{command}.yaml"
    config.write_text(yaml_text)
    args = ["--config", str(config), "--data-dir", str(root / command)]
    if command == "daemon":
        args += ["--scheduler", "127.0.0.1:9", "--socket", str(root / "d.sock")]
    argv = python_module_command(
        "damselfly", command, *args, "--port" if command == "scheduler" else "--upload-port", "0"
    )
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("command", ["scheduler", "daemon"])
def test_bad_tls_files_refuse_the_start_with_one_line(command: str, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    missing = tmp_path / "nowhere.pem"
    unreadable = tmp_path / "a-directory.key"
    unreadable.mkdir()
    cases = {
        f"caCert: {certs.ca}\n  cert: {certs.cert}\n  key: {missing}": f"tls.key: cannot read {missing}",
        f"caCert: {certs.ca}\n  cert: {missing}\n  key: {certs.key}": f"tls.cert: cannot read {missing}",
        f"cert: {certs.cert}\n  key: {certs.key}": "tls.caCert is not set",
        f"caCert: {certs.ca}\n  cert: {certs.cert}\n  key: {certs.foreign_key}": (
            f"tls.key: {certs.foreign_key} is not the key of the certificate in {certs.cert}"
        ),
        f"caCert: {certs.ca}\n  cert: {certs.foreign_cert}\n  key: {certs.foreign_key}": (
            f"tls.cert: {certs.foreign_cert} is not issued by the CA in {certs.ca}"
        ),
        f"caCert: {certs.ca}\n  cert: {certs.cert}\n  key: {certs.ca}": (
            f"tls.key: {certs.ca} holds no PEM private key"
        ),
    }
    cases[f"caCert: {certs.ca}\n  cert: {certs.cert}\n  key: {unreadable}"] = (
        f"tls.key: cannot read {unreadable}"
    )
    for tls, want in cases.items():
        r = _start(command, tmp_path, f"tls:\n  {tls}\n")
        assert r.returncode == 2, (tls, r.stderr)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"damselfly {command}: {want}"), (tls, r.stderr)


# -- the scheduler's own calls to daemons -------------------------------------------------------


def test_persistent_cache_replicas_and_deletes_travel_over_mtls(cluster: TLSCluster, tmp_path: Path) -> None:
    """The peer imports with two replicas: the scheduler asks the seed for the second copy
    (DownloadPersistentCacheTask over mTLS), the seed pulls it from the peer over TLS; a
    delete then reaches both (DeletePersistentCacheTask over mTLS)."""
    src = tmp_path / "model.bin"
    random_file(src, SIZE)
    r = _cache(cluster.peer, "import", str(src), "--replicas", "2", "--json")
    assert r.returncode == 0, r.stderr + cluster.logs()
    imported = json.loads(r.stdout)
    assert imported["persistent_replicas"] == 2, imported
    task_id = imported["id"]
    assert [_holds(d, task_id) for d in (cluster.peer, cluster.seed)] == [True, True]
    r = _cache(cluster.peer, "delete", task_id)
    assert r.returncode == 0, r.stderr
    assert [_holds(d, task_id) for d in (cluster.peer, cluster.seed)] == [False, False]


def _cache(daemon: ChildProcess, *args: str) -> subprocess.CompletedProcess[str]:
    argv = python_module_command("damselfly", "cache", *args, "-e", daemon.ready["socket"])
    env = {k: v for k, v in os.environ.items() if k != "DAMSELFLY_ENDPOINT"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL, env=env)


def _holds(daemon: ChildProcess, task_id: str) -> bool:
    data_dir = Path(daemon.ready["socket"]).parent
    return (data_dir / "tasks" / task_id[:3] / task_id / "content").exists()


def test_preheat_reaches_a_tls_scheduler_only_with_a_client_certificate(
    cluster: TLSCluster, tmp_path: Path
) -> None:
    random_file(cluster.origin_dir / "warm.bin", 1 * MiB)
    url = f"http://127.0.0.1:{cluster.origin_port}/warm.bin"
    scheduler = f"127.0.0.1:{cluster.scheduler.ready['grpc_port']}"
    certs = cluster.certs
    flags = ["--tls-ca-cert", str(certs.ca), "--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]

    def preheat(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = python_module_command("damselfly", "preheat", "file", url, "--scheduler", scheduler, *extra)
        return subprocess.run(argv, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)

    refused = preheat("--timeout", "10s")
    assert refused.returncode != 0 and "UNAVAILABLE" in refused.stderr, refused.stderr
    partial = preheat(*flags[:4])
    assert partial.returncode == 2 and "--tls-key is not set" in partial.stderr, partial.stderr
    done = preheat(*flags)
    assert done.returncode == 0, done.stderr + cluster.logs()
