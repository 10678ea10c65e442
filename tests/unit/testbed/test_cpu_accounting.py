"""CPU seconds as the benchmarks count them: a process's own time from /proc, and the split by role."""

from __future__ import annotations

import subprocess
import sys

from damselfly.testbed.machine import process_cpu_s
from damselfly.testbed.report import HostResult, cpu_breakdown, per_gib
from damselfly.units import GiB, MiB

BURN = """
import resource, sys, time
def used():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime
while used() < 0.4:
    pass
print("burnt", flush=True)
time.sleep(60)
"""


def test_a_process_that_burns_cpu_is_counted() -> None:
    """A child that spends 0.4 CPU-s (by its own getrusage) then sleeps: /proc says 0.4 or a little
    more (its start-up; ticks of 10 ms), and the count stays put while it sleeps."""
    with subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "burnt"
            first = process_cpu_s(child.pid)
            assert first is not None and 0.38 <= first < 1.5  # /proc counts in clock ticks (10 ms)
            again = process_cpu_s(child.pid)
            assert again is not None and again - first < 0.05
        finally:
            child.kill()
            child.wait()
    assert process_cpu_s(child.pid) is None  # gone: not counted as zero by mistake


def test_cpu_breakdown_by_role_and_per_gib() -> None:
    hosts = [
        HostResult("seed0", "seed", "10.0.0.3", 1, 1, uploaded_bytes=GiB, downloaded={"back_to_source": GiB}),
        HostResult(
            "peer0", "peer", "10.0.0.4", 1, 1, uploaded_bytes=GiB // 2, downloaded={"remote_peer": GiB}
        ),
        HostResult("peer1", "peer", "10.0.0.5", 1, 1, uploaded_bytes=0, downloaded={"remote_peer": GiB}),
    ]
    cpu = {"origin": 0.5, "scheduler": 0.25, "seed0": 2.0, "peer0": 3.0, "peer1": 1.0, "dfget": 1.5,
           "supervisor": 9.0}  # fmt: skip
    out = cpu_breakdown(hosts, cpu)
    assert out["by_role"] == {"dfget": 1.5, "origin": 0.5, "peers": 4.0, "scheduler": 0.25, "seeds": 2.0,
                              "supervisor": 9.0}  # fmt: skip
    assert out["total_s"] == 8.25  # the benchmark's own supervisor is not the testbed's
    p0 = out["daemons"]["peer0"]
    assert (p0["cpu_s_per_gib_received"], p0["cpu_s_per_gib_sent"], p0["cpu_s_per_gib_moved"]) == (
        3.0,
        6.0,
        2.0,
    )
    assert out["daemons"]["peer1"]["cpu_s_per_gib_sent"] is None  # sent nothing: no ratio
    assert out["median_cpu_s_per_gib_moved"] == 1.0  # seed0 1.0, peer0 2.0, peer1 1.0
    assert per_gib(1.0, 512 * MiB) == 2.0
