"""``damselfly bench scheduler`` end to end: a real scheduler process, real generator processes.

Tiny loads only; what is asserted is that every simulated peer got an answer
and the report has its fields. Timing lives in BENCHMARKS.md, not here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from damselfly.testbed.loadgen.plan import LoadPlan, host_id, latency_summary, percentile

pytestmark = pytest.mark.integration


def run_bench(*args: str) -> dict[str, object]:
    argv = [sys.executable, "-m", "damselfly", "bench", "scheduler", "--json", *args]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    report: dict[str, object] = json.loads(r.stdout)
    return report


def test_every_peer_gets_an_answer_and_the_report_has_its_fields() -> None:
    r = run_bench("--peers", "50", "--tasks", "5", "--rate", "500", "--workers", "2", "--hold", "0.2")
    assert r["ok"] is True
    assert r["answered"] == 50 and r["unanswered"] == 0 and r["finished"] == 50
    assert r["errors"] == {}
    # Without seed hosts each task's first peer goes to the origin; the others get it as a parent.
    assert r["answers"] == {"need_back_to_source_response": 5, "normal_task_response": 45}
    assert r["peak_open_streams"] == 50  # all open at once: nobody finishes before the release
    for key in ("p50", "p90", "p99", "max", "mean"):
        assert key in r["latency_ms"]  # type: ignore[operator]
    assert isinstance(r["decisions_per_s"], float)
    sched = r["scheduler"]
    assert isinstance(sched, dict)
    assert sched["rss_peak_bytes"] > 0 and "cpu_s" in sched and "cores_used" in sched
    assert sched["metrics"]["decisions_Parents"] == 45
    gen = r["generator"]
    assert isinstance(gen, dict) and gen["processes"] == 2 and "cores_used" in gen
    assert len(r["load_average_before"]) == 3  # type: ignore[arg-type]
    assert not Path(str(r["workdir"])).exists()  # cleaned up


def test_simulated_seed_hosts_answer_the_seed_trigger() -> None:
    r = run_bench(
        "--peers", "20", "--tasks", "4", "--rate", "500", "--workers", "1", "--seeds", "2", "--hold", "0.2"
    )
    assert r["ok"] is True
    # Each task's first peer waited for the triggered seed and got it as a parent: no peer went to the origin.
    assert r["answers"] == {"normal_task_response": 20}
    assert r["seed_triggers_answered"] == 4
    assert r["scheduler"]["metrics"].get("decisions_BackToSource") == 4  # type: ignore[index]  # the seeds


def test_plan_keeps_peers_of_a_task_on_different_hosts() -> None:
    plan = LoadPlan(peers=600, tasks=50, peers_per_host=10, workers=3)
    seen: dict[int, set[str]] = {}
    for i in range(plan.peers):
        h = host_id(plan.host_index(i))
        hosts = seen.setdefault(plan.task_index(i), set())
        assert h not in hosts
        hosts.add(h)
    assert plan.hosts == 60
    assert sorted(i for w in range(3) for i in plan.peers_of(w)) == list(range(600))
    assert all(plan.is_first_of_task(i) == (i < 50) for i in range(600))
    with pytest.raises(ValueError):
        LoadPlan(tasks=5, peers_per_host=6)


def test_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0 and percentile(values, 0.99) == 99.0
    s = latency_summary([3.0, 1.0, 2.0])
    assert s["p50"] == 2.0 and s["max"] == 3.0 and s["count"] == 3
    assert latency_summary([])["count"] == 0
