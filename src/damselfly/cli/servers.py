"""``damselfly scheduler`` and ``damselfly daemon``: flags to config overrides, then run.

Flags override the YAML file; both are merged by :mod:`damselfly.config`. Both
commands then do the same (:func:`run_server`): load the config, set up logging, run
the server's ``app.run``. The server modules are imported only there, by name,
so ``dfget`` and the other commands do not pay for them at start.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .exitcodes import ExitCode


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """``_set(t, "a.b.c", v)`` sets ``t["a"]["b"]["c"] = v``, creating the levels."""
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _overrides(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """The config tree of the flags that were given (a flag left at None keeps the file's value)."""
    out: dict[str, Any] = {}
    for dotted, value in pairs:
        if value is not None:
            _set(out, dotted, value)
    return out


def scheduler_overrides(
    *,
    ip: str | None = None,
    port: int | None = None,
    metrics_port: int | None = None,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    return _overrides(
        [
            ("server.ip", ip),
            ("server.port", port),
            ("metrics.port", metrics_port),
            ("server.data_dir", str(data_dir) if data_dir else None),
        ]
    )


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
    return _overrides(
        [
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
    )


def observability_overrides(
    overrides: dict[str, Any], *, log_format: str | None = None, metrics_ip: str | None = None
) -> dict[str, Any]:
    """Add ``log.format`` and ``metrics.ip`` (flags shared by both servers) to ``overrides``."""
    for dotted, value in (("log.format", log_format), ("metrics.ip", metrics_ip)):
        if value is not None:
            _set(overrides, dotted, value)
    return overrides


# What each server command loads its config with, and the module whose ``run`` serves it.
_SERVERS = {
    "scheduler": ("load_scheduler_config", "..scheduler.app"),
    "daemon": ("load_daemon_config", "..daemon.app"),
}


def run_server(
    command: Literal["scheduler", "daemon"],
    config_file: Path | None,
    overrides: dict[str, Any],
    *,
    ready_file: Path | None,
    log_level: str,
    log_file: Path | None,
) -> int:
    """Load the config (a bad one exits 2 before logging is set up), set up logging, serve until a signal."""
    from .. import config as config_module
    from .. import tracing
    from ..logs import setup_logging

    loader, app_module = _SERVERS[command]
    from ..security.tls import load_tls

    try:
        config = getattr(config_module, loader)(config_file, overrides)
        # Unreadable or mismatched TLS files: one line, before anything starts.
        load_tls(config.tls, presents_peer_name=command != "scheduler")
        if command == "scheduler":
            from ..security.authz import check_security

            check_security(config.security)  # a bad CIDR in security.*: one line too
    except ConfigError as e:
        print(f"damselfly {command}: {e}", file=sys.stderr)
        return ExitCode.USAGE
    setup_logging(log_level, log_file, fmt=config.log.format)
    try:
        # tracing.endpoint, else OpenTelemetry's standard OTEL_EXPORTER_OTLP_*ENDPOINT variables.
        if config.tracing.url:
            tracing.configure(
                config.tracing.url, service=f"damselfly-{command}", headers=config.tracing.headers
            )
        else:
            tracing.configure_from_env(f"damselfly-{command}")
    except RuntimeError as e:
        print(f"damselfly {command}: {e}", file=sys.stderr)
        return ExitCode.USAGE
    try:
        importlib.import_module(app_module, __package__).run(config, ready_file=ready_file)
    finally:
        tracing.shutdown()
    return ExitCode.OK
