"""The ``damselfly`` command (typer); ``dfget`` and ``damselfly get`` parse in :mod:`.dfget_args`.

Subcommands import what they run lazily, so no command loads the scheduler or
the daemon it does not run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import __version__
from .cache.commands import cache_app
from .preheat.commands import preheat_app

app = typer.Typer(
    name="damselfly",
    help="P2P file and container-image distribution (Dragonfly's v2 API). "
    "Start with `damselfly up --data-dir DIR`, then `dfget -e DIR/dfdaemon.sock URL -O FILE`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks on this machine.", no_args_is_help=True, add_completion=False)
app.add_typer(bench_app, name="bench")
app.add_typer(cache_app, name="cache")
app.add_typer(preheat_app, name="preheat")

LogLevel = Annotated[
    str, typer.Option("--log-level", envvar="DAMSELFLY_LOG_LEVEL", help="DEBUG, INFO, WARNING, ERROR")
]
LogFile = Annotated[Path | None, typer.Option("--log-file", help="log here instead of stderr")]
LogFormat = Annotated[
    str | None,
    typer.Option(
        "--log-format", envvar="DAMSELFLY_LOG_FORMAT", help="text or json, one object a line (log.format)"
    ),
]
MetricsIP = Annotated[
    str | None,
    typer.Option(
        "--metrics-ip", envvar="DAMSELFLY_METRICS_IP", help="metrics + /healthy listen IP (metrics.ip)"
    ),
]
ReadyFile = Annotated[
    Path | None, typer.Option("--ready-file", help="write the bound ports here (JSON) once listening")
]
ConfigFile = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config; flags override it")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"damselfly {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """Damselfly."""


@app.command()
def scheduler(
    config: ConfigFile = None,
    ip: Annotated[str | None, typer.Option(help="listen IP (server.ip)")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port, 0 for a free one (server.port)")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="metrics + /healthy port (metrics.port)")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="data directory (server.dataDir)")] = None,
    ready_file: ReadyFile = None,
    log_level: LogLevel = "INFO",
    log_file: LogFile = None,
    log_format: LogFormat = None,
    metrics_ip: MetricsIP = None,
) -> None:
    """Run a scheduler: hosts, tasks, peers, and who downloads from whom."""
    from .servers import observability_overrides, run_server, scheduler_overrides

    overrides = scheduler_overrides(ip=ip, port=port, metrics_port=metrics_port, data_dir=data_dir)
    observability_overrides(overrides, log_format=log_format, metrics_ip=metrics_ip)
    raise typer.Exit(
        run_server(
            "scheduler", config, overrides, ready_file=ready_file, log_level=log_level, log_file=log_file
        )
    )


@app.command()
def daemon(
    config: ConfigFile = None,
    seed: Annotated[bool, typer.Option("--seed", help="be a seed peer (seedPeer.enable)")] = False,
    data_dir: Annotated[Path | None, typer.Option(help="storage directory (storage.dir)")] = None,
    scheduler: Annotated[
        list[str] | None,
        typer.Option("--scheduler", help="scheduler host:port, repeatable (scheduler.addrs)"),
    ] = None,
    hostname: Annotated[str | None, typer.Option(help="host name (host.hostname)")] = None,
    ip: Annotated[str | None, typer.Option(help="advertised IP (host.ip)")] = None,
    idc: Annotated[str | None, typer.Option(help="IDC (host.idc)")] = None,
    location: Annotated[str | None, typer.Option(help="location, e.g. cn|zj|hz (host.location)")] = None,
    listen_ip: Annotated[str | None, typer.Option(help="IP the upload and piece servers listen on")] = None,
    upload_port: Annotated[int | None, typer.Option(help="gRPC upload port (upload.server.port)")] = None,
    piece_port: Annotated[int | None, typer.Option(help="piece server port (storage.server.tcpPort)")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="metrics + /healthy port (metrics.port)")] = None,
    socket: Annotated[Path | None, typer.Option(help="local API socket (download.server.socketPath)")] = None,
    proxy_port: Annotated[
        int | None, typer.Option(help="registry mirror / proxy port, 0 for a free one (proxy.server.port)")
    ] = None,
    ready_file: ReadyFile = None,
    log_level: LogLevel = "INFO",
    log_file: LogFile = None,
    log_format: LogFormat = None,
    metrics_ip: MetricsIP = None,
) -> None:
    """Run a daemon (peer or --seed): downloads, stores and serves pieces."""
    from .servers import daemon_overrides, observability_overrides, run_server

    overrides = daemon_overrides(
        seed=seed,
        data_dir=data_dir,
        schedulers=scheduler,
        hostname=hostname,
        ip=ip,
        idc=idc,
        location=location,
        listen_ip=listen_ip,
        upload_port=upload_port,
        piece_port=piece_port,
        metrics_port=metrics_port,
        socket=socket,
        proxy_port=proxy_port,
    )
    observability_overrides(overrides, log_format=log_format, metrics_ip=metrics_ip)
    code = run_server(
        "daemon", config, overrides, ready_file=ready_file, log_level=log_level, log_file=log_file
    )
    raise typer.Exit(code)


# `damselfly get` hands its arguments to dfget's one parser (dfget_args); the console scripts
# reach that parser without loading this module at all (entry.py), so this command only lists
# `get` in `damselfly --help` and serves callers of the typer app.
_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def get(ctx: typer.Context) -> None:
    """Download URL through the local daemon (P2P) to --output (see `damselfly get --help`)."""
    from .dfget_args import run

    raise typer.Exit(run(ctx.args, prog="damselfly get"))


app.command("get", context_settings=_PASSTHROUGH, add_help_option=False)(get)


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(help="where everything lives: data, logs, the socket")],
    scheduler_port: Annotated[int, typer.Option(help="scheduler gRPC port (0: free)")] = 8002,
    scheduler_metrics_port: Annotated[int, typer.Option(help="scheduler metrics port")] = 8000,
    upload_port: Annotated[int, typer.Option(help="peer daemon's gRPC upload port")] = 4000,
    piece_port: Annotated[int, typer.Option(help="peer daemon's piece server port")] = 4005,
    metrics_port: Annotated[int, typer.Option(help="peer daemon's metrics port")] = 4002,
    proxy_port: Annotated[int, typer.Option(help="peer daemon's registry mirror / proxy port")] = 4001,
    ready_file: ReadyFile = None,
    log_level: LogLevel = "INFO",
    log_format: LogFormat = None,
    metrics_ip: MetricsIP = None,
) -> None:
    """Run a scheduler, a seed daemon and a peer daemon here, in the foreground."""
    import os

    from .up import run_up

    # The children read these as their --log-format / --metrics-ip (e.g. 0.0.0.0 for Prometheus).
    for var, value in (("DAMSELFLY_LOG_FORMAT", log_format), ("DAMSELFLY_METRICS_IP", metrics_ip)):
        if value:
            os.environ[var] = value

    raise typer.Exit(
        run_up(
            data_dir,
            scheduler_port=scheduler_port,
            scheduler_metrics_port=scheduler_metrics_port,
            upload_port=upload_port,
            piece_port=piece_port,
            metrics_port=metrics_port,
            proxy_port=proxy_port,
            ready_file=ready_file,
            log_level=log_level,
        )
    )


@bench_app.command("local")
def bench_local(
    peers: Annotated[int, typer.Option(min=1, max=64, help="peer daemons")] = 3,
    size: Annotated[str, typer.Option(help="file size, e.g. 64MiB")] = "64MiB",
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    keep: Annotated[bool, typer.Option(help="keep the temp dir (logs, data)")] = False,
    timeout: Annotated[str, typer.Option(help="per-dfget timeout")] = "10m",
    log_level: LogLevel = "INFO",
) -> None:
    """Origin + scheduler + seed + N peers on 127.0.0.1; dfget on every peer at once."""
    from ..units import parse_size
    from .bench import print_result, run_bench
    from .parsing import parse_duration

    try:
        size_bytes = parse_size(size)
        timeout_s = parse_duration(timeout)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    result = run_bench(
        peers, size_bytes, keep=keep, log_level=log_level, timeout_s=timeout_s, progress=not json_out
    )
    raise typer.Exit(print_result(result, as_json=json_out))


from .bench_scheduler import bench_scheduler  # noqa: E402  (imports only typer; the load code is lazy)

bench_app.command("scheduler")(bench_scheduler)


@app.command()
def demo(keep: Annotated[bool, typer.Option(help="keep the temp dir (logs, data)")] = False) -> None:
    """Three peers fetch one 64 MiB file at once; see what P2P saved the origin."""
    from ..units import MiB
    from .bench import human_summary, run_bench

    typer.echo("Damselfly demo: an origin, a scheduler, a seed and 3 peers on this machine.")
    result = run_bench(3, 64 * MiB, keep=keep, log_level="INFO")
    typer.echo(human_summary(result))
    raise typer.Exit(0 if result.ok else 1)


@app.command("init")
def init_engine(
    engine: Annotated[str, typer.Argument(help="containerd, docker, podman, crio or k3s")],
    root: Annotated[Path, typer.Option(help="write under this root instead of /")] = Path("/"),
    proxy: Annotated[str, typer.Option(help="the daemon's mirror/proxy address")] = "127.0.0.1:4001",
    registry: Annotated[
        list[str] | None,
        typer.Option(
            "--registry",
            help="registry to mirror, repeatable (default docker.io): host[:port], or http://host:port",
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the changes, write nothing")] = False,
) -> None:
    """Point a container engine at the daemon's registry mirror (merges with its config, prints the diff)."""
    from .init_cmd import run_init

    raise typer.Exit(
        run_init(engine, root=root, mirror=proxy, registries=list(registry or ["docker.io"]), dry_run=dry_run)
    )


