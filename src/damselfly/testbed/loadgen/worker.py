"""One load-generator process: ``python -m damselfly.testbed.loadgen.worker``.

Role ``peers`` (one process per ``--index``): announce this process's share of
the simulated hosts, write the ready file, wait for the coordinator's go file
(the common start time), then open one AnnouncePeer stream per peer at its
arrival time and drive it (:func:`.peers.drive_peer`). Every stream stays open
until the common release time (last arrival + hold), so all peers are open at
once, then finishes. Role ``seeds``: run a tiny ``DfdaemonUpload`` server per
simulated seed host (type 1) and announce them; ``DownloadTask`` (the
scheduler's seed trigger) starts a seed peer that goes back to source and
reports pieces, like a seed daemon would.

Results (latencies, answers, errors, this process's CPU seconds) go to
``--out`` as JSON. Owner of every task: :func:`_run`, which cancels what is
left before it returns.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from ...api import common_pb2, dfdaemon_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from ...ids import task_id
from ...process import write_ready_file
from ...runtime.children import read_ready_file
from ...scheduler.runtime import watch_loop_lag
from .peers import PeerJob, Tally, drive_peer
from .plan import (
    LoadPlan,
    host_id,
    host_ip,
    idc_of,
    location_of,
    peer_id,
    seed_host_id,
    seed_peer_id,
)

PB = Any
ANNOUNCE_CONCURRENCY = 64
GBIT = 125_000_000  # bytes/s


def _channel(address: str, n: int) -> grpc.aio.Channel:
    # A local subchannel pool per channel gives each its own TCP connection,
    # so thousands of streams do not share one HTTP/2 connection's flow control.
    return grpc.aio.insecure_channel(
        address, options=[("grpc.use_local_subchannel_pool", 1), ("loadgen.channel", n)]
    )


def host_pb(index: int) -> PB:
    h = common_pb2.Host(
        id=host_id(index),
        type=0,
        hostname=f"loadgen-{index}",
        ip=host_ip(index),
        port=4000,
        download_port=4005,
    )
    h.network.idc = idc_of(index)
    h.network.location = location_of(index)
    h.network.max_tx_bandwidth = GBIT
    h.network.tx_bandwidth = (index * 7919) % GBIT
    return h


async def announce_hosts(stub: Any, hosts: list[PB]) -> None:
    limit = asyncio.Semaphore(ANNOUNCE_CONCURRENCY)

    async def one(h: PB) -> None:
        async with limit:
            await stub.AnnounceHost(scheduler_pb2.AnnounceHostRequest(host=h), timeout=30)

    async with asyncio.TaskGroup() as tg:
        for h in hosts:
            tg.create_task(one(h))


async def wait_go(go_file: Path) -> float:
    """The common start time (wall clock) the coordinator writes once every worker is ready."""
    while True:
        data = read_ready_file(go_file)
        if data is not None:
            return float(data["start_at"])
        await asyncio.sleep(0.01)


class _FakeSeed(dfdaemon_pb2_grpc.DfdaemonUploadServicer):  # type: ignore[misc]
    """A seed daemon reduced to its scheduler-facing part: DownloadTask starts a seed peer."""

    def __init__(self, index: int, plan: LoadPlan, stub: Any, tally: Tally, release: asyncio.Event) -> None:
        self.index = index
        self.plan = plan
        self.stub = stub
        self.tally = tally
        self.release = release
        self.tasks: set[asyncio.Task[None]] = set()
        self.triggered = 0

    async def DownloadTask(self, request: PB, context: Any) -> AsyncIterator[PB]:
        self.triggered += 1
        tid = task_id(request.download.url)
        job = PeerJob(
            host_id=seed_host_id(self.index),
            task_id=tid,
            peer_id=seed_peer_id(self.index, tid),
            url=request.download.url,
            task_index=0,
            pieces=self.plan.pieces,
            piece_length=self.plan.piece_length,
        )
        t = asyncio.get_running_loop().create_task(
            drive_peer(self.stub, job, self.tally, self.release, self.plan.answer_timeout_s)
        )
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return
        yield  # an empty response stream: the seed accepted the task


async def _run(plan: LoadPlan, role: str, index: int, address: str, ready: Path, go: Path) -> dict[str, Any]:
    tally = Tally()
    release = asyncio.Event()
    channels = [_channel(address, n) for n in range(max(1, plan.channels_per_worker))]
    stubs = [scheduler_pb2_grpc.SchedulerStub(c) for c in channels]
    servers: list[grpc.aio.Server] = []
    seeds: list[_FakeSeed] = []
    peer_tasks: list[asyncio.Task[None]] = []
    lag_max = 0.0
    loop_lags: list[float] = []  # this process's event-loop lag: is the client keeping up?
    lag_probe: asyncio.Task[None] | None = None
    try:
        if role == "seeds":
            hosts = []
            for s in range(plan.seeds):
                fake = _FakeSeed(s, plan, stubs[s % len(stubs)], tally, release)
                server = grpc.aio.server()
                dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(fake, server)
                port = server.add_insecure_port("127.0.0.1:0")
                await server.start()
                servers.append(server)
                seeds.append(fake)
                hosts.append(
                    common_pb2.Host(
                        id=seed_host_id(s),
                        type=1,
                        hostname=f"loadgen-seed-{s}",
                        ip="127.0.0.1",
                        port=port,
                        download_port=4005,
                    )
                )
            await announce_hosts(stubs[0], hosts)
        else:
            await announce_hosts(stubs[0], [host_pb(h) for h in plan.hosts_of(index)])
        write_ready_file(ready, {"pid": os.getpid()})
        start_at = await wait_go(go)
        cpu0 = _cpu_s()
        loop = asyncio.get_running_loop()
        lag_probe = loop.create_task(watch_loop_lag(loop_lags.append))
        base = loop.time() + (start_at - time.time())
        release_at = base + plan.arrival_window_s + plan.hold_s
        loop.call_at(release_at, release.set)
        if role == "peers":
            for n, i in enumerate(plan.peers_of(index)):
                due = base + plan.arrival_s(i)
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    lag_max = max(lag_max, -delay)
                t = plan.task_index(i)
                url = plan.url(t)
                job = PeerJob(
                    host_id=host_id(plan.host_index(i)),
                    task_id=task_id(url),
                    peer_id=peer_id(plan, i),
                    url=url,
                    task_index=t,
                    pieces=plan.pieces,
                    piece_length=plan.piece_length,
                )
                stub = stubs[n % len(stubs)]
                peer_tasks.append(
                    loop.create_task(drive_peer(stub, job, tally, release, plan.answer_timeout_s))
                )
            await asyncio.gather(*peer_tasks)
        else:
            await release.wait()
            while any(s.tasks for s in seeds):
                await asyncio.gather(*(t for s in seeds for t in list(s.tasks)))
        cpu_s = _cpu_s() - cpu0
        wall_s = loop.time() - base
    finally:
        if lag_probe is not None:
            lag_probe.cancel()
        for task in peer_tasks:
            task.cancel()
        await asyncio.gather(*peer_tasks, return_exceptions=True)
        for seed in seeds:
            for task in list(seed.tasks):
                task.cancel()
        for server in servers:
            await server.stop(1)
        for c in channels:
            await c.close()
    out = tally.to_json()
    out.update(
        role=role,
        index=index,
        pid=os.getpid(),
        cpu_s=round(cpu_s, 3),
        wall_s=round(wall_s, 3),
        pacer_lag_max_ms=round(lag_max * 1000.0, 2),
        seed_triggers=sum(s.triggered for s in seeds),
        loop_lag_ms=[round(x, 2) for x in loop_lags],
    )
    return out


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="one damselfly scheduler load-generator process")
    ap.add_argument("--plan", type=Path, required=True, help="LoadPlan as JSON")
    ap.add_argument("--role", choices=["peers", "seeds"], default="peers")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--address", required=True, help="scheduler host:port")
    ap.add_argument("--ready-file", type=Path, required=True)
    ap.add_argument("--go-file", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    plan = LoadPlan.from_json(json.loads(args.plan.read_text()))
    result = asyncio.run(_run(plan, args.role, args.index, args.address, args.ready_file, args.go_file))
    with contextlib.suppress(FileNotFoundError):
        args.out.unlink()
    write_ready_file(args.out, result)


if __name__ == "__main__":
    main()
