"""Helpers for driving a real scheduler over gRPC on loopback, acting as daemons."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from damselfly.api import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from damselfly.config import SchedulerConfig, load_scheduler_config
from damselfly.scheduler.app import serve
from helpers.wait import until

URL = "http://origin.test/file.bin"


@dataclass
class RunningScheduler:
    address: str
    metrics_port: int
    stop: asyncio.Event
    task: asyncio.Task[None]
    channel: grpc.aio.Channel
    stub: Any


@contextlib.asynccontextmanager
async def running_scheduler(tmp_path: Path, **overrides: Any) -> AsyncIterator[RunningScheduler]:
    """``serve()`` in this event loop on free loopback ports; stopped and awaited on exit."""
    base: dict[str, Any] = {
        "server": {"ip": "127.0.0.1", "port": 0},
        "metrics": {"ip": "127.0.0.1", "port": 0},
        # No restart grace (scheduler.startupGrace): these tests drive a fresh scheduler at once;
        # the grace has its own tests.
        "scheduler": {"startupGrace": 0},
    }
    config: SchedulerConfig = load_scheduler_config(overrides=_merge(base, overrides))
    ready = tmp_path / f"scheduler-{id(config)}.json"
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(serve(config, ready_file=ready, stop=stop))
    await until(lambda: ready.exists() or task.done(), "the scheduler wrote its ready file")
    if task.done():
        task.result()
    info = json.loads(ready.read_text())
    address = f"127.0.0.1:{info['grpc_port']}"
    channel = grpc.aio.insecure_channel(address)
    try:
        yield RunningScheduler(
            address, info["metrics_port"], stop, task, channel, scheduler_pb2_grpc.SchedulerStub(channel)
        )
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, 10)
        finally:
            await channel.close()


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def host_pb(name: str, *, port: int = 4000, seed: bool = False, ip: str = "127.0.0.1") -> Any:
    h = common_pb2.Host(
        id=f"{ip}-{name}" + ("-seed" if seed else ""),
        type=1 if seed else 0,
        hostname=name,
        ip=ip,
        port=port,
        download_port=4005,
        os="linux",
        platform="debian",
        platform_family="debian",
        platform_version="12",
    )
    return h


async def announce_host(stub: Any, host: Any) -> None:
    await stub.AnnounceHost(scheduler_pb2.AnnounceHostRequest(host=host))


@dataclass
class FakePeer:
    """One AnnouncePeer stream, as a daemon would drive it."""

    stub: Any
    host_id: str
    task_id: str
    peer_id: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    call: Any = None

    def open(self) -> None:
        self.call = self.stub.AnnouncePeer(self._requests())

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            yield item

    def send(self, **kwargs: Any) -> None:
        self.queue.put_nowait(
            scheduler_pb2.AnnouncePeerRequest(
                host_id=self.host_id, task_id=self.task_id, peer_id=self.peer_id, **kwargs
            )
        )

    def register(self, url: str = URL, **download: Any) -> None:
        if self.call is None:
            self.open()
        self.send(
            register_peer_request=scheduler_pb2.RegisterPeerRequest(
                download=common_pb2.Download(url=url, **download)
            )
        )

    async def answer(self, timeout: float = 10) -> Any:
        return await asyncio.wait_for(self.call.read(), timeout)

    def piece(self, number: int, length: int, *, parent_id: str = "", back_to_source: bool = False) -> None:
        piece = common_pb2.Piece(number=number, offset=number * length, length=length, digest="crc32:0")
        if back_to_source:
            self.send(
                download_piece_back_to_source_finished_request=scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(
                    piece=piece
                )
            )
        else:
            piece.parent_id = parent_id
            piece.traffic_type = common_pb2.REMOTE_PEER
            piece.cost.FromMilliseconds(5)
            self.send(download_piece_finished_request=scheduler_pb2.DownloadPieceFinishedRequest(piece=piece))

    def close(self) -> None:
        self.queue.put_nowait(None)

    async def done(self) -> None:
        """Close our side and wait for the scheduler to end the stream."""
        self.close()
        await asyncio.wait_for(self.call.code(), 10)