@app.command("ca")
def proxy_ca(
    config: ConfigFile = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="the daemon's storage directory (storage.dir)")
    ] = None,
) -> None:
    """Print the CA certificate the proxy signs intercepted hosts with (created if missing), to trust it."""
    from ..config import load_daemon_config
    from ..daemon.proxy.ca import ensure_ca
    from ..errors import ConfigError

    try:
        cfg = load_daemon_config(config, {"storage": {"dir": str(data_dir)}} if data_dir else None)
        cert, _ = ensure_ca(Path(cfg.storage.dir), cfg.proxy.hijack_https.cert, cfg.proxy.hijack_https.key)
        typer.echo(cert.read_text(), nl=False)
    except (ConfigError, OSError) as e:
        typer.echo(f"damselfly ca: {e}", err=True)
        raise typer.Exit(2) from None


certs_app = typer.Typer(
    help="A CA and host certificates for mTLS between daemons and schedulers (docs/TLS.md).",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(certs_app, name="certs")


@certs_app.command("ca")
def certs_ca(
    out: Annotated[Path, typer.Option("--out", help="directory for ca.crt and ca.key")],
    name: Annotated[str, typer.Option(help="the CA's common name")] = "Damselfly fleet CA",
    force: Annotated[bool, typer.Option(help="replace a CA already in --out")] = False,
) -> None:
    """Make a CA (ECDSA P-256) that issues the fleet's host certificates."""
    from ..errors import ConfigError
    from ..security.certs import make_ca

    try:
        cert, key = make_ca(out, name=name, force=force)
    except (ConfigError, OSError) as e:
        typer.echo(f"damselfly certs ca: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"CA certificate {cert}, key {key} (keep the key off the hosts)")


@certs_app.command("issue")
def certs_issue(
    ca: Annotated[Path, typer.Option("--ca", help="the CA's directory (from `certs ca`)")],
    name: Annotated[str, typer.Option("--name", help="the host's name: subject CN and file names")],
    out: Annotated[Path, typer.Option("--out", help="directory for NAME.crt, NAME.key and ca.crt")],
    ip: Annotated[
        list[str] | None, typer.Option("--ip", help="an IP of the host (IP SAN), repeatable")
    ] = None,
    dns: Annotated[
        list[str] | None, typer.Option("--dns", help="a DNS name of the host (DNS SAN), repeatable")
    ] = None,
    days: Annotated[int, typer.Option(help="validity in days")] = 825,
) -> None:
    """Issue a host certificate (server and client use) with the host's IPs and names as SANs."""
    from ..errors import ConfigError
    from ..security.certs import issue

    try:
        issued = issue(ca, name, ips=ip or [], dns=dns or [], out=out, days=days)
    except (ConfigError, OSError) as e:
        typer.echo(f"damselfly certs issue: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"tls.caCert: {issued.ca_cert}\ntls.cert: {issued.cert}\ntls.key: {issued.key}")


def main() -> None:
    app(prog_name="damselfly")


def _register_bench_swarm() -> None:
    from .bench_swarm import swarm

    bench_app.command("swarm")(swarm)
    from .bench_relay import relay

    bench_app.command("relay")(relay)


_register_bench_swarm()
