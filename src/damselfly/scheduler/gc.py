"""Garbage collection of the scheduler's resources.

:func:`plan` picks what to drop at time ``now`` (pure, testable with a fake
clock); :func:`collect` applies a plan to the resources. The service runs both
every ``gc.interval`` seconds.

- a host that has not announced for ``host_ttl`` goes, with its peers;
- a peer not updated for ``peer_ttl`` goes; a Pending peer (never started) for
  ``pending_peer_ttl``; a Failed peer at once (it is never a parent), unless
  ``keep`` says its stream is still open;
- a task with no peers left, or not updated for ``task_ttl``, goes.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

from ..config import GCConfig
from .resources import PeerState, Resources


@dataclass(slots=True)
class GCPlan:
    host_ids: list[str] = field(default_factory=list)
    peer_ids: list[str] = field(default_factory=list)
    task_ids: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.host_ids or self.peer_ids or self.task_ids)


def plan(res: Resources, cfg: GCConfig, now: float, keep: Container[str] = ()) -> GCPlan:
    """What is stale at ``now``; peers whose ID is in ``keep`` (open streams) stay unless their host goes."""
    out = GCPlan()
    dead_hosts = {h.id for h in res.hosts.values() if now - h.last_announce > cfg.host_ttl}
    out.host_ids = sorted(dead_hosts)
    doomed: set[str] = set()
    for host in res.hosts.values():
        if host.id in dead_hosts:
            doomed.update(host.peers)
            continue
        for peer in host.peers.values():
            if peer.id in keep:
                continue
            idle = now - peer.updated_at
            if (
                idle > cfg.peer_ttl
                or (peer.state is PeerState.PENDING and idle > cfg.pending_peer_ttl)
                or peer.state is PeerState.FAILED
            ):
                out.peer_ids.append(peer.id)
                doomed.add(peer.id)
    for task in res.tasks.values():
        alive = [pid for pid in task.peers if pid not in doomed]
        if not alive or now - task.updated_at > cfg.task_ttl:
            out.task_ids.append(task.id)
    out.peer_ids.sort()
    out.task_ids.sort()
    return out


def collect(res: Resources, gc_plan: GCPlan) -> None:
    for host_id in gc_plan.host_ids:
        res.delete_host(host_id)
    for peer_id in gc_plan.peer_ids:
        res.delete_peer(peer_id)
    for task_id in gc_plan.task_ids:
        res.delete_task(task_id)
