"""The testbed origin: Range, counters and faults, in-process with a real socket."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from damselfly.testbed.origin import Origin

DATA = os.urandom(300_000)


@pytest.fixture
async def origin(tmp_path: Path, no_loop_blocking: None) -> AsyncIterator[Origin]:
    (tmp_path / "a.bin").write_bytes(DATA)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"bee")
    async with Origin(tmp_path) as o:
        yield o


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_full_get_is_counted(origin: Origin, http: aiohttp.ClientSession) -> None:
    async with http.get(origin.url("a.bin")) as r:
        assert r.status == 200 and r.content_length == len(DATA)
        assert await r.read() == DATA
    async with http.get(origin.url("sub/b.bin", query="run=2")) as r:
        assert await r.read() == b"bee"
    async with http.get(f"http://127.0.0.1:{origin.port}/_stats") as r:
        stats = await r.json()
    assert stats["paths"]["/a.bin"] == {
        "requests": 1,
        "bytes": len(DATA),
        "bytes_sent": len(DATA),
        "bytes_completed": len(DATA),
    }
    assert stats["bytes"] == len(DATA) + 3 and stats["requests"] == 2


async def test_range_answers_206(origin: Origin, http: aiohttp.ClientSession) -> None:
    async with http.get(origin.url("a.bin"), headers={"Range": "bytes=1000-1999"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 1000-1999/{len(DATA)}"
        assert await r.read() == DATA[1000:2000]
    assert origin.stats.paths["/a.bin"].bytes == 1000


async def test_head_sends_no_body_bytes(origin: Origin, http: aiohttp.ClientSession) -> None:
    async with http.head(origin.url("a.bin")) as r:
        assert r.status == 200 and int(r.headers["Content-Length"]) == len(DATA)
    assert origin.stats.bytes == 0 and origin.stats.requests == 1


async def test_missing_and_escaping_paths_are_404(origin: Origin, http: aiohttp.ClientSession) -> None:
    for path in ("/nope.bin", "/../etc/passwd", "/%2e%2e/etc/passwd", "/sub"):
        async with http.get(f"http://127.0.0.1:{origin.port}{path}") as r:
            assert r.status == 404, path
    assert origin.stats.bytes == 0


@pytest.mark.parametrize("status", [404, 500])
async def test_status_faults(origin: Origin, http: aiohttp.ClientSession, status: int) -> None:
    async with http.get(origin.url("a.bin", fault=str(status))) as r:
        assert r.status == status
    assert origin.stats.paths[f"/_fault/{status}/a.bin"].requests == 1


async def test_truncate_closes_early(origin: Origin, http: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(origin.url("a.bin", fault="truncate")) as r:
            assert r.content_length == len(DATA)
            await r.read()


async def test_stall_sends_a_head_then_nothing(origin: Origin, http: aiohttp.ClientSession) -> None:
    timeout = aiohttp.ClientTimeout(sock_read=0.3)
    async with http.get(origin.url("a.bin", fault="stall", query="stall_s=5"), timeout=timeout) as r:
        first = await r.content.readexactly(64 * 1024)
        assert first == DATA[: 64 * 1024]
        with pytest.raises(TimeoutError):
            await r.content.read(1)


async def test_slow_delivers_everything(origin: Origin, http: aiohttp.ClientSession) -> None:
    async with http.get(origin.url("sub/b.bin", fault="slow", query="rate=100000")) as r:
        assert await r.read() == b"bee"
    # /_stats on the same keep-alive connection is answered after the slow handler ended.
    async with http.get(f"http://127.0.0.1:{origin.port}/_stats") as r:
        stats = await r.json()
    assert stats["paths"]["/_fault/slow/sub/b.bin"]["bytes_completed"] == 3


async def test_unknown_fault_and_reset(origin: Origin, http: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError):
        origin.url("a.bin", fault="explode")
    async with http.get(f"http://127.0.0.1:{origin.port}/_fault/explode/a.bin") as r:
        assert r.status == 400
    async with http.post(f"http://127.0.0.1:{origin.port}/_stats/reset") as r:
        assert r.status == 200
    assert origin.stats.requests == 0


async def test_slow_answers_a_range_and_counts_what_it_sent(
    origin: Origin, http: aiohttp.ClientSession
) -> None:
    url = origin.url("a.bin", fault="slow", query="rate=10000000")
    async with http.get(url, headers={"Range": "bytes=100000-"}) as r:
        assert r.status == 206
        assert r.headers["Content-Range"] == f"bytes 100000-{len(DATA) - 1}/{len(DATA)}"
        assert await r.read() == DATA[100000:]
    async with http.get(f"http://127.0.0.1:{origin.port}/_stats") as r:  # after the handler ended
        assert r.status == 200
    stats = origin.stats.paths["/_fault/slow/a.bin"]
    assert stats.bytes == stats.bytes_sent == stats.bytes_completed == len(DATA) - 100000


async def test_a_client_gone_mid_body_costs_what_was_sent_not_what_was_asked(
    tmp_path: Path, http: aiohttp.ClientSession, no_loop_blocking: None
) -> None:
    big = 64 * 1024 * 1024
    with (tmp_path / "big.bin").open("wb") as f:
        f.truncate(big)
    async with Origin(tmp_path) as o:
        for url in (o.url("big.bin"), o.url("big.bin", fault="slow", query="rate=20000000")):
            async with http.get(url) as r:
                await r.content.readexactly(2 * 1024 * 1024)
                r.close()  # the client dies: the connection is dropped mid-body
        await asyncio.sleep(0.5)  # the server notices the dropped connections
        for path in ("/big.bin", "/_fault/slow/big.bin"):
            stats = o.stats.paths[path]
            assert stats.bytes == big, path  # the upper bound: what was asked
            assert 2 * 1024 * 1024 <= stats.bytes_sent < big // 2, (path, stats)
            assert stats.bytes_completed == 0, path
