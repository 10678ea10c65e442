"""A whole swarm in one process: a scheduler, an origin and N daemons on loopback.

Real gRPC, real piece sockets, real files; only the process boundary is
missing, so runs are fast and failures are easy to read. Scenario tests
build a :class:`Swarm`, start daemons, download through their local API and
assert on bytes, origin counters and what each daemon holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from damselfly.api import dfdaemon_pb2, dfdaemon_pb2_grpc
from damselfly.api.convert import download_to_pb
from damselfly.config import DaemonConfig, load_daemon_config, load_scheduler_config
from damselfly.daemon.app import Daemon
from damselfly.domain import DownloadSpec
from damselfly.scheduler.app import serve as serve_scheduler
from damselfly.testbed.origin import Origin
from helpers.store import rot
from helpers.wait import until


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Result:
    ok: bool
    code: grpc.StatusCode | None = None
    details: str = ""
    content_length: int | None = None
    pieces: int = 0
    trailers: dict[str, str | bytes] = field(default_factory=dict)


@dataclass
class Swarm:
    root: Path
    origin: Origin | None = None
    scheduler_port: int = 0
    daemons: dict[str, Daemon] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _sched_task: asyncio.Task[None] | None = None

    async def start(self, *, scheduler: dict[str, Any] | None = None) -> None:
        files = self.root / "origin"
        files.mkdir(parents=True, exist_ok=True)
        self.origin = Origin(files)
        await self.origin.start()
        ready = self.root / "scheduler.ready"
        overrides = {"server": {"ip": "127.0.0.1", "port": 0}, "metrics": {"port": 0}}
        for k, v in (scheduler or {}).items():
            overrides.setdefault(k, {}).update(v)
        config = load_scheduler_config(None, overrides)
        self._sched_task = asyncio.get_running_loop().create_task(
            serve_scheduler(config, ready_file=ready, stop=self._stop)
        )
        task = self._sched_task
        await until(lambda: ready.exists() or task.done(), "the scheduler wrote its ready file")
        if task.done():
            task.result()  # it failed to start: its error
        self.scheduler_port = json.loads(ready.read_text())["grpc_port"]

    def file(self, name: str, size: int, seed: int = 1) -> Path:
        assert self.origin is not None
        path = self.root / "origin" / name
        rnd = __import__("random").Random(seed)
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, 1 << 20)
                f.write(rnd.randbytes(n))
                left -= n
        return path

    def url(self, name: str, **kw: Any) -> str:
        assert self.origin is not None
        return self.origin.url(name, **kw)

    def daemon_config(self, name: str, *, seed: bool = False, **extra: Any) -> DaemonConfig:
        data = self.root / name
        overrides: dict[str, Any] = {
            "host": {"hostname": name, "ip": "127.0.0.1"},
            "seed_peer": {"enable": seed},
            "scheduler": {"addrs": [f"127.0.0.1:{self.scheduler_port}"], "announce_interval": 5},
            # The piece protocol over TCP, which these tests are about; daemons in one process
            # would otherwise pass pieces as file descriptors (tests/swarm/test_local_pieces.py).
            "storage": {"dir": str(data), "server": {"ip": "127.0.0.1", "tcp_port": 0}, "local_share": False},
            "upload": {"server": {"ip": "127.0.0.1", "port": 0}},
            "metrics": {"enable": False},
            "download": {"piece_timeout": 5},
        }
        for k, v in extra.items():
            overrides.setdefault(k, {}).update(v)
        return load_daemon_config(None, overrides)

    async def add_daemon(self, name: str, *, seed: bool = False, **extra: Any) -> Daemon:
        d = Daemon(self.daemon_config(name, seed=seed, **extra))
        await d.start()
        self.daemons[name] = d
        # The host must be known to the scheduler before it is asked for anything.
        await until(lambda: self.host_known(d.host_id), f"the scheduler knows daemon {name}'s host")
        return d

    async def host_known(self, host_id: str) -> bool:
        from damselfly.api import scheduler_pb2, scheduler_pb2_grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.scheduler_port}") as ch:
            resp = await scheduler_pb2_grpc.SchedulerStub(ch).ListHosts(scheduler_pb2.ListHostsRequest())
        return any(h.id == host_id for h in resp.hosts)

    async def task_available(self, task_id: str) -> bool:
        """The scheduler has a peer that can serve ``task_id`` (a finished or restored one)."""
        from damselfly.api import scheduler_pb2, scheduler_pb2_grpc

        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.scheduler_port}") as ch:
            try:
                task = await scheduler_pb2_grpc.SchedulerStub(ch).StatTask(
                    scheduler_pb2.StatTaskRequest(task_id=task_id)
                )
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise
        return bool(task.has_available_peer)

    async def stop_daemon(self, name: str) -> None:
        d = self.daemons.pop(name)
        await d.stop()

    async def download(self, name: str, url: str, output: Path | None = None, **spec: Any) -> Result:
        """Download through daemon ``name``'s local API, as dfget does."""
        d = self.daemons[name]
        pb = download_to_pb(DownloadSpec(url=url, output_path=str(output) if output else "", **spec))
        result = Result(ok=False)
        async with grpc.aio.insecure_channel(f"unix:{d.config.socket_path}") as ch:
            stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(ch)
            try:
                async for msg in stub.DownloadTask(dfdaemon_pb2.DownloadTaskRequest(download=pb)):
                    if msg.HasField("download_task_started_response"):
                        result.content_length = msg.download_task_started_response.content_length
                    else:
                        result.pieces += 1
                result.ok = True
            except grpc.aio.AioRpcError as e:
                result.code, result.details = e.code(), e.details() or ""
                result.trailers = dict(e.trailing_metadata() or ())
        return result

    def origin_bytes(self, path: str | None = None) -> int:
        assert self.origin is not None
        stats = self.origin.stats
        if path is None:
            return stats.bytes
        return stats.paths[path].bytes if path in stats.paths else 0

    async def close(self) -> None:
        for name in list(self.daemons):
            with contextlib.suppress(Exception):
                await self.stop_daemon(name)
        self._stop.set()
        if self._sched_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sched_task, 10)
        if self.origin is not None:
            await self.origin.close()


def task_content(d: Daemon, task_id: str) -> Path:
    return d.store.content_path(task_id)


def corrupt(path: Path, offset: int) -> None:
    """One byte of a content file flips on disk (bit rot: its mtime stays)."""
    with open(path, "rb") as f:
        f.seek(offset)
        b = f.read(1)
    rot(path, bytes([b[0] ^ 0xFF]), offset)
