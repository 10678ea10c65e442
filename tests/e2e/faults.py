"""A registry front that injects faults for chosen blobs, in a thread of the test process.

Why: distribution never answers 500 or cuts a body on demand. The front passes
everything to the real registry and, for a blob digest listed in ``faults``,
answers 500 or 401, cuts the body short, flips bytes (same length), or sends
half the body and holds the rest until ``release`` is set ("hold").
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import aiohttp
from aiohttp import web

_BLOB = re.compile(r"/blobs/(sha256:[0-9a-f]{64})$")


class FaultFront:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.faults: dict[str, str] = {}
        self.blob_gets: dict[str, int] = {}
        self.release = threading.Event()
        self.holding = threading.Event()  # a "hold" blob sent its first half and waits for release
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultFront:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault front did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            self._session = session
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        m = _BLOB.search(request.path)
        digest = m.group(1) if m else ""
        fault = self.faults.get(digest, "") if digest else ""
        if digest and request.method == "GET":
            self.blob_gets[digest] = self.blob_gets.get(digest, 0) + 1
        if fault == "500":
            return web.Response(status=500, text="injected failure")
        if fault == "401":
            return web.Response(status=401, text="{}", headers={"WWW-Authenticate": 'Basic realm="front"'})
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "connection")}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, allow_redirects=False
        ) as up:
            body = await up.read()
            out: dict[str, Any] = {
                k: v for k, v in up.headers.items() if k.lower() not in ("transfer-encoding", "connection")
            }
        if fault == "corrupt" and len(body) > 2:
            mid = len(body) // 2
            body = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1 :]
        if fault == "hold" and request.method == "GET":
            resp = web.StreamResponse(status=up.status, headers=out)
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            self.holding.set()
            await asyncio.to_thread(self.release.wait, 60)
            await resp.write(body[len(body) // 2 :])
            return resp
        if fault == "truncate" and request.method == "GET":
            resp = web.StreamResponse(status=up.status, headers=out)
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            assert request.transport is not None
            request.transport.close()
            return resp
        return web.Response(status=up.status, body=body if request.method != "HEAD" else None, headers=out)
