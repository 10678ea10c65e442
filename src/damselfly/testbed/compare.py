"""Several swarm runs, Damselfly's and a baseline's alternating, and their medians.

Why: one run on a shared machine is noisy; a comparison with a baseline means
something only when both ran in the same sitting, interleaved (which one goes
first alternates from run to run), and are summed up by medians.
"""

from __future__ import annotations

import statistics
import sys
from typing import Any

from .aria2 import Aria2Run
from .report import human_summary
from .scenarios import Scenario
from .swarm import SwarmOptions, run_swarm


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _median(values: list[float | None]) -> float | None:
    done = [v for v in values if v is not None]
    return round(statistics.median(done), 4) if done else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs' JSON: completion over T_min, the testbed's CPU seconds (all and by role),
    a daemon's CPU seconds per GiB received + sent."""
    roles = sorted({r for d in runs for r in d["cpu"]["by_role"]})
    return {
        "runs": len(runs),
        "ok_runs": sum(1 for d in runs if d["ok"]),
        "p50_over_t_min": _median([d["completion"]["p50_over_t_min"] for d in runs]),
        "max_over_t_min": _median([d["completion"]["max_over_t_min"] for d in runs]),
        "testbed_cpu_s": _median([d["cpu"]["total_s"] for d in runs]),
        "cpu_s_by_role": {r: _median([d["cpu"]["by_role"].get(r) for d in runs]) for r in roles},
        "peer_cpu_s_per_gib_moved": _median([d["cpu"]["median_cpu_s_per_gib_moved"] for d in runs]),
        "cpu_busy_fraction": _median([d["cpu_busy_fraction"] for d in runs]),
    }


def compare_runs(sc: Scenario, options: SwarmOptions, runs: int, baseline: str | None) -> dict[str, Any]:
    kinds = ["damselfly", *([baseline] if baseline else [])]
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for i in range(runs):
        order = kinds if i % 2 == 0 else list(reversed(kinds))
        for kind in order:
            _say(f"swarm: run {i + 1}/{runs}: {kind}")
            if kind == "damselfly":
                result = run_swarm(sc, options, _say)
            else:
                from .netns import check_can_build

                check_can_build()
                result = Aria2Run(sc, options, _say).run()
            data = result.to_json()
            _say(human_summary(data))
            results[kind].append(data)
    summary: dict[str, Any] = {k: summarize(v) for k, v in results.items()}
    if baseline:
        d, b = summary["damselfly"]["testbed_cpu_s"], summary[baseline]["testbed_cpu_s"]
        summary["cpu_damselfly_over_baseline"] = round(d / b, 4) if d and b else None
    return {
        "ok": all(d["ok"] for v in results.values() for d in v),
        "scenario": sc.to_json(),
        "t_min_s": round(sc.bound().t_min, 4),
        "baseline": baseline,
        "summary": summary,
        "runs": results,
    }


def human_comparison(data: dict[str, Any]) -> str:
    def num(v: float | None, fmt: str = "{:.2f}") -> str:
        return "-" if v is None else fmt.format(v)

    s = data["summary"]
    lines = [f"medians over the runs (T_min {data['t_min_s']:.2f} s):"]
    for kind, row in s.items():
        if not isinstance(row, dict):
            continue
        roles = ", ".join(f"{k} {num(v, '{:.1f}')}" for k, v in row["cpu_s_by_role"].items())
        lines.append(
            f"  {kind:<9} {row['ok_runs']}/{row['runs']} ok; p50 {num(row['p50_over_t_min'])} / max "
            f"{num(row['max_over_t_min'])} T_min; testbed CPU {num(row['testbed_cpu_s'], '{:.1f}')} s "
            f"({roles}); a peer's CPU-s per GiB received + sent {num(row['peer_cpu_s_per_gib_moved'])}"
        )
    if data["baseline"]:
        lines.append(
            f"  testbed CPU, damselfly / {data['baseline']}: {num(s['cpu_damselfly_over_baseline'])}"
        )
    return "\n".join(lines)
