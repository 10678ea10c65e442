"""DownloadTask on both daemon services: a piece length outside Dragonfly's range is refused
before any task exists, and a caller whose deadline passes leaves no unretrieved task error.

One daemon in-process (tests/swarm/harness.py) with real gRPC on loopback and the unix socket.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from damselfly.api import dfdaemon_pb2, dfdaemon_pb2_grpc
from damselfly.api.convert import download_to_pb
from damselfly.domain import DownloadSpec
from swarm.harness import Swarm

MiB = 1024 * 1024


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[Swarm]:
    s = Swarm(tmp_path)
    await s.start()
    await s.add_daemon("d1")
    try:
        yield s
    finally:
        await s.close()


def _request(url: str, piece_length: int | None = None) -> dfdaemon_pb2.DownloadTaskRequest:
    return dfdaemon_pb2.DownloadTaskRequest(
        download=download_to_pb(DownloadSpec(url=url, piece_length=piece_length))
    )


@pytest.mark.parametrize("piece_length", [1, 4 * MiB - 1, 64 * MiB + 1])
async def test_piece_length_outside_the_range_is_refused_on_both_services(
    swarm: Swarm, piece_length: int
) -> None:
    swarm.file("small.bin", 16 * 1024)
    url = swarm.url("small.bin")
    d = swarm.daemons["d1"]
    channels = {
        "local": grpc.aio.insecure_channel(f"unix:{d.config.socket_path}"),
        "upload": grpc.aio.insecure_channel(f"127.0.0.1:{d.ports['upload_port']}"),
    }
    try:
        for name, ch in channels.items():
            stub = (
                dfdaemon_pb2_grpc.DfdaemonDownloadStub(ch)
                if name == "local"
                else dfdaemon_pb2_grpc.DfdaemonUploadStub(ch)
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in stub.DownloadTask(_request(url, piece_length), timeout=20):
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
            details = info.value.details() or ""
            assert "piece length" in details and "4 MiB" in details and "64 MiB" in details, details
    finally:
        for ch in channels.values():
            await ch.close()
    assert list(d.store.tasks()) == []  # refused before any task was made
    assert swarm.origin_bytes() == 0


async def test_piece_length_inside_the_range_downloads(swarm: Swarm) -> None:
    swarm.file("ok.bin", 16 * 1024)
    result = await swarm.download("d1", swarm.url("ok.bin"), piece_length=4 * MiB)
    assert result.ok, result.details


async def test_caller_deadline_passing_leaves_no_unretrieved_task_error(
    swarm: Swarm, caplog: pytest.LogCaptureFixture
) -> None:
    # The caller asks for the content in the messages and stops reading: the daemon's stream
    # is suspended at a message when the deadline passes, and closing it then raised
    # GeneratorExit into the servicer.
    swarm.file("big.bin", 48 * MiB)
    d = swarm.daemons["d1"]
    assert (await swarm.download("d1", swarm.url("big.bin"))).ok  # held: pieces go out at once
    caplog.set_level(logging.ERROR, logger="asyncio")
    request = _request(swarm.url("big.bin"))
    request.download.need_piece_content = True
    for _ in range(2):
        async with grpc.aio.insecure_channel(f"unix:{d.config.socket_path}") as ch:
            stub = dfdaemon_pb2_grpc.DfdaemonDownloadStub(ch)
            call = stub.DownloadTask(request, timeout=1.0)
            await call.read()  # the first message, then no more reading
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await asyncio.sleep(1.5)
                while await call.read() is not grpc.aio.EOF:
                    pass
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # Let the server side wind down and collect what it left, then look at the loop's reports.
    for _ in range(3):
        await asyncio.sleep(0.5)
        gc.collect()
    reports = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert not [m for m in reports if "never retrieved" in m or "GeneratorExit" in m], reports
    assert (await swarm.download("d1", swarm.url("big.bin"))).ok  # the daemon serves on
