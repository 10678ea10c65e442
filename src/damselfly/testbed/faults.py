"""Faults a swarm run injects mid-distribution: a scheduler or a seed killed (SIGKILL).

``scheduler-restart``: the one scheduler is killed when the peers' mean progress
reaches the scenario's ``fault_at`` and started again at once on the same
address (a crash and its supervisor's restart). ``scheduler-failover``: of
several schedulers, the one the daemons' hash ring gives the task to is killed
for good (killing another would test nothing). ``seed-loss``: the seed daemon
serving the task (the one that has downloaded most: the scheduler triggers one
seed per task) is killed for good; the peers carry on from each other and one of
them fetches from the origin what nobody holds. The run then reports completion
over T_min, origin bytes over F and failed downloads as for any scenario, with
what was done and when in ``fault``.

Owner: the :class:`~.swarm.SwarmRun`, which calls :meth:`SchedulerFault.poll`
from its distribution loop (the kill is immediate; a restart is spawned, not
waited for, so the loop's timing stays exact).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..daemon.scheduler_ring import HashRing
from ..domain import DownloadSpec
from ..errors import InvalidArgument
from ..ids import download_task_id

if TYPE_CHECKING:
    from .scenarios import Scenario
    from .swarm import SwarmRun

FAULTS = ("scheduler-restart", "scheduler-failover", "seed-loss")


def victim(addrs: list[str], task_id: str) -> str:
    """The scheduler the daemons send ``task_id`` to while all are up."""
    addr = HashRing(addrs).lookup(task_id)
    if addr is None:
        raise InvalidArgument("no scheduler to kill")
    return addr


@dataclass
class SchedulerFault:
    """One fault (a scheduler's or a seed's), due at mean progress ``at`` (0..1)."""

    kind: str
    at: float
    task_id: str
    record: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in FAULTS:
            raise InvalidArgument(f"unknown fault {self.kind!r}; one of {', '.join(FAULTS)}")
        if not 0 < self.at < 1:
            raise InvalidArgument("a fault's progress point must be between 0 and 1")

    @property
    def done(self) -> bool:
        return bool(self.record)

    def poll(self, run: SwarmRun, t: float, progress: float) -> None:
        """Inject the fault if it is due (``progress``: the peers' mean, 0..1, at ``t`` s)."""
        if self.done or progress < self.at:
            return
        if self.kind == "seed-loss":
            self._kill_seed(run, t, progress)
            return
        names = run.scheduler_names
        by_addr = {run.scheduler_addr(n): n for n in names}
        target = victim(list(by_addr), self.task_id)
        name = by_addr[target]
        child = next(c for c in run.children if c.name == name)
        os.kill(child.pid, signal.SIGKILL)
        child.popen.wait(timeout=10)
        run.children.remove(child)
        restarted = self.kind == "scheduler-restart"
        if restarted:
            run.children.append(run.spawn_scheduler(name))
        self.record = {
            "kind": self.kind,
            "at_s": round(t, 3),
            "progress": round(progress, 4),
            "role": "scheduler",
            "killed": target,
            "restarted": restarted,
        }
        run.say(
            f"swarm: [{t:6.1f}s] fault: scheduler {target} SIGKILLed at {progress:.0%}"
            + ("; restarted on the same address" if restarted else "; gone for good")
        )

    def _kill_seed(self, run: SwarmRun, t: float, progress: float) -> None:
        seeds = [spec.name for role, spec in run.downloaders if role == "seed"]
        downloaded = {name: run.downloaded_by(name) for name in seeds}
        if not downloaded:
            raise InvalidArgument("seed-loss needs a seed")
        name = max(downloaded, key=lambda n: (downloaded[n], n))
        child = next(c for c in run.children if c.name == name)
        os.kill(child.pid, signal.SIGKILL)
        child.popen.wait(timeout=10)
        run.children.remove(child)
        self.record = {
            "kind": self.kind,
            "at_s": round(t, 3),
            "progress": round(progress, 4),
            "role": "seed",
            "killed": name,
            "seed_bytes": downloaded[name],
            "restarted": False,
        }
        run.say(
            f"swarm: [{t:6.1f}s] fault: seed {name} SIGKILLed at {progress:.0%} "
            f"(it held {downloaded[name] / (run.scenario.file_size or 1):.0%}); gone for good"
        )


def fault_for(scenario: Scenario, url: str, piece_length: int | None) -> SchedulerFault | None:
    """The scenario's fault for the task the dfgets download (``url`` at ``piece_length``)."""
    if not scenario.fault:
        return None
    task_id = download_task_id(DownloadSpec(url=url, piece_length=piece_length))
    return SchedulerFault(scenario.fault, scenario.fault_at, task_id)
