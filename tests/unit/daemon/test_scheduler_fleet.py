"""Several schedulers (daemon/scheduler_fleet.py), against real gRPC servers on loopback: health
checks, the ring's choice among live ones, failover, a scheduler coming back, names resolving."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from damselfly.api import scheduler_pb2_grpc
from damselfly.config import load_daemon_config, load_scheduler_config
from damselfly.daemon.scheduler_client import SchedulerLink
from damselfly.daemon.scheduler_fleet import SchedulerFleet, split_addr
from damselfly.daemon.scheduler_ring import HashRing
from damselfly.domain import HostInfo
from damselfly.errors import ConfigError, SchedulerError

HOST = HostInfo(id="127.0.0.1-h", hostname="h", ip="127.0.0.1", port=4000, download_port=4005)
TASKS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(60)]


class Announced(scheduler_pb2_grpc.SchedulerServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.hosts = 0

    async def AnnounceHost(self, request, context):  # type: ignore[no-untyped-def]
        self.hosts += 1
        return empty_pb2.Empty()


@dataclass
class Scheduler:
    port: int
    server: grpc.aio.Server
    scheduler: Announced

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self.server.stop(grace=None)


async def start_scheduler(port: int = 0) -> Scheduler:
    srv = grpc.aio.server()
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, srv)
    scheduler = Announced()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(scheduler, srv)
    bound = srv.add_insecure_port(f"127.0.0.1:{port}")
    await srv.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    return Scheduler(bound, srv, scheduler)


@pytest.fixture
async def two() -> AsyncIterator[list[Scheduler]]:
    schedulers = [await start_scheduler(), await start_scheduler()]
    try:
        yield schedulers
    finally:
        for s in schedulers:
            await s.stop()


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def fleet_of(addrs: list[str], health_interval: float = 0.1) -> tuple[SchedulerFleet, list[tuple[str, bool]]]:
    fleet = SchedulerFleet(addrs, health_interval=health_interval, announce_interval=3600)
    calls: list[tuple[str, bool]] = []

    async def sync(link: SchedulerLink, announce: bool) -> None:
        if announce:
            await link.announce_host(HOST, 3600)
        calls.append((link.addr, announce))

    fleet.sync = sync
    return fleet, calls


async def test_tasks_go_to_their_scheduler_on_the_ring_and_move_when_it_dies(two: list[Scheduler]) -> None:
    a, b = two
    fleet, calls = fleet_of([a.addr, b.addr])
    await fleet.start()
    try:
        await until(lambda: len(fleet.ready_links()) == 2)
        assert a.scheduler.hosts == 1 and b.scheduler.hosts == 1  # the host goes to every scheduler
        ring = HashRing([a.addr, b.addr])
        for task in TASKS:
            assert (await fleet.link_for(task, 1)).addr == ring.lookup(task)
        on_a = [t for t in TASKS if ring.lookup(t) == a.addr]
        assert on_a and len(on_a) < len(TASKS)

        await a.stop()
        await until(lambda: not fleet.links[a.addr].up)
        for task in on_a:
            assert (await fleet.link_for(task, 1)).addr == b.addr
        # b was asked to take what it gained (held tasks registered there) after a went down.
        await until(lambda: calls[-1] == (b.addr, False))

        # a comes back on its port: it announces again and takes its share again.
        back = await start_scheduler(a.port)
        try:
            await until(lambda: fleet.links[a.addr].ready)
            assert back.scheduler.hosts == 1
            assert (a.addr, True) in calls[calls.index((b.addr, False)) :]
            for task in on_a:
                assert (await fleet.link_for(task, 1)).addr == a.addr
        finally:
            await back.stop()
    finally:
        await fleet.close()


async def test_a_broken_stream_makes_the_host_announce_again(two: list[Scheduler]) -> None:
    a, _ = two
    fleet, _calls = fleet_of([a.addr])
    await fleet.start()
    try:
        await until(lambda: a.scheduler.hosts == 1 and fleet.links[a.addr].ready)
        link = fleet.links[a.addr]
        # What a PeerStream does when its call breaks with UNAVAILABLE (a restarted scheduler).
        link.peer_stream("h", "t", "p")._mark_lost(grpc.StatusCode.UNAVAILABLE)
        assert not link.ready
        await until(lambda: a.scheduler.hosts == 2 and link.ready)
    finally:
        await fleet.close()


async def test_with_no_scheduler_up_a_download_waits_then_hears_why() -> None:
    down = await start_scheduler()
    addr = down.addr
    await down.stop()
    fleet, _ = fleet_of([addr])
    await fleet.start()
    try:
        with pytest.raises(SchedulerError, match=r"no scheduler ready within 0\.3s"):
            await fleet.link_for(TASKS[0], 0.3)
        # ... and one that comes up within the wait is taken.
        waiting = asyncio.ensure_future(fleet.link_for(TASKS[0], 10))
        up = await start_scheduler(int(addr.rsplit(":", 1)[1]))
        try:
            assert (await waiting).addr == addr
        finally:
            await up.stop()
    finally:
        await fleet.close()


async def test_close_ends_a_keeper_kicked_as_it_is_cancelled() -> None:
    """close() cancels each keeper once: one whose kick is set at that moment must still end
    (asyncio.wait_for on Python 3.11 dropped that cancel, and close waited forever)."""
    fleet = SchedulerFleet(["127.0.0.1:1"], health_interval=60)
    (link,) = fleet.links.values()
    checked = asyncio.Event()

    async def check(*, timeout: float = 2.0) -> bool:
        checked.set()
        return False

    link.check = check  # type: ignore[method-assign]
    await fleet.start()
    await checked.wait()  # the keeper now waits for its kick (or the health interval)
    keeper = asyncio.all_tasks() - {asyncio.current_task()}
    fleet.kick(link.addr)  # and, before the keeper runs on, close
    async with asyncio.timeout(5):
        await fleet.close()
    assert keeper and all(task.done() for task in keeper)


async def test_a_name_resolves_to_its_addresses(two: list[Scheduler]) -> None:
    a, _ = two
    fleet, _ = fleet_of([f"localhost:{a.port}"])
    await fleet.start()
    try:
        assert a.addr in fleet.links
        await until(lambda: fleet.links[a.addr].ready)
    finally:
        await fleet.close()


def test_addresses_are_checked() -> None:
    assert split_addr("[::1]:8002") == ("::1", 8002)
    with pytest.raises(ConfigError, match="not host:port"):
        split_addr("scheduler")
    with pytest.raises(SchedulerError):
        SchedulerFleet([])


async def test_the_keys_in_a_config_file(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    f.write_text(
        "scheduler:\n  addrs: ['10.0.0.1:8002', '10.0.0.2:8002']\n  healthInterval: 0.5\n"
        "  resolveInterval: 10\n  waitForScheduler: 3\n"
    )
    sc = load_daemon_config(f, {"storage": {"dir": str(tmp_path)}}).scheduler
    assert (sc.health_interval, sc.resolve_interval, sc.wait_for_scheduler) == (0.5, 10, 3)
    fleet = SchedulerFleet(sc.addrs, health_interval=sc.health_interval)
    try:
        assert fleet.ring.nodes == {"10.0.0.1:8002", "10.0.0.2:8002"}  # every one, not the first only
    finally:
        await fleet.close()
    s = tmp_path / "s.yaml"
    s.write_text("scheduler:\n  startupGrace: 0.5\n")
    assert load_scheduler_config(s).scheduler.startup_grace == 0.5


async def test_a_scheduler_restarted_between_health_checks_is_announced_to_again() -> None:
    first = await start_scheduler()
    fleet, _ = fleet_of([first.addr], health_interval=60)
    await fleet.start()
    try:
        await until(lambda: first.scheduler.hosts == 1 and fleet.links[first.addr].ready)
        await first.stop()
        # Back on its port long before the next health check (a minute away): the lost
        # connection alone tells the daemon this scheduler may have forgotten it.
        again = await start_scheduler(first.port)
        try:
            await until(lambda: again.scheduler.hosts == 1, timeout=20)
            await until(lambda: fleet.links[first.addr].ready)
        finally:
            await again.stop()
    finally:
        await fleet.close()
