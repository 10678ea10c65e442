"""A small in-memory world of hosts, tasks and peers for scheduler policy tests."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from damselfly.config import SchedulingConfig
from damselfly.domain import DownloadSpec, HostInfo, HostType, PieceInfo
from damselfly.scheduler.evaluator import DefaultEvaluator
from damselfly.scheduler.resources import Host, Peer, PeerState, Resources, Task
from damselfly.scheduler.scheduling import Decision, apply_decision, schedule

TASK_ID = "t" * 64


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class World:
    # The candidate/evaluator rules under test here are the mesh's; chain tests say so.
    cfg: SchedulingConfig = field(default_factory=lambda: SchedulingConfig(topology="mesh"))
    clock: FakeClock = field(default_factory=FakeClock)
    res: Resources = field(default_factory=Resources)
    evaluator: DefaultEvaluator = field(default_factory=DefaultEvaluator)
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    seed_trigger: bool = True

    def host(self, name: str, *, seed: bool = False, **info: object) -> Host:
        hi = HostInfo(
            id=f"10.0.0.1-{name}",
            hostname=name,
            ip="10.0.0.1",
            port=4000,
            download_port=4005,
            type=HostType.SUPER_SEED if seed else HostType.NORMAL,
            **info,  # type: ignore[arg-type]
        )
        return self.res.upsert_host(hi, self.clock())

    def task(self, task_id: str = TASK_ID) -> Task:
        return self.res.get_or_create_task(task_id, DownloadSpec(url="http://o/f"), self.clock())

    def peer(
        self,
        name: str,
        host: Host | str,
        *,
        state: PeerState = PeerState.PENDING,
        task_id: str = TASK_ID,
        pieces: int = 0,
        **spec: object,
    ) -> Peer:
        if isinstance(host, str):
            host = self.res.hosts.get(f"10.0.0.1-{host}") or self.host(host)
        task = self.task(task_id)
        p = self.res.create_peer(name, task, host, DownloadSpec(url="http://o/f", **spec), self.clock())  # type: ignore[arg-type]
        for n in range(pieces):
            self.res.record_piece(p, PieceInfo(number=n, offset=n * 10, length=10), self.clock())
        if state is not PeerState.PENDING:
            self.res.set_state(p, state, self.clock())
        return p

    def decide(self, peer: Peer, *, starting: bool = False, grace_until: float | None = None) -> Decision:
        d = schedule(
            peer,
            self.res,
            self.cfg,
            self.evaluator,
            self.clock(),
            seed_trigger=self.seed_trigger,
            rng=self.rng,
            starting=starting,
            grace_until=grace_until,
        )
        apply_decision(peer, d, self.res, self.clock())
        return d
