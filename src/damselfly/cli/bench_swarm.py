"""``damselfly bench swarm``: a real distribution across hosts in network namespaces (root).

Imports the testbed lazily, so ``damselfly --help`` stays fast (all but :mod:`..testbed.machine`,
which imports only the standard library and ``damselfly.units``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..testbed.machine import MEMORY_HELP, memory_mode, resident_memory

if TYPE_CHECKING:
    from ..testbed.scenarios import Scenario
    from ..testbed.swarm import SwarmOptions

SCENARIO_HELP = (
    "flash-crowd, staggered, mixed-rates, large-file-few-peers, small-file-many-peers, "
    "scheduler-restart, scheduler-failover or seed-loss (ignored with --rates-file)"
)


def swarm(
    scenario: Annotated[str, typer.Option(help=SCENARIO_HELP)] = "flash-crowd",
    peers: Annotated[int | None, typer.Option(min=1, max=200, help="peer hosts (scenario default)")] = None,
    size: Annotated[str | None, typer.Option(help="file size, e.g. 256MiB (scenario default)")] = None,
    rate: Annotated[str, typer.Option(help="each host's upload and download rate")] = "100mbit",
    origin_rate: Annotated[str | None, typer.Option(help="the origin's rate (default: --rate)")] = None,
    seeds: Annotated[int, typer.Option(min=0, max=8, help="seed peer hosts")] = 1,
    schedulers: Annotated[
        int | None, typer.Option(min=1, max=8, help="schedulers, every daemon given all (scenario default)")
    ] = None,
    seed_rate: Annotated[str | None, typer.Option(help="seed hosts' rate (default: --rate)")] = None,
    stagger: Annotated[str, typer.Option(help="staggered: time between arrivals")] = "2s",
    slow_fraction: Annotated[float, typer.Option(help="mixed-rates: share of slow peers")] = 0.25,
    slow_factor: Annotated[float, typer.Option(help="mixed-rates: their share of --rate")] = 0.25,
    rates_file: Annotated[
        Path | None, typer.Option(help="YAML/JSON: origin, seeds and peers with rate/up/down/arrival")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the JSON result on stdout")] = False,
    out: Annotated[Path | None, typer.Option(help="write the JSON result here")] = None,
    plot: Annotated[
        Path | None, typer.Option(help="PNG of the peers' progress (default: --out with .png)")
    ] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="no PNG")] = False,
    timeout: Annotated[str, typer.Option(help="per-dfget timeout")] = "10m",
    poll_interval: Annotated[float, typer.Option(help="seconds between progress samples")] = 1.0,
    keep: Annotated[bool, typer.Option(help="keep the run's directory (logs, data)")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="the daemons' log level")] = "INFO",
    daemon_config: Annotated[
        Path | None, typer.Option(help="YAML config for every daemon (policies to compare)")
    ] = None,
    scheduler_config: Annotated[Path | None, typer.Option(help="YAML config for the scheduler")] = None,
    plain_peers: Annotated[
        int,
        typer.Option(
            min=0,
            max=200,
            help="run K peers on Dragonfly's wire only (wire.extensions: false merged into --daemon-config), "
            "spread evenly: every other peer when K is half, so each kind is the other's parent",
        ),
    ] = 0,
    plain_seed: Annotated[
        bool, typer.Option("--plain-seed", help="run the seed(s) on Dragonfly's wire only, too")
    ] = False,
    link_queue: Annotated[
        str,
        typer.Option(
            help="what waits in each host's token bucket: ack-first (pure ACKs ahead of data, as "
            "fq_codel does on a Linux host) or fifo (one queue: a busy uplink delays its own ACKs)"
        ),
    ] = "ack-first",
    piece_length: Annotated[
        str | None, typer.Option(help="every dfget's --piece-length (default: the task's own, e.g. 4MiB)")
    ] = None,
    tls: Annotated[
        bool, typer.Option("--tls", help="mTLS on every link (a CA and certificates made for the run)")
    ] = False,
    runs: Annotated[
        int, typer.Option(min=1, max=20, help="runs (with --baseline: of each, alternating)")
    ] = 1,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="aria2: also run aria2c + opentracker on the same hosts and links (the origin's host "
            "seeds, the peers leech), alternating with Damselfly's runs"
        ),
    ] = None,
    cleanup: Annotated[
        str | None,
        typer.Option("--cleanup", metavar="PREFIX", help="remove the namespaces PREFIX-* and exit"),
    ] = None,
    cleanup_stale: Annotated[
        bool, typer.Option("--cleanup-stale", help="remove namespaces of crashed runs and exit")
    ] = False,
    memory: Annotated[str, typer.Option(help=MEMORY_HELP)] = "resident",
) -> None:
    """Origin, scheduler, seed(s) and N peers, each in its own network namespace with tc-shaped
    links; every peer runs dfget at its arrival time. Reports completion times against the
    fluid bound T_min, origin bytes / F and CPU use. Needs root."""
    from ..errors import InvalidArgument
    from ..runtime.supervisor import Interrupted
    from ..testbed import netns
    from ..testbed.report import human_summary
    from ..testbed.scenarios import Knobs, build_scenario, load_rates_file, with_plain_wire
    from ..testbed.shaping import QUEUES, parse_rate
    from ..testbed.swarm import SwarmOptions, dump_result, run_swarm
    from ..testbed.wire import config_wire, plain_config
    from ..units import MiB, parse_size
    from .parsing import parse_duration

    try:
        if cleanup is not None or cleanup_stale:
            netns.check_can_build()
            removed = netns.cleanup_prefix(cleanup) if cleanup is not None else netns.sweep_stale()
            typer.echo(f"removed {len(removed)} namespaces" + (f": {' '.join(removed)}" if removed else ""))
            raise typer.Exit(0)
        rate_bits = parse_rate(rate)
        knobs = Knobs(
            peers=peers,
            size=parse_size(size) if size else None,
            rate_bits=rate_bits,
            origin_bits=parse_rate(origin_rate) if origin_rate else None,
            seeds=seeds,
            schedulers=schedulers,
            seed_bits=parse_rate(seed_rate) if seed_rate else None,
            stagger_s=parse_duration(stagger),
            slow_fraction=slow_fraction,
            slow_factor=slow_factor,
        )
        if rates_file is not None:
            sc = load_rates_file(rates_file, size=knobs.size or 256 * MiB, default_bits=rate_bits)
        else:
            sc = build_scenario(scenario, knobs)
        for path in (daemon_config, scheduler_config):
            if path is not None and not path.is_file():
                raise InvalidArgument(f"no config file at {path}")
        sc = with_plain_wire(sc, plain_peers=plain_peers, plain_seed=plain_seed)
        config_wire(daemon_config)  # a daemon config the daemons would refuse is refused here
        if plain_peers or plain_seed:
            plain_config(daemon_config)
        options = SwarmOptions(
            timeout_s=parse_duration(timeout),
            poll_interval_s=poll_interval,
            log_level=log_level,
            keep=keep,
            daemon_config=daemon_config.resolve() if daemon_config else None,
            scheduler_config=scheduler_config.resolve() if scheduler_config else None,
            link_queue=link_queue,
            piece_length=parse_size(piece_length) if piece_length else None,
            tls=tls,
        )
        if link_queue not in QUEUES:
            raise InvalidArgument(f"--link-queue {link_queue!r}: choose one of {', '.join(QUEUES)}")
        if baseline not in (None, "aria2"):
            raise InvalidArgument(f"--baseline {baseline!r}: the one baseline is aria2")
        as_is = memory_mode(memory)
    except (InvalidArgument, ValueError) as e:
        raise typer.BadParameter(str(e)) from None
    try:
        with resident_memory(as_is=as_is) as prep:
            if runs > 1 or baseline is not None:
                _compare(sc, options, runs, baseline, json_out=json_out, out=out, memory=prep.to_json())
            try:
                result = run_swarm(sc, options)
            except netns.TestbedError as e:
                typer.echo(f"damselfly bench swarm: {e}", err=True)
                raise typer.Exit(2) from None
    except Interrupted:  # stopped while the memory was prepared or put back
        typer.echo("damselfly bench swarm: interrupted", err=True)
        raise typer.Exit(1) from None
    data = result.to_json()
    data["memory"] = prep.to_json()
    plot_path = plot or (out.with_suffix(".png") if out else Path(f"swarm-{sc.name}-{result.prefix}.png"))
    if not no_plot and result.hosts:
        from ..testbed.plot import plot_progress

        try:
            data["plot"] = result.plot = str(plot_progress(data, plot_path))
        except netns.TestbedError as e:
            typer.echo(f"damselfly bench swarm: no plot: {e}", err=True)
    if out is not None:
        data = dump_result(result, out, memory=data["memory"])
    typer.echo(human_summary(data), err=json_out)
    if data["plot"]:
        typer.echo(f"  plot: {data['plot']}", err=json_out)
    if json_out:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    raise typer.Exit(0 if result.ok else 1)


def _compare(
    sc: Scenario,
    options: SwarmOptions,
    runs: int,
    baseline: str | None,
    *,
    json_out: bool,
    out: Path | None,
    memory: dict[str, Any],
) -> None:
    """``runs`` runs of Damselfly (and of the baseline, alternating which goes first), then medians."""
    from ..testbed import netns
    from ..testbed.compare import compare_runs, human_comparison

    try:
        data = compare_runs(sc, options, runs, baseline)
    except netns.TestbedError as e:
        typer.echo(f"damselfly bench swarm: {e}", err=True)
        raise typer.Exit(2) from None
    data["memory"] = memory
    if out is not None:
        out.write_text(json.dumps(data, indent=2) + "\n")
    typer.echo(human_comparison(data), err=json_out)
    if json_out:
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    raise typer.Exit(0 if data["ok"] else 1)
