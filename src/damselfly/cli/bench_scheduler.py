"""``damselfly bench scheduler``: the scheduler at scale (thousands of simulated peers).

The load and the report are built in :mod:`damselfly.testbed.loadgen`; this
module turns flags into a :class:`~damselfly.testbed.loadgen.plan.LoadPlan`
and prints the report (JSON, or a short human summary).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

LogLevel = Annotated[str, typer.Option("--log-level", help="the scheduler's log level")]


def human_summary(r: dict[str, Any]) -> str:
    plan = r["plan"]
    lines = [
        f"{plan['peers']} peers over {plan['tasks']} tasks on {r['hosts']} hosts, "
        f"{plan['rate'] or 'all-at-once'} arrivals/s, {plan['workers']} generator processes"
    ]
    if "error" in r:
        lines.append(f"  error: {r['error']}")
    if "latency_ms" in r:
        lat = r["latency_ms"]
        lines.append(
            f"  answered {r['answered']}/{plan['peers']} ({r['answers']}), "
            f"{r['decisions_per_s']} decisions/s over {r['answer_span_s']} s"
        )
        lines.append(
            f"  register -> answer: p50 {lat['p50']} ms, p90 {lat['p90']} ms, "
            f"p99 {lat['p99']} ms, max {lat['max']} ms"
        )
        lines.append(f"  peak open streams {r['peak_open_streams']}, errors {r['errors'] or 'none'}")
        gen = r["generator"]
        lines.append(
            f"  generator: {gen['cpu_s']} CPU s, {gen['cores_used']} cores, {gen['processes']} processes, "
            f"event-loop lag p99 {gen['loop_lag_ms']['p99']} ms, max {gen['loop_lag_ms']['max']} ms"
        )
    sched = r.get("scheduler", {})
    if sched.get("rss_peak_bytes"):
        lines.append(
            f"  scheduler: peak RSS {sched['rss_peak_bytes'] / 2**20:.0f} MiB, "
            f"{sched.get('cpu_s')} CPU s, {sched.get('cores_used')} cores "
            f"({sched.get('cores_used_until_release')} until release)"
        )
        m = sched.get("metrics", {})
        if "loop_lag_max_ms" in m:
            lines.append(
                f"  scheduler event-loop lag max {m['loop_lag_max_ms']} ms; "
                f"GC pause max {max(v for k, v in m.items() if k.startswith('gc_pause_milliseconds_max'))} ms"
            )
    lines.append(f"  load average before {r['load_average_before']}, after {r.get('load_average_after')}")
    lines.append(f"  CPU pressure before {r.get('cpu_pressure_before')}, after {r.get('cpu_pressure_after')}")
    lines.append(f"  seeds: {r['seed_mode']}")
    return "\n".join(lines)


def bench_scheduler(
    peers: Annotated[int, typer.Option(min=1, help="simulated peers (one AnnouncePeer stream each)")] = 5000,
    tasks: Annotated[int, typer.Option(min=1, help="tasks the peers download")] = 500,
    peers_per_host: Annotated[int, typer.Option(min=1, help="peers per simulated host")] = 1,
    rate: Annotated[float, typer.Option(min=0, help="peer arrivals per second; 0: all at once")] = 250.0,
    workers: Annotated[int, typer.Option(min=1, max=64, help="generator processes")] = 3,
    pieces: Annotated[int, typer.Option(min=0, help="piece reports per peer")] = 4,
    hold: Annotated[
        float, typer.Option(min=0, help="seconds every peer stays open after the last arrival")
    ] = 2.0,
    seeds: Annotated[int, typer.Option(min=0, help="simulated seed hosts; 0: seed trigger disabled")] = 0,
    channels: Annotated[int, typer.Option(min=1, help="gRPC connections per generator process")] = 4,
    address: Annotated[
        str | None, typer.Option(help="an already running scheduler host:port (default: start one)")
    ] = None,
    scheduler_pid: Annotated[
        int | None, typer.Option(help="with --address: its PID, for RSS and CPU")
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(help="py-spy profile of the scheduler: .svg, .json (speedscope) or .txt (collapsed)"),
    ] = None,
    scheduler_src: Annotated[
        Path | None, typer.Option(help="run the scheduler from this source tree (A/B against another commit)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    keep: Annotated[bool, typer.Option(help="keep the temp dir (logs)")] = False,
    log_level: LogLevel = "WARNING",
) -> None:
    """Announce thousands of simulated hosts and peers to one scheduler; report decisions/s, latency, RSS."""
    from ..testbed.loadgen.plan import LoadPlan
    from ..testbed.loadgen.run import BenchOptions, run_scheduler_bench

    try:
        plan = LoadPlan(
            peers=peers, tasks=tasks, peers_per_host=peers_per_host, workers=workers, rate=rate,
            pieces=pieces, hold_s=hold, seeds=seeds, channels_per_worker=channels,
        )  # fmt: skip
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    options = BenchOptions(
        address=address,
        scheduler_pid=scheduler_pid,
        log_level=log_level,
        keep=keep,
        profile=profile,
        scheduler_src=scheduler_src,
    )
    report = run_scheduler_bench(plan, options, say=lambda m: print(m, file=sys.stderr, flush=True))
    if json_out:
        print(json.dumps(report, indent=2))
    else:
        print(human_summary(report))
    raise typer.Exit(0 if report["ok"] else 1)
