"""ListTaskEntries' origin stat (daemon/task_entries.py), as Dragonfly's HTTP backend asks.

dragonfly-client-backend/src/http.rs:386-650 (client commit ff17c0b7).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from damselfly.daemon.task_entries import OriginStat, stat_from_answer, stat_url
from damselfly.errors import InvalidArgument


def test_a_206_is_made_to_look_like_the_whole_object() -> None:
    stat = stat_from_answer(206, {"Content-Range": "bytes 0-0/1048576", "Content-Length": "1", "ETag": "x"})
    assert stat == OriginStat(1048576, {"Content-Length": "1048576", "ETag": "x"}, 206)
    assert stat_from_answer(206, {"Content-Range": "bytes 0-0/*"}).content_length is None
    assert stat_from_answer(200, {"Content-Length": "12"}) == OriginStat(12, {"Content-Length": "12"}, 200)
    assert stat_from_answer(404, {}) == OriginStat(None, {}, 404)


@pytest.fixture
async def origin() -> AsyncIterator[tuple[str, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []

    async def ranged(request: web.Request) -> web.StreamResponse:
        seen.append((request.method, request.headers.get("Range", "")))
        return web.Response(status=206, body=b"a", headers={"Content-Range": "bytes 0-0/5000"})

    async def empty(request: web.Request) -> web.StreamResponse:
        seen.append((request.method, request.headers.get("Range", "")))
        if "Range" in request.headers:
            return web.Response(status=416)
        return web.Response(status=200, body=b"")

    async def chunked(request: web.Request) -> web.StreamResponse:
        seen.append((request.method, request.headers.get("Range", "")))
        if request.method == "HEAD":
            return web.Response(status=200, headers={"Content-Length": "77"})
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"x")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/ranged", ranged)
    app.router.add_get("/empty", empty)
    app.router.add_route("*", "/chunked", chunked)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    await runner.cleanup()


async def test_stat_url_asks_one_byte_and_retries_as_dragonfly(
    origin: tuple[str, list[tuple[str, str]]],
) -> None:
    base, seen = origin
    async with aiohttp.ClientSession() as s:
        ranged = await stat_url(s, f"{base}/ranged", {"Range": "bytes=9-", "X-A": "1"}, timeout=5)
        assert (ranged.content_length, ranged.status_code) == (5000, 206)
        assert seen.pop() == ("GET", "bytes=0-0")  # the caller's Range is replaced
        empty = await stat_url(s, f"{base}/empty", {}, timeout=5)
        assert (empty.content_length, empty.status_code) == (0, 200)
        assert seen[-2:] == [("GET", "bytes=0-0"), ("GET", "")]
        chunked = await stat_url(s, f"{base}/chunked", {}, timeout=5)
        assert (chunked.content_length, chunked.status_code) == (77, 200)
        assert seen[-1][0] == "HEAD"
        gone = await stat_url(s, "http://127.0.0.1:1/x", {}, timeout=5)
        assert gone == OriginStat()
        with pytest.raises(InvalidArgument):
            await stat_url(s, "ftp://h/x", {}, timeout=5)
