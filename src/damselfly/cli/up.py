"""``damselfly up``: the embedded default, a whole Damselfly on one machine.

A scheduler, a seed daemon and a peer daemon as child processes, everything
under one data directory (see :mod:`damselfly.testbed.cluster` for the layout),
the peer's socket at ``DIR/dfdaemon.sock``. ``up`` stays in the foreground:
Ctrl-C or SIGTERM stops the children (SIGTERM by PID, SIGKILL after a grace
period) and exits 0; a child that dies is named with its log, the others are
stopped, and ``up`` exits 1.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from ..errors import InvalidArgument
from ..process import write_ready_file
from ..testbed.cluster import MAX_SOCKET_PATH, DaemonPorts, LocalCluster, PeerSpec
from ..testbed.procs import ChildFailed


class _Stop(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM, to leave any wait at once."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop(signum)


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
    root = data_dir.expanduser().resolve()
    socket = root / "dfdaemon.sock"
    if len(str(socket)) > MAX_SOCKET_PATH:
        print(
            f"damselfly up: {socket} is too long for a unix socket ({MAX_SOCKET_PATH} bytes); "
            "use a shorter --data-dir",
            file=sys.stderr,
        )
        return 2
    root.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(
        root,
        [PeerSpec("peer", socket, DaemonPorts(upload_port, piece_port, metrics_port, proxy_port))],
        scheduler_port=scheduler_port,
        scheduler_metrics_port=scheduler_metrics_port,
        log_level=log_level,
    )
    old = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            cluster.start()
        except ChildFailed as e:
            print(f"damselfly up: {e}", file=sys.stderr)
            return 1
        except InvalidArgument as e:
            print(f"damselfly up: {e}", file=sys.stderr)
            return 2
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
        while True:
            dead = cluster.first_dead()
            if dead is not None:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                print(
                    f"damselfly up: {dead.name} exited with code {dead.popen.returncode}; "
                    f"see {dead.log_path}\n{dead.log_tail()}\nstopping the others",
                    file=sys.stderr,
                    flush=True,
                )
                cluster.stop(grace)
                return 1
            time.sleep(0.2)
    except _Stop:
        print("damselfly up: stopping", file=sys.stderr, flush=True)
        cluster.stop(grace)
        print("damselfly up: stopped", file=sys.stderr, flush=True)
        return 0
    finally:
        cluster.stop(grace)  # a no-op when already stopped
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
