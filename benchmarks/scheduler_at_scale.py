"""The scheduler at scale: 5,000 concurrent peers over 500 tasks, median of N runs, optionally A/B.

Target (issue 5, section 3): p99 register-to-answer latency under 50 ms and
scheduler RSS under 1 GB with 5,000 peers open at once over 500 tasks, on this
machine (2 cores). Each run is ``damselfly bench scheduler --json`` (one
scheduler process, several generator processes); see that command for what
is measured and how.

``--baseline-src DIR`` runs the scheduler of another source tree too (made with
``git archive <commit> src | tar -x -C DIR``), alternating baseline and current
run by run, so both see the same neighbours on a shared machine:

    .venv/bin/python benchmarks/scheduler_at_scale.py --runs 3
    mkdir -p /tmp/before && git archive <commit> src | tar -x -C /tmp/before
    .venv/bin/python benchmarks/scheduler_at_scale.py --runs 3 --baseline-src /tmp/before/src

Prints JSON: every run's headline numbers and, per variant, their medians.
Extra arguments after ``--`` go to ``damselfly bench scheduler``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any


def headline(r: dict[str, Any]) -> dict[str, Any]:
    sched = r.get("scheduler", {})
    metrics = sched.get("metrics", {})
    return {
        "ok": r.get("ok"),
        "answered": r.get("answered"),
        "p50_ms": r.get("latency_ms", {}).get("p50"),
        "p99_ms": r.get("latency_ms", {}).get("p99"),
        "max_ms": r.get("latency_ms", {}).get("max"),
        "decisions_per_s": r.get("decisions_per_s"),
        "scheduler_rss_peak_mib": round((sched.get("rss_peak_bytes") or 0) / 2**20, 1),
        "scheduler_cpu_s": sched.get("cpu_s"),
        "scheduler_cores": sched.get("cores_used"),
        "generator_cores": r.get("generator", {}).get("cores_used"),
        "gc_pause_max_ms": max(
            (v for k, v in metrics.items() if k.startswith("gc_pause_milliseconds_max")), default=None
        ),
        "scheduler_loop_lag_max_ms": metrics.get("loop_lag_max_ms"),
        "generator_loop_lag_p99_ms": r.get("generator", {}).get("loop_lag_ms", {}).get("p99"),
        "load_average_1m": round(r.get("load_average_before", [0.0])[0], 2),
        "cpu_pressure_avg10": r.get("cpu_pressure_before", {}).get("avg10"),
        "error": r.get("error"),
    }


def run_once(bench_args: list[str], src: str | None) -> dict[str, Any]:
    argv = [sys.executable, "-m", "damselfly", "bench", "scheduler", "--json", *bench_args]
    if src:
        argv += ["--scheduler-src", src]
    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
    try:
        report: dict[str, Any] = json.loads(r.stdout)
    except ValueError:
        return {"error": f"bench exited {r.returncode}: {r.stderr[-500:]}"}
    return report


def medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("p50_ms", "p99_ms", "max_ms", "decisions_per_s", "scheduler_rss_peak_mib", "scheduler_cpu_s",
                "scheduler_cores", "generator_cores", "gc_pause_max_ms", "scheduler_loop_lag_max_ms",
                "generator_loop_lag_p99_ms", "load_average_1m", "cpu_pressure_avg10"):  # fmt: skip
        values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        out[key] = statistics.median(values) if values else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline-src", help="another source tree's src/ to A/B against")
    ap.add_argument("--current-src", help="the scheduler's src/ for 'current' (default: this tree)")
    ap.add_argument("bench_args", nargs="*", help="passed to damselfly bench scheduler (after --)")
    args = ap.parse_args()
    variants: list[tuple[str, str | None]] = [("current", args.current_src)]
    if args.baseline_src:
        variants.insert(0, ("baseline", args.baseline_src))
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    for i in range(args.runs):
        for name, src in variants:
            row = headline(run_once(args.bench_args, src))
            rows[name].append(row)
            print(f"run {i + 1} {name}: {json.dumps(row)}", file=sys.stderr, flush=True)
    summary = {name: {"median": medians(r), "runs": r} for name, r in rows.items()}
    print(json.dumps(summary, indent=2))
    return 0 if all(r["ok"] for rs in rows.values() for r in rs) else 1


if __name__ == "__main__":
    sys.exit(main())
