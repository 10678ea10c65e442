"""``damselfly scheduler`` and ``damselfly daemon``: flags to config overrides, then run.

Flags override the YAML file; both are merged by :mod:`damselfly.config`. The
server modules are imported only here, inside the functions, so ``dfget``
does not pay for them at start.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``_set(t, "a.b.c", v)`` sets ``t["a"]["b"]["c"] = v``, creating the levels."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def scheduler_overrides(
    *,
    ip: str | None = None,
    port: int | None = None,
    metrics_port: int | None = None,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, value in (
        ("server.ip", ip),
        ("server.port", port),
        ("metrics.port", metrics_port),
        ("server.data_dir", str(data_dir) if data_dir else None),
    ):
        if value is not None:
            _set(out, dotted, value)
    return out


def daemon_overrides(
    *,
    seed: bool = False,
    data_dir: Path | None = None,
    schedulers: list[str] | None = None,
    hostname: str | None = None,
    ip: str | None = None,
    idc: str | None = None,
    location: str | None = None,
    listen_ip: str | None = None,
    upload_port: int | None = None,
    piece_port: int | None = None,
    metrics_port: int | None = None,
    socket: Path | None = None,
    proxy_port: int | None = None,
    proxy_ip: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pairs: list[tuple[str, Any]] = [
        ("seed_peer.enable", True if seed else None),
        ("storage.dir", str(data_dir) if data_dir else None),
        ("scheduler.addrs", list(schedulers) if schedulers else None),
        ("host.hostname", hostname),
        ("host.ip", ip),
        ("host.idc", idc),
        ("host.location", location),
        ("upload.server.ip", listen_ip),
        ("storage.server.ip", listen_ip),
        ("upload.server.port", upload_port),
        ("storage.server.tcp_port", piece_port),
        ("metrics.port", metrics_port),
        ("download.server.socket_path", str(socket) if socket else None),
        ("proxy.server.port", proxy_port),
        ("proxy.server.ip", proxy_ip),
    ]
    for dotted, value in pairs:
        if value is not None:
            _set(out, dotted, value)
    return out


def run_scheduler(
    config_file: Path | None,
    overrides: dict[str, Any],
    *,
    ready_file: Path | None,
    log_level: str,
    log_file: Path | None,
) -> int:
    from ..config import load_scheduler_config
    from ..logs import setup_logging

    try:
        config = load_scheduler_config(config_file, overrides)
    except ConfigError as e:
        print(f"damselfly scheduler: {e}", file=sys.stderr)
        return 2
    setup_logging(log_level, log_file)
    from ..scheduler.app import run

    run(config, ready_file=ready_file)
    return 0


def run_daemon(
    config_file: Path | None,
    overrides: dict[str, Any],
    *,
    ready_file: Path | None,
    log_level: str,
    log_file: Path | None,
) -> int:
    from ..config import load_daemon_config
    from ..logs import setup_logging

    try:
        config = load_daemon_config(config_file, overrides)
    except ConfigError as e:
        print(f"damselfly daemon: {e}", file=sys.stderr)
        return 2
    setup_logging(log_level, log_file)
    from ..daemon.app import run

    run(config, ready_file=ready_file)
    return 0
