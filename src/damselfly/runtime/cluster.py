"""A scheduler, a seed daemon and N peer daemons as child processes on 127.0.0.1.

Why: ``damselfly up`` (the embedded default, one peer), ``damselfly bench
local``, the benchmarks and the integration tests all need the same small
cluster, laid out the same way under one root directory (for ``up`` this layout
is the data directory users see)::

    ROOT/scheduler/             scheduler data dir
    ROOT/seed/                  seed daemon storage (its socket: ROOT/seed/dfdaemon.sock)
    ROOT/<peer>/                peer daemon storage
    ROOT/logs/<name>.log        each child's log (its stdout and stderr too)
    ROOT/run/<name>.ready.json  each child's ready file

Each daemon gets its own hostname (``<base>-seed``, ``<base>-peer`` ...), so the
scheduler sees distinct hosts although they share one IP.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidArgument
from .children import ChildProcess, python_module_command, spawn, stop_all

# A unix socket path must fit in sockaddr_un.sun_path (108 bytes with the NUL).
MAX_SOCKET_PATH = 107


@dataclass(frozen=True, slots=True)
class DaemonPorts:
    """Listening ports of one daemon; 0 picks a free port."""

    upload: int = 0
    piece: int = 0
    metrics: int = 0
    proxy: int = 0


@dataclass(slots=True)
class PeerSpec:
    """One peer daemon of the cluster: its name (directory, log) and where its socket goes."""

    name: str
    socket: Path | None = None  # None: ROOT/<name>/dfdaemon.sock
    ports: DaemonPorts = field(default_factory=DaemonPorts)


def scheduler_command(
    root: Path,
    *,
    port: int = 0,
    metrics_port: int = 0,
    log_level: str = "INFO",
    name: str = "scheduler",
    config: Path | None = None,
) -> list[str]:
    extra = ["--config", str(config)] if config is not None else []
    return python_module_command(
        "damselfly",
        "scheduler",
        *extra,
        "--ip", "127.0.0.1",
        "--port", str(port),
        "--metrics-port", str(metrics_port),
        "--data-dir", str(root / name),
        "--ready-file", str(root / "run" / f"{name}.ready.json"),
        "--log-file", str(root / "logs" / f"{name}.log"),
        "--log-level", log_level,
    )  # fmt: skip


def daemon_command(
    root: Path,
    name: str,
    *,
    scheduler_port: int | Sequence[int],
    hostname: str,
    seed: bool = False,
    socket_path: Path | None = None,
    ports: DaemonPorts = DaemonPorts(),
    log_level: str = "INFO",
    config: Path | None = None,
) -> list[str]:
    ports_of_schedulers = [scheduler_port] if isinstance(scheduler_port, int) else list(scheduler_port)
    args = [
        "daemon",
        "--data-dir", str(root / name),
        *[a for p in ports_of_schedulers for a in ("--scheduler", f"127.0.0.1:{p}")],
        "--hostname", hostname,
        "--ip", "127.0.0.1",
        "--listen-ip", "127.0.0.1",
        "--upload-port", str(ports.upload),
        "--piece-port", str(ports.piece),
        "--metrics-port", str(ports.metrics),
        "--proxy-port", str(ports.proxy),
        "--ready-file", str(root / "run" / f"{name}.ready.json"),
        "--log-file", str(root / "logs" / f"{name}.log"),
        "--log-level", log_level,
    ]  # fmt: skip
    if seed:
        args.append("--seed")
    if socket_path is not None:
        args += ["--socket", str(socket_path)]
    if config is not None:
        args += ["--config", str(config)]
    return python_module_command("damselfly", *args)


def start_scheduler(
    root: Path,
    *,
    port: int = 0,
    metrics_port: int = 0,
    log_level: str = "INFO",
    name: str = "scheduler",
    config: Path | None = None,
) -> ChildProcess:
    """Start a scheduler under ``root`` (not waiting for it: call ``wait_ready``)."""
    argv = scheduler_command(
        root, port=port, metrics_port=metrics_port, log_level=log_level, name=name, config=config
    )
    return spawn(
        name, argv, log_path=root / "logs" / f"{name}.log", ready_file=root / "run" / f"{name}.ready.json"
    )


def start_daemon(
    root: Path,
    name: str,
    *,
    scheduler_port: int | Sequence[int],
    hostname: str | None = None,
    seed: bool = False,
    socket_path: Path | None = None,
    ports: DaemonPorts = DaemonPorts(),
    log_level: str = "INFO",
    config: Path | None = None,
) -> ChildProcess:
    """Start a daemon under ``root/name`` (not waiting for it: call ``wait_ready``)."""
    hostname = hostname or f"{socket.gethostname()}-{name}"
    sock = socket_path or root / name / "dfdaemon.sock"
    if len(str(sock)) > MAX_SOCKET_PATH:
        raise InvalidArgument(
            f"socket path {sock} is longer than {MAX_SOCKET_PATH} bytes; use a shorter directory"
        )
    argv = daemon_command(
        root,
        name,
        scheduler_port=scheduler_port,
        hostname=hostname,
        seed=seed,
        socket_path=socket_path,
        ports=ports,
        log_level=log_level,
        config=config,
    )
    return spawn(
        name, argv, log_path=root / "logs" / f"{name}.log", ready_file=root / "run" / f"{name}.ready.json"
    )


class LocalCluster:
    """Scheduler + seed + peers under ``root``. Owns its children: :meth:`stop` ends them all.

    ``start`` is all-or-nothing: if any child fails to become ready, the ones
    already started are stopped before :class:`~damselfly.runtime.children.ChildFailed`
    propagates.
    """

    def __init__(
        self,
        root: Path,
        peers: list[PeerSpec],
        *,
        scheduler_port: int = 0,
        scheduler_metrics_port: int = 0,
        seed_ports: DaemonPorts = DaemonPorts(),
        hostname_base: str | None = None,
        log_level: str = "INFO",
        ready_timeout: float = 60.0,
        daemon_config: Path | None = None,
        scheduler_config: Path | None = None,
    ) -> None:
        self.root = root
        self.daemon_config = daemon_config  # YAML for the seed and every peer
        self.scheduler_config = scheduler_config
        self.peer_specs = peers
        self.scheduler_port = scheduler_port
        self.scheduler_metrics_port = scheduler_metrics_port
        self.seed_ports = seed_ports
        self.hostname_base = hostname_base or socket.gethostname()
        self.log_level = log_level
        self.ready_timeout = ready_timeout
        self.scheduler: ChildProcess | None = None
        self.seed: ChildProcess | None = None
        self.peers: list[ChildProcess] = []

    @property
    def children(self) -> list[ChildProcess]:
        """Every started child, in start order."""
        out = [c for c in (self.scheduler, self.seed) if c is not None]
        return out + self.peers

    def socket_of(self, index: int) -> Path:
        spec = self.peer_specs[index]
        return spec.socket or self.root / spec.name / "dfdaemon.sock"

    def start(self) -> None:
        try:
            self.scheduler = start_scheduler(
                self.root,
                port=self.scheduler_port,
                metrics_port=self.scheduler_metrics_port,
                log_level=self.log_level,
                config=self.scheduler_config,
            )
            port = int(self.scheduler.wait_ready(self.ready_timeout)["grpc_port"])
            self.seed = start_daemon(
                self.root,
                "seed",
                scheduler_port=port,
                hostname=f"{self.hostname_base}-seed",
                seed=True,
                ports=self.seed_ports,
                log_level=self.log_level,
                config=self.daemon_config,
            )
            # The seed first: a peer that asks before any seed host is known goes to the origin.
            self.seed.wait_ready(self.ready_timeout)
            for spec in self.peer_specs:
                self.peers.append(
                    start_daemon(
                        self.root,
                        spec.name,
                        scheduler_port=port,
                        hostname=f"{self.hostname_base}-{spec.name}",
                        socket_path=spec.socket,
                        ports=spec.ports,
                        log_level=self.log_level,
                        config=self.daemon_config,
                    )
                )
            for peer in self.peers:
                peer.wait_ready(self.ready_timeout)
        except BaseException:
            self.stop()
            raise

    def first_dead(self) -> ChildProcess | None:
        """The first child that has exited, if any."""
        return next((c for c in self.children if not c.alive()), None)

    def stop(self, grace: float = 10.0) -> dict[str, int | None]:
        """Stop the peers and the seed first (they say goodbye to the scheduler), then the scheduler."""
        daemons = [c for c in (self.seed, *self.peers) if c is not None]
        codes = stop_all(daemons, grace=grace)
        if self.scheduler is not None:
            codes.update(stop_all([self.scheduler], grace=grace))
        return codes

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
