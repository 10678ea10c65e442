"""A/B of two source trees on CPU per byte: alternating runs, medians.

    .venv/bin/python benchmarks/ab_trees.py OLD/src NEW/src relay --runs 3
    .venv/bin/python benchmarks/ab_trees.py OLD/src NEW/src swarm --runs 3 -- --peers 4 --size 128MiB

Each run is ``damselfly bench relay`` (256 MiB, k = 1 and 4) or ``damselfly bench swarm`` (the
arguments after ``--``) with PYTHONPATH set to one tree, so every process it starts runs that
tree's code; which tree goes first alternates. Prints each run's figures and the medians per tree:
the relay's CPU-s per GiB (and the kernel's, measured in the same run), the swarm's CPU seconds by
role, a peer's CPU-s per GiB received + sent and completion over T_min. Needs root for swarm.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any


def figures(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    if kind == "relay":
        return {
            f"k{k}_{what}": row[who][metric] if who else row["damselfly_over_kernel"]
            for k, row in data["summary"].items()
            for what, who, metric in (
                ("damselfly_cpu_s_per_gib", "damselfly", "cpu_s_per_gib"),
                ("kernel_cpu_s_per_gib", "kernel", "cpu_s_per_gib"),
                ("ratio", None, None),
            )
        }
    cpu = data["cpu"]
    return {
        "testbed_cpu_s": cpu["total_s"],
        "peers_cpu_s": cpu["by_role"].get("peers"),
        "seeds_cpu_s": cpu["by_role"].get("seeds"),
        "peer_cpu_s_per_gib_moved": cpu["median_cpu_s_per_gib_moved"],
        "p50_over_t_min": data["completion"]["p50_over_t_min"],
        "max_over_t_min": data["completion"]["max_over_t_min"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="tree A's src directory")
    ap.add_argument("b", help="tree B's src directory")
    ap.add_argument("kind", choices=["relay", "swarm"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("rest", nargs="*", help="after --: arguments for bench swarm")
    args = ap.parse_args()
    trees = {"A": args.a, "B": args.b}
    rows: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    for i in range(args.runs):
        for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
            env = dict(os.environ, PYTHONPATH=trees[name])
            cmd = [sys.executable, "-m", "damselfly", "bench", args.kind, "--json"]
            if args.kind == "relay":
                cmd += ["--size", "256MiB", "--children", "1,4", "--runs", "1"]
            else:
                cmd += [
                    "--no-plot",
                    "--log-level",
                    "WARNING",
                    *(args.rest or ["--peers", "4", "--size", "128MiB"]),
                ]
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            try:
                data = json.loads(p.stdout)
            except ValueError:
                print(f"run {i + 1} {name}: FAILED\n{p.stderr[-2000:]}", flush=True)
                continue
            row = figures(args.kind, data)
            rows[name].append(row)
            print(f"run {i + 1} {name}: {row}", flush=True)
    for name, runs in rows.items():
        keys = runs[0].keys() if runs else []
        medians = {k: statistics.median(v) for k in keys if (v := [r[k] for r in runs if r[k] is not None])}
        print(f"{name} ({trees[name]}) medians over {len(runs)} runs: {medians}")
    return 0 if all(rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
