"""Fault scenarios of the swarm testbed: which scheduler dies, when, and how the run says so."""

from __future__ import annotations

import pytest

from damselfly.daemon.scheduler_ring import HashRing
from damselfly.domain import DownloadSpec
from damselfly.errors import InvalidArgument
from damselfly.ids import download_task_id
from damselfly.testbed.faults import SchedulerFault, fault_for, victim
from damselfly.testbed.report import HostResult, SwarmResult, human_summary
from damselfly.testbed.scenarios import Knobs, build_scenario
from damselfly.units import MiB

ADDRS = ["10.213.0.2:8002", "10.213.0.3:8002", "10.213.0.4:8002"]


def test_the_presets() -> None:
    restart = build_scenario("scheduler-restart", Knobs())
    failover = build_scenario("scheduler-failover", Knobs(size=64 * MiB))
    assert (restart.fault, restart.schedulers, restart.fault_at) == ("scheduler-restart", 1, 0.3)
    assert (failover.fault, failover.schedulers, failover.file_size) == ("scheduler-failover", 3, 64 * MiB)
    assert len(failover.peers) == 8 and failover.to_json()["schedulers"] == 3
    assert build_scenario("flash-crowd", Knobs()).fault == ""
    # The same crowd with three schedulers and no fault: the failover's baseline.
    assert build_scenario("flash-crowd", Knobs(schedulers=3)).schedulers == 3
    assert build_scenario("scheduler-failover", Knobs(schedulers=2)).schedulers == 2
    with pytest.raises(InvalidArgument, match="at least two"):
        build_scenario("scheduler-failover", Knobs(schedulers=1))


def test_the_victim_is_the_schedulers_the_daemons_use_for_the_task() -> None:
    # Killing another scheduler would not touch the download: it must be the ring's choice.
    for i in range(20):
        task = download_task_id(DownloadSpec(url=f"http://10.213.0.1:8080/blob{i}.bin"))
        assert victim(ADDRS, task) == HashRing(reversed(ADDRS)).lookup(task)
    tasks = [download_task_id(DownloadSpec(url=f"http://o/{i}")) for i in range(40)]
    assert len({victim(ADDRS, t) for t in tasks}) == 3


def test_a_fault_is_for_the_dfgets_task_and_checked() -> None:
    sc = build_scenario("scheduler-failover", Knobs())
    url = "http://10.213.0.1:8080/blob.bin"
    fault = fault_for(sc, url, 8 * MiB)
    assert fault is not None and fault.task_id == download_task_id(
        DownloadSpec(url=url, piece_length=8 * MiB)
    )
    assert fault_for(build_scenario("flash-crowd", Knobs()), url, None) is None
    with pytest.raises(InvalidArgument):
        SchedulerFault("scheduler-meltdown", 0.3, "t")
    with pytest.raises(InvalidArgument):
        SchedulerFault("scheduler-restart", 1.5, "t")


def test_the_report_says_what_the_fault_did_and_counts_failed_downloads() -> None:
    sc = build_scenario("scheduler-restart", Knobs(peers=2, size=32 * MiB))
    r = SwarmResult(scenario=sc, prefix="dfswabcdef", workdir="/tmp/x")
    r.hosts = [
        HostResult("peer0", "peer", "10.213.0.13", 1, 1, exit_code=0, completion_s=3.0, digest_ok=True),
        HostResult("peer1", "peer", "10.213.0.14", 1, 1, exit_code=1, completion_s=4.0, digest_ok=False),
    ]
    data = r.to_json()
    assert data["failed_downloads"] == 1
    assert "never injected" in human_summary(data)
    r.fault = {
        "kind": "scheduler-restart",
        "at_s": 2.5,
        "progress": 0.31,
        "killed": ADDRS[0],
        "restarted": True,
    }
    text = human_summary(r.to_json())
    assert f"scheduler {ADDRS[0]} killed, restarted; failed downloads: 1" in text


def test_the_seed_loss_preset_needs_a_seed_and_reports_the_seed_it_killed() -> None:
    sc = build_scenario("seed-loss", Knobs(seeds=2, size=64 * MiB))
    assert (sc.fault, len(sc.seeds), sc.fault_at, len(sc.peers)) == ("seed-loss", 2, 0.3, 8)
    with pytest.raises(InvalidArgument, match="at least one seed"):
        build_scenario("seed-loss", Knobs(seeds=0))
    r = SwarmResult(scenario=sc, prefix="dfswabcdef", workdir="/tmp/x", origin_bytes=2 * 64 * MiB)
    r.origin_bytes_sent = 66 * MiB
    r.fault = {
        "kind": "seed-loss",
        "at_s": 3.0,
        "progress": 0.3,
        "role": "seed",
        "killed": "seed1",
        "restarted": False,
    }
    data = r.to_json()
    assert data["origin"]["sent_over_f"] == round(66 / 64, 4) and data["origin"]["bytes_over_f"] == 2.0
    text = human_summary(data)
    assert "seed seed1 killed for good" in text
    assert "handed to the network 66.0 MiB = 1.031 F" in text


class _Child:
    def __init__(self, name: str, pid: int) -> None:
        self.name, self.pid = name, pid
        self.popen = self

    def wait(self, timeout: float) -> int:
        return -9


def test_the_seed_killed_is_the_one_serving_the_task() -> None:
    # Two seeds, the scheduler triggered one: the other holds nothing, killing it would test nothing.
    import subprocess
    import sys

    sc = build_scenario("seed-loss", Knobs(seeds=2))
    sleepers = {name: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
                for name in ("seed0", "seed1")}  # fmt: skip
    try:
        said: list[str] = []

        class Run:
            scenario = sc
            downloaders = [("seed", s) for s in sc.seeds] + [("peer", p) for p in sc.peers]
            children = [_Child(n, p.pid) for n, p in sleepers.items()]

            def downloaded_by(self, name: str) -> int:
                return {"seed0": 0, "seed1": 40 * MiB}.get(name, 0)

            def say(self, msg: str) -> None:
                said.append(msg)

        run = Run()
        fault = fault_for(sc, "http://10.213.0.1:8080/blob.bin", None)
        assert fault is not None
        fault.poll(run, 1.0, 0.1)  # type: ignore[arg-type]
        assert not fault.done and sleepers["seed1"].poll() is None  # not due yet
        fault.poll(run, 2.0, 0.31)  # type: ignore[arg-type]
        assert fault.record["killed"] == "seed1" and fault.record["role"] == "seed"
        assert sleepers["seed1"].wait(10) == -9 and sleepers["seed0"].poll() is None
        assert [c.name for c in run.children] == ["seed0"] and "seed seed1 SIGKILLed" in said[0]
    finally:
        for p in sleepers.values():
            p.kill()
            p.wait()
