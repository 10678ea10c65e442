"""HTTPSource.stat: the content length asked of the origin before a download registers with
Dragonfly's scheduler, as Dragonfly's client asks it (dragonfly-client-backend/src/http.rs:386-655,
dragonflyoss/client ff17c0b7): GET with ``Range: bytes=0-0``, HEAD for a chunked answer, GET
without Range after a 416, and no length at all is an error."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from damselfly.config import SourceConfig
from damselfly.daemon.origin.source import HTTPSource
from damselfly.errors import SourceError, SourceStatusError

BODY = bytes(range(256)) * 4  # 1024 bytes


async def _ranged(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Range") == "bytes=0-0":
        return web.Response(status=206, body=BODY[:1], headers={"Content-Range": f"bytes 0-0/{len(BODY)}"})
    return web.Response(body=BODY)


async def _whole(request: web.Request) -> web.StreamResponse:
    return web.Response(body=BODY, headers={"X-Version": "v1"})  # ignores Range


async def _nolength(request: web.Request) -> web.StreamResponse:
    return await _chunked(request, head_length=False)


async def _chunked(request: web.Request, *, head_length: bool = True) -> web.StreamResponse:
    if request.method == "HEAD":
        return web.Response(body=BODY) if head_length else _no_length()
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(BODY)
    await resp.write_eof()
    return resp


def _no_length() -> web.StreamResponse:
    resp = web.Response()
    resp.enable_chunked_encoding()
    return resp


async def _empty(request: web.Request) -> web.StreamResponse:
    if "Range" in request.headers:
        return web.Response(status=416, headers={"Content-Range": "bytes */0"})
    return web.Response(body=b"")


@pytest.fixture
async def origin() -> AsyncIterator[tuple[str, list[tuple[str, str, str]]]]:
    seen: list[tuple[str, str, str]] = []

    @web.middleware
    async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
        seen.append((request.method, request.path, request.headers.get("Range", "")))
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.router.add_route("*", "/ranged", _ranged)
    app.router.add_route("*", "/whole", _whole)
    app.router.add_route("*", "/chunked", _chunked)
    app.router.add_route("*", "/nolength", _nolength)
    app.router.add_route("*", "/empty", _empty)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


@pytest.fixture
async def source() -> AsyncIterator[HTTPSource]:
    s = HTTPSource(SourceConfig())
    try:
        yield s
    finally:
        await s.close()


async def test_a_ranged_origin_tells_the_total_in_content_range(origin, source) -> None:
    base, seen = origin
    size = await source.stat(f"{base}/ranged", {"Range": "bytes=5-9", "X-Trace": "1"})
    assert size.content_length == len(BODY)
    assert size.headers["Content-Length"] == str(len(BODY)) and "Content-Range" not in size.headers
    # One GET of one byte; the user's own Range is not what is asked.
    assert seen == [("GET", "/ranged", "bytes=0-0")]


async def test_an_origin_ignoring_range_tells_its_content_length(origin, source) -> None:
    base, seen = origin
    size = await source.stat(f"{base}/whole", {})
    assert size.content_length == len(BODY) and size.headers["X-Version"] == "v1"
    assert seen == [("GET", "/whole", "bytes=0-0")]


async def test_a_chunked_answer_is_asked_again_with_head(origin, source) -> None:
    base, seen = origin
    assert (await source.stat(f"{base}/chunked", {})).content_length == len(BODY)
    assert seen == [("GET", "/chunked", "bytes=0-0"), ("HEAD", "/chunked", "")]


async def test_a_416_is_asked_again_without_range(origin, source) -> None:
    base, seen = origin
    assert (await source.stat(f"{base}/empty", {})).content_length == 0
    assert seen == [("GET", "/empty", "bytes=0-0"), ("GET", "/empty", "")]


async def test_an_origin_that_says_no_length_fails_as_in_dragonfly(origin, source) -> None:
    base, _ = origin
    with pytest.raises(SourceError, match="did not say the content length"):
        await source.stat(f"{base}/nolength", {})


async def test_an_error_status_is_a_status_error(origin, source) -> None:
    base, _ = origin
    with pytest.raises(SourceStatusError) as e:
        await source.stat(f"{base}/missing", {})
    assert e.value.status == 404
