"""Real processes for integration tests: scheduler, daemons, origin, dfget.

Every process is started as ``sys.executable -m ...`` with ports 0, waited for
through its ready file (with a timeout; the error carries the child's log
tail), and stopped by PID when the owning :class:`Procs` is closed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from damselfly.runtime.children import ChildProcess, python_module_command, spawn, stop_all
from damselfly.runtime.cluster import DaemonPorts, start_daemon, start_scheduler

READY_TIMEOUT = 60.0


def short_tempdir(prefix: str = "dft-") -> Path:
    """A temp dir with a short path: unix socket paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def random_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes; return their sha256 hex."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@dataclass
class OriginProcess:
    child: ChildProcess
    port: int

    def url(self, name: str, *, fault: str | None = None, query: str = "") -> str:
        path = f"/_fault/{fault}/{name}" if fault else f"/{name}"
        return f"http://127.0.0.1:{self.port}{path}" + (f"?{query}" if query else "")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stats", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
        return data

    def bytes_for(self, path: str, counter: str = "bytes") -> int:
        """``path``'s ``bytes`` (what the origin began to send), or another counter (``bytes_sent``)."""
        entry = self.stats()["paths"].get(path)
        return int(entry[counter]) if entry else 0


class Procs:
    """Owns the processes a test (or module) starts, and stops them all in :meth:`close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.children: list[ChildProcess] = []

    def scheduler(
        self, name: str = "scheduler", *, port: int = 0, config: Path | None = None
    ) -> ChildProcess:
        child = start_scheduler(self.root, name=name, port=port, config=config)
        self.children.append(child)
        child.wait_ready(READY_TIMEOUT)
        return child

    def daemon(
        self,
        name: str,
        *,
        scheduler_port: int | Sequence[int],
        seed: bool = False,
        hostname: str | None = None,
        socket_path: Path | None = None,
        config: Path | None = None,
    ) -> ChildProcess:
        child = start_daemon(
            self.root,
            name,
            scheduler_port=scheduler_port,
            seed=seed,
            hostname=hostname or f"{socket.gethostname()}-{name}",
            socket_path=socket_path,
            ports=DaemonPorts(),
            config=config,
        )
        self.children.append(child)
        child.wait_ready(READY_TIMEOUT)
        return child

    def origin(self, directory: Path, name: str = "origin") -> OriginProcess:
        ready = self.root / "run" / f"{name}.ready.json"
        argv = python_module_command(
            "damselfly.testbed.origin", "--dir", str(directory), "--port", "0", "--ready-file", str(ready)
        )
        child = spawn(name, argv, log_path=self.root / "logs" / f"{name}.log", ready_file=ready)
        self.children.append(child)
        return OriginProcess(child, int(child.wait_ready(READY_TIMEOUT)["port"]))

    def close(self) -> None:
        # Daemons before the scheduler, as a real shutdown would go.
        stop_all([c for c in self.children if c.name != "scheduler"], grace=10)
        stop_all([c for c in self.children if c.name == "scheduler"], grace=10)

    def cleanup(self) -> None:
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Cluster:
    """A scheduler, a seed and one peer, plus an origin serving ``origin_dir``."""

    procs: Procs
    scheduler: ChildProcess
    seed: ChildProcess
    peer: ChildProcess
    origin: OriginProcess
    origin_dir: Path

    @property
    def socket(self) -> Path:
        return Path(self.peer.ready["socket"])

    def logs(self) -> str:
        return "\n".join(f"--- {c.name}\n{c.log_tail(15)}" for c in self.procs.children)


def start_cluster(root: Path) -> Cluster:
    procs = Procs(root)
    try:
        origin_dir = root / "origin"
        origin_dir.mkdir(parents=True, exist_ok=True)
        origin = procs.origin(origin_dir)
        scheduler = procs.scheduler()
        port = int(scheduler.ready["grpc_port"])
        seed = procs.daemon("seed", scheduler_port=port, seed=True)
        peer = procs.daemon("peer", scheduler_port=port)
    except BaseException:
        procs.close()
        raise
    return Cluster(procs, scheduler, seed, peer, origin, origin_dir)


def run_dfget(
    url: str, output: Path, endpoint: Path | str, *extra: str, timeout: float = 90.0
) -> subprocess.CompletedProcess[str]:
    """``python -m damselfly get URL -O OUTPUT -e ENDPOINT --no-progress [extra]``."""
    argv = python_module_command(
        "damselfly", "get", url, "-O", str(output), "-e", str(endpoint), "--no-progress", *extra
    )
    env = {k: v for k, v in os.environ.items() if k != "DAMSELFLY_ENDPOINT"}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env
    )


def python() -> str:
    return sys.executable
