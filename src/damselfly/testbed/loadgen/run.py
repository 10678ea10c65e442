"""The coordinator of ``damselfly bench scheduler``: one scheduler, several generator processes.

It starts the scheduler as its own process (``python -m damselfly scheduler
--port 0 --ready-file ...``) unless given an address, starts the generator
processes (:mod:`.worker`), waits until each has announced its hosts, writes
the common start time, and while they run samples the scheduler's CPU from
``/proc/<pid>/stat``. Then it merges what the workers saw into one report:
decisions per second, register-to-answer latency, the scheduler's peak RSS
(VmHWM) and CPU, and the generators' own CPU (so a reader can tell whether the
client was the limit). Every process is stopped by PID, also on failure or
Ctrl-C; the temp dir is removed unless ``keep``.

Seed peers: with ``plan.seeds == 0`` no seed host exists and the scheduler's
seed trigger is disabled in its config, so each task's first peer is sent back
to source; with seeds, a ``seeds`` worker answers the trigger (DownloadTask)
with a simulated seed peer that goes back to source.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ...process import write_ready_file
from ...runtime.children import ChildFailed, ChildProcess, python_module_command, spawn, stop_all
from ...runtime.supervisor import Interrupted, ignore_signals, interrupt_on_signals
from ..machine import current_rss_bytes, peak_rss_bytes, process_cpu_s
from .plan import LoadPlan, latency_summary, timeline

_GC_METRICS = (
    "damselfly_scheduler_gc_collections{",
    "damselfly_scheduler_gc_pause_milliseconds_sum{",
    "damselfly_scheduler_gc_pause_milliseconds_max{",
)


def scrape_metrics(port: int) -> dict[str, float]:
    """The scheduler's decision counters, schedule-duration sums and GC pauses, from its /metrics."""
    out: dict[str, float] = {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("damselfly_scheduler_schedule_decision_total{"):
            kind = line.split('kind="', 1)[1].split('"', 1)[0]
            out[f"decisions_{kind}"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("dragonfly_scheduler_schedule_duration_milliseconds_sum"):
            out["schedule_ms_sum"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("dragonfly_scheduler_schedule_duration_milliseconds_count"):
            out["schedule_count"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("damselfly_scheduler_event_loop_lag_max_milliseconds "):
            out["loop_lag_max_ms"] = round(float(line.rsplit(" ", 1)[1]), 2)
        elif line.startswith("damselfly_scheduler_event_loop_lag_milliseconds_count "):
            out["loop_lag_samples"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith('damselfly_scheduler_event_loop_lag_milliseconds_bucket{le="50.0"}'):
            out["loop_lag_samples_under_50ms"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith(_GC_METRICS):
            name, value = line.rsplit(" ", 1)
            gen = name.split('generation="', 1)[1].split('"', 1)[0]
            short = name.split("{", 1)[0].removeprefix("damselfly_scheduler_")
            out[f"{short}_gen{gen}"] = round(float(value), 2)
    return out


def cpu_pressure() -> dict[str, float]:
    """``/proc/pressure/cpu`` "some" averages: the share of time runnable tasks waited for a CPU.

    Next to the load average it tells a reader whether other work on the
    machine was taking the cores the scheduler and the generator needed.
    """
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except (OSError, IndexError):
        return {}
    out = {}
    for part in line.split()[1:]:
        key, _, value = part.partition("=")
        if key.startswith("avg"):
            out[key] = float(value)
    return out


@dataclass
class BenchOptions:
    address: str | None = None  # an already running scheduler; None: start one
    scheduler_pid: int | None = None  # with ``address``: whose RSS and CPU to report
    log_level: str = "WARNING"
    keep: bool = False
    profile: Path | None = None  # py-spy flame graph of the scheduler during the load
    scheduler_src: Path | None = None  # run the scheduler from this source tree (A/B against another commit)
    timeout_s: float = 120.0  # on top of arrival window + hold + answer timeout


def start_scheduler(root: Path, plan: LoadPlan, log_level: str, src: Path | None = None) -> ChildProcess:
    config = {
        "server": {"ip": "127.0.0.1", "port": 0},
        "metrics": {"ip": "127.0.0.1", "port": 0},
        "seedPeer": {"enable": plan.seeds > 0},
        # Steady-state decisions: no restart grace (scheduler.startupGrace) before the load; the
        # simulated seed hosts live only as long as the load.
        "scheduler": {"startupGrace": 0},
    }
    if src is None:
        # The simulated hosts announce 10.x addresses from loopback (docs/SECURITY.md).
        config["security"] = {"trustedNetworks": ["127.0.0.0/8"]}
    cfg = root / "scheduler.yaml"
    cfg.write_text(yaml.safe_dump(config))
    ready = root / "run" / "scheduler.json"
    argv = python_module_command(
        "damselfly", "scheduler", "--config", str(cfg), "--port", "0", "--ready-file", str(ready),
        "--log-level", log_level,
    )  # fmt: skip
    env = {"PYTHONPATH": str(src)} if src is not None else None
    child = spawn("scheduler", argv, log_path=root / "logs" / "scheduler.log", ready_file=ready, env=env)
    child.wait_ready(30)
    return child


def _start_profiler(root: Path, pid: int, out: Path) -> ChildProcess | None:
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        found = shutil.which("py-spy")
        if found is None:
            return None
        exe = Path(found)
    argv = [str(exe), "record", "--pid", str(pid), "--rate", "200", "--nonblocking", "-o", str(out)]
    if out.suffix == ".json":
        argv += ["--format", "speedscope"]
    elif out.suffix == ".txt":
        argv += ["--format", "raw"]  # collapsed stacks, one line each: greppable
    return spawn("py-spy", argv, log_path=root / "logs" / "py-spy.log")


def _stop_profiler(child: ChildProcess) -> None:
    if child.alive():
        os.kill(child.pid, signal.SIGINT)  # py-spy writes its output on SIGINT, not on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(timeout=60)
    stop_all([child], grace=5)


def _merge(results: list[dict[str, Any]], plan: LoadPlan) -> dict[str, Any]:
    peer_results = [r for r in results if r["role"] == "peers"]
    latencies = [x for r in peer_results for x in r["latencies_ms"]]
    registered = [x for r in peer_results for x in r["registered_at"]]
    by_answer: dict[str, list[float]] = {}
    answers: dict[str, int] = {}
    errors: dict[str, int] = {}
    for r in peer_results:
        for k, v in r["latencies_by_answer"].items():
            by_answer.setdefault(k, []).extend(v)
        for k, n in r["answers"].items():
            answers[k] = answers.get(k, 0) + n
    for r in results:
        for k, n in r["errors"].items():
            errors[k] = errors.get(k, 0) + n
    firsts = [r["first_register"] for r in peer_results if r["first_register"]]
    lasts = [r["last_answer"] for r in peer_results if r["last_answer"]]
    span = (max(lasts) - min(firsts)) if firsts and lasts else 0.0
    answered = len(latencies)
    gen_cpu = sum(r["cpu_s"] for r in results)
    gen_wall = max((r["wall_s"] for r in results), default=0.0)
    return {
        "answered": answered,
        "unanswered": plan.peers - answered,
        "finished": sum(r["finished"] for r in peer_results),
        "answers": answers,
        "errors": errors,
        "error_samples": [s for r in results for s in r["error_samples"]][:10],
        "decisions_per_s": round(answered / span, 1) if span > 0 else None,
        "answer_span_s": round(span, 3),
        "latency_ms": latency_summary(latencies),
        "latency_ms_by_answer": {k: latency_summary(v) for k, v in sorted(by_answer.items())},
        "latency_ms_by_second": timeline(registered, latencies),
        "messages_sent": sum(r["sent"] for r in results),
        "peak_open_streams": sum(r["peak_open_streams"] for r in peer_results),
        "seed_triggers_answered": sum(r.get("seed_triggers", 0) for r in results),
        "generator": {
            "processes": len(results),
            "cpu_s": round(gen_cpu, 2),
            "cores_used": round(gen_cpu / gen_wall, 2) if gen_wall else None,
            "cpu_s_per_process": [r["cpu_s"] for r in results],
            "pacer_lag_max_ms": max((r["pacer_lag_max_ms"] for r in results), default=0.0),
            "loop_lag_ms": latency_summary(x for r in results for x in r.get("loop_lag_ms", [])),
        },
    }


def run_scheduler_bench(
    plan: LoadPlan, options: BenchOptions, say: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Run the whole benchmark and return the report (``report["error"]`` says what went wrong)."""
    root = Path(tempfile.mkdtemp(prefix="dfsched-"))
    report: dict[str, Any] = {"plan": plan.to_json(), "hosts": plan.hosts, "workdir": str(root)}
    report["seed_mode"] = (
        f"{plan.seeds} simulated seed hosts answer the seed trigger"
        if plan.seeds
        else "no seed hosts; seed trigger disabled; each task's first peer goes back to source"
    )
    children: list[ChildProcess] = []
    scheduler: ChildProcess | None = None
    profiler: ChildProcess | None = None

    with interrupt_on_signals():
        try:
            report["load_average_before"] = list(os.getloadavg())
            report["cpu_pressure_before"] = cpu_pressure()
            metrics_port = 0
            if options.address is None:
                say("bench scheduler: starting the scheduler")
                scheduler = start_scheduler(root, plan, options.log_level, options.scheduler_src)
                address = f"127.0.0.1:{scheduler.ready['grpc_port']}"
                metrics_port = int(scheduler.ready.get("metrics_port", 0))
                pid: int | None = scheduler.pid
            else:
                address, pid = options.address, options.scheduler_pid
            report["scheduler_address"] = address
            plan_file = root / "plan.json"
            plan_file.write_text(json.dumps(plan.to_json()))
            go = root / "run" / "go.json"
            roles = [("peers", w) for w in range(plan.workers)] + ([("seeds", 0)] if plan.seeds else [])
            outs: list[Path] = []
            for role, w in roles:
                ready = root / "run" / f"{role}-{w}.ready.json"
                out = root / "run" / f"{role}-{w}.out.json"
                outs.append(out)
                argv = python_module_command(
                    "damselfly.testbed.loadgen.worker", "--plan", str(plan_file), "--role", role,
                    "--index", str(w), "--address", address, "--ready-file", str(ready), "--go-file", str(go),
                    "--out", str(out),
                )  # fmt: skip
                children.append(
                    spawn(f"{role}-{w}", argv, log_path=root / "logs" / f"{role}-{w}.log", ready_file=ready)
                )
            say(f"bench scheduler: {len(children)} generator processes announce {plan.hosts} hosts")
            for c in children:
                c.wait_ready(120)
            if options.profile is not None and pid is not None:
                profiler = _start_profiler(root, pid, options.profile)
                if profiler is None:
                    say("bench scheduler: py-spy not found; no profile")
            cpu0 = process_cpu_s(pid) if pid else None
            start_at = time.time() + 0.5
            write_ready_file(go, {"start_at": start_at})
            release_at = start_at + plan.arrival_window_s + plan.hold_s
            say(
                f"bench scheduler: {plan.peers} peers over {plan.tasks} tasks, "
                f"arriving over {plan.arrival_window_s:.1f} s, "
                f"all open until +{plan.arrival_window_s + plan.hold_s:.1f} s"
            )
            deadline = release_at + plan.answer_timeout_s + options.timeout_s
            cpu_at_release: float | None = None
            last_note = time.time()
            while any(c.alive() for c in children):
                now = time.time()
                if cpu_at_release is None and now >= release_at and pid:
                    cpu_at_release = process_cpu_s(pid)
                    report["scheduler_rss_at_release_bytes"] = current_rss_bytes(pid)
                if now > deadline:
                    raise TimeoutError(
                        f"generators still running {options.timeout_s:.0f} s after the deadline"
                    )
                if now - last_note >= 5:
                    say(f"bench scheduler: {now - start_at:.0f} s")
                    last_note = now
                time.sleep(0.05)
            end = time.time()
            failed = [c for c in children if c.popen.returncode != 0]
            if failed:
                raise ChildFailed(
                    failed[0],
                    f"{failed[0].name} exited {failed[0].popen.returncode}:\n{failed[0].log_tail()}",
                )
            results = [json.loads(p.read_text()) for p in outs]
            report.update(_merge(results, plan))
            report["load_average_after"] = list(os.getloadavg())
            report["cpu_pressure_after"] = cpu_pressure()
            if pid:
                cpu1 = process_cpu_s(pid)
                sched: dict[str, Any] = {
                    "pid": pid,
                    "rss_peak_bytes": peak_rss_bytes(pid),
                    "rss_bytes": current_rss_bytes(pid),
                }
                if cpu0 is not None and cpu1 is not None:
                    sched["cpu_s"] = round(cpu1 - cpu0, 2)
                    sched["cores_used"] = round((cpu1 - cpu0) / (end - start_at), 2)
                if cpu0 is not None and cpu_at_release is not None:
                    sched["cores_used_until_release"] = round(
                        (cpu_at_release - cpu0) / max(release_at - start_at, 1e-6), 2
                    )
                report["scheduler"] = sched
            if metrics_port:
                report.setdefault("scheduler", {})["metrics"] = scrape_metrics(metrics_port)
        except (ChildFailed, TimeoutError) as e:
            report["error"] = str(e).splitlines()[0]
            say(f"bench scheduler: {e}")
        except Interrupted:
            report["error"] = "interrupted"
            say("bench scheduler: interrupted; cleaning up")
        finally:
            ignore_signals()
            if profiler is not None:
                _stop_profiler(profiler)
                report["profile"] = str(options.profile)
            stop_all(children, grace=5)
            if scheduler is not None:
                stop_all([scheduler], grace=10)
            if options.keep:
                say(f"bench scheduler: kept {root}")
            else:
                shutil.rmtree(root, ignore_errors=True)
    report["ok"] = "error" not in report and report.get("unanswered", 1) == 0
    return report
