"""End-to-end harness: a real registry, a real swarm (scheduler, seed, peers as processes), real clients.

Everything runs on loopback with ports picked at start; every process is
stopped by PID in ``close``. Tests skip (with the reason) only when a tool the
test needs is not installed: ``.ci/run`` installs them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from damselfly.runtime.children import ChildProcess, stop_all
from damselfly.runtime.cluster import DaemonPorts, start_daemon, start_scheduler
from damselfly.testbed.registry import Image, Registry

READY = 60.0


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (.ci/run installs them)")


class Swarm:
    """A scheduler, a seed daemon and ``peers`` daemons whose proxies mirror ``registry``."""

    def __init__(
        self,
        root: Path,
        registry: Registry,
        *,
        peers: int = 1,
        config: dict[str, Any] | None = None,
        seed: bool = True,
    ):
        self.root = root
        self.registry = registry
        self.children: list[ChildProcess] = []
        self.peers: list[ChildProcess] = []
        cfg: dict[str, Any] = {
            "proxy": {"registryMirror": {"url": registry.url}},
            "download": {"pieceTimeout": 10},
        }
        if registry.ca_cert is not None:
            cfg["source"] = {"caCert": str(registry.ca_cert)}
        for k, v in (config or {}).items():
            cfg.setdefault(k, {}).update(v)
        self.config_path = root / "daemon.yaml"
        root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(cfg))
        try:
            sched = start_scheduler(root)
            self.children.append(sched)
            port = int(sched.wait_ready(READY)["grpc_port"])
            if seed:
                holder = start_daemon(root, "seed", scheduler_port=port, seed=True, config=self.config_path)
                self.children.append(holder)
                holder.wait_ready(READY)
            for i in range(peers):
                p = start_daemon(
                    root, f"p{i}", scheduler_port=port, config=self.config_path, ports=DaemonPorts()
                )
                self.children.append(p)
                self.peers.append(p)
            for p in self.peers:
                p.wait_ready(READY)
        except BaseException:
            self.close()
            raise

    def proxy(self, i: int = 0) -> str:
        return f"127.0.0.1:{self.peers[i].ready['proxy_port']}"

    def holds_blob(self, i: int, digest: str) -> bool:
        """Whether peer ``i``'s store holds the blob as a task (it went through its mirror)."""
        tid = digest.removeprefix("sha256:")  # blob task IDs are the digest's hex
        return (self.root / f"p{i}" / "tasks" / tid[:3] / tid).is_dir()

    def close(self) -> None:
        stop_all([c for c in self.children if c.name != "scheduler"], grace=10)
        stop_all([c for c in self.children if c.name == "scheduler"], grace=10)

    def logs(self) -> str:
        return "\n".join(f"--- {c.name}\n{c.log_tail(40)}" for c in self.children)


def registries_conf(path: Path, registry: str, mirror: str, *, registry_insecure: bool = True) -> Path:
    path.write_text(
        "[[registry]]\n"
        f'location = "{registry}"\n'
        f"insecure = {'true' if registry_insecure else 'false'}\n"
        "[[registry.mirror]]\n"
        f'location = "{mirror}"\n'
        "insecure = true\n"
    )
    return path


def skopeo_pull(
    ref: str,
    dest: Path,
    conf: Path | None,
    *,
    creds: str = "",
    authfile: Path | None = None,
    cert_dir: Path | None = None,
    tls_verify: bool = False,
) -> subprocess.CompletedProcess[str]:
    argv = ["skopeo"]
    if conf is not None:
        argv += ["--registries-conf", str(conf)]
    argv += ["copy", "--quiet", f"docker://{ref}", f"dir:{dest}"]
    if cert_dir is not None:
        argv += ["--src-cert-dir", str(cert_dir)]
    elif not tls_verify:
        argv += ["--src-tls-verify=false"]
    if creds:
        argv += ["--src-creds", creds]
    if authfile is not None:
        argv += ["--authfile", str(authfile)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def assert_dir_image(dest: Path, image: Image) -> None:
    """Every blob of ``image`` is in skopeo's ``dir:`` output with the right sha256."""
    for blob in image.blobs:
        path = dest / blob.digest.split(":", 1)[1]
        assert path.exists(), f"{blob.digest} missing from {dest}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == blob.digest.split(":", 1)[1]
    manifest = json.loads((dest / "manifest.json").read_text())
    assert [lay["digest"] for lay in manifest["layers"]] == [b.digest for b in image.layers]


def auth_file(path: Path, user: str, password: str, *hosts: str) -> Path:
    """A containers auth.json with the same credentials for each host.

    skopeo (containers/image) looks credentials up by the mirror's own host when
    it pulls through a mirror; ``--src-creds`` only covers the registry itself.
    """
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {h: {"auth": token} for h in hosts}}))
    return path


def blob_log(registry: Registry) -> str:
    """The registry's blob GETs (status, bytes, path), for assertion messages."""
    lines = [
        f"{r.get('status')} {r.get('written')} {r.get('uri')}"
        for r in registry.requests()
        if r.get("method") == "GET" and "/blobs/" in r.get("uri", "")
    ]
    return "registry blob GETs:\n" + "\n".join(lines)
