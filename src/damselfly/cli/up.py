"""``damselfly up``: the embedded default, a whole Damselfly on one machine.

A scheduler, a seed daemon and a peer daemon as child processes, everything
under one data directory (see :mod:`damselfly.runtime.cluster` for the layout),
the peer's socket at ``DIR/dfdaemon.sock``. ``up`` stays in the foreground
(:func:`damselfly.runtime.supervisor.run_in_foreground`): Ctrl-C or SIGTERM
stops the children (SIGTERM by PID, SIGKILL after a grace period) and exits 0;
a child that dies is named with its log, the others are stopped, and ``up``
exits 1. This module adds what is ``up``'s own: its flags, the banner, its
ready file and its exit codes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..process import write_ready_file
from ..runtime.cluster import MAX_SOCKET_PATH, DaemonPorts, LocalCluster, PeerSpec
from ..runtime.supervisor import Ending, run_in_foreground
from .exitcodes import ExitCode

# How ``up`` exits for each way its foreground life can end (README: 0 on Ctrl-C, 1 if a child dies).
EXIT_CODES = {
    Ending.STOPPED: ExitCode.OK,
    Ending.CHILD_DIED: ExitCode.FAILED,
    Ending.START_FAILED: ExitCode.FAILED,
    Ending.BAD_SETUP: ExitCode.USAGE,
}


def _say(line: str) -> None:
    print(f"damselfly up: {line}", file=sys.stderr, flush=True)


def describe(cluster: LocalCluster, socket: Path) -> str:
    """The banner: what runs where, and the dfget command to use."""
    assert cluster.scheduler is not None and cluster.seed is not None
    s = cluster.scheduler.ready
    lines = [
        f"Damselfly is up; data in {cluster.root}",
        f"  scheduler    grpc 127.0.0.1:{s.get('grpc_port')}  metrics :{s.get('metrics_port')}"
        f"  pid {cluster.scheduler.pid}  log {cluster.scheduler.log_path}",
    ]
    for child in (cluster.seed, *cluster.peers):
        r = child.ready
        lines.append(
            f"  {child.name:<12} host {r.get('host_id')}  upload :{r.get('upload_port')}"
            f"  pieces :{r.get('piece_port')}  metrics :{r.get('metrics_port')}"
            f"  pid {child.pid}  log {child.log_path}"
        )
    lines += [
        "Download through the peer daemon:",
        f"  dfget -e {socket} URL -O FILE",
        *(
            [
                "Pull container images through it (registry mirror / proxy):",
                f"  127.0.0.1:{cluster.peers[0].ready.get('proxy_port')}   "
                "(damselfly init containerd|docker|podman writes the client config)",
            ]
            if cluster.peers and cluster.peers[0].ready.get("proxy_port")
            else []
        ),
        "Stop with Ctrl-C.",
    ]
    return "\n".join(lines)


def run_up(
    data_dir: Path,
    *,
    scheduler_port: int = 8002,
    scheduler_metrics_port: int = 8000,
    upload_port: int = 4000,
    piece_port: int = 4005,
    metrics_port: int = 4002,
    proxy_port: int = 4001,
    log_level: str = "INFO",
    ready_file: Path | None = None,
    grace: float = 10.0,
) -> int:
    """Run the cluster in the foreground until a signal or a death; returns the exit code."""
    root = data_dir.expanduser().resolve()
    socket = root / "dfdaemon.sock"
    if len(str(socket)) > MAX_SOCKET_PATH:
        _say(f"{socket} is too long for a unix socket ({MAX_SOCKET_PATH} bytes); use a shorter --data-dir")
        return ExitCode.USAGE
    root.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(
        root,
        [PeerSpec("peer", socket, DaemonPorts(upload_port, piece_port, metrics_port, proxy_port))],
        scheduler_port=scheduler_port,
        scheduler_metrics_port=scheduler_metrics_port,
        log_level=log_level,
    )

    def announce() -> None:
        print(describe(cluster, socket), flush=True)
        if ready_file is not None:
            write_ready_file(
                ready_file,
                {
                    "pid": os.getpid(),
                    "socket": str(socket),
                    "children": {c.name: c.pid for c in cluster.children},
                    **{c.name: c.ready for c in cluster.children},
                },
            )

    try:
        ending = run_in_foreground(cluster, on_ready=announce, say=_say, grace=grace)
    finally:
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
    return EXIT_CODES[ending]
