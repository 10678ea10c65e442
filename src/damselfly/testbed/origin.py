"""An origin HTTP server for tests and benchmarks, which counts what it serves.

Why: to show that P2P works we must count what the origin sent, not just that a
download succeeded. This server serves the files of one directory (``GET``/
``HEAD``, ``Range`` answered with 206, ``Content-Length``, sendfile through
aiohttp's ``FileResponse``) and keeps per-path counters:

* ``requests``: requests for the path (any status);
* ``bytes``: body bytes the server *began* to send (the Content-Length of each
  200/206 answer). An aborted transfer counts in full, so this is an upper
  bound: a test asserting ``bytes <= F`` can only be made to fail by it;
* ``bytes_sent``: body bytes handed to the socket, counted a slice of at most
  :data:`SEND_SLICE` (1 MiB) at a time just before each slice goes: an aborted
  transfer counts what went out, to a slice. Still an upper bound, and the one
  that tells what a client killed mid-transfer cost the origin;
* ``bytes_completed``: bodies that were sent to the end.

and, over all paths, ``size_probes``: GETs for the first byte only
(``Range: bytes=0-0``), which is how a daemon on Dragonfly's wire learns a
file's size before it registers; each counts 1 in ``bytes``, so a swarm's
origin bytes are F plus its probes.

``GET /_stats`` returns them as JSON::

    {"requests": 3, "bytes": 1048576, "bytes_completed": 1048576, "size_probes": 0,
     "paths": {"/a.bin": {"requests": 3, "bytes": ..., "bytes_completed": ...}}}

``POST /_stats/reset`` zeroes them.

Faults are chosen by a path prefix, ``/_fault/<kind>/<file>``, counted under
the full path:

* ``/_fault/404/<file>`` and ``/_fault/500/<file>``: that status, no body;
* ``/_fault/truncate/<file>``: announces the full Content-Length, sends half of
  the body, then closes the connection;
* ``/_fault/stall/<file>``: sends the headers and the first 64 KiB, then nothing
  until the client goes away or ``?stall_s=N`` seconds pass (default 30, so a
  forgotten client never keeps the server busy for long);
* ``/_fault/slow/<file>``: sends the body at ``?rate=BYTES_PER_S`` (default 1 MiB/s),
  a ``Range`` answered with 206 (``bytes`` counts the range; ``bytes_sent`` what went).

Query strings are otherwise ignored, so ``/a.bin?run=2`` is the same file under
another URL (a new task for Damselfly).

Use it in-process (``async with Origin(dir) as o: o.url("a.bin")``) or as a
process: ``python -m damselfly.testbed.origin --dir D --port 0 --ready-file F``
writes ``{"pid": ..., "port": ...}`` to F once listening, and stops on
SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from ..process import write_ready_file
from ..units import MiB

log = logging.getLogger(__name__)

FAULTS = ("404", "500", "truncate", "stall", "slow")
_STALL_HEAD = 64 * 1024
_CHUNK = 256 * 1024
SEND_SLICE = 1 * MiB


@dataclass(slots=True)
class PathStats:
    requests: int = 0
    bytes: int = 0
    bytes_sent: int = 0
    bytes_completed: int = 0


class OriginStats:
    """Counters of one origin; owned by its :class:`Origin` and mutated only in its loop."""

    def __init__(self) -> None:
        self.paths: defaultdict[str, PathStats] = defaultdict(PathStats)
        self.size_probes = 0

    @property
    def requests(self) -> int:
        return sum(p.requests for p in self.paths.values())

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.paths.values())

    @property
    def bytes_sent(self) -> int:
        return sum(p.bytes_sent for p in self.paths.values())

    @property
    def bytes_completed(self) -> int:
        return sum(p.bytes_completed for p in self.paths.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "bytes": self.bytes,
            "bytes_sent": self.bytes_sent,
            "bytes_completed": self.bytes_completed,
            "size_probes": self.size_probes,
            "paths": {k: asdict(v) for k, v in sorted(self.paths.items())},
        }

    def reset(self) -> None:
        self.paths.clear()
        self.size_probes = 0


class _CountedFileResponse(web.FileResponse):
    """A sendfile response that knows whose counters it feeds.

    ``bytes`` is counted when the headers go out (:func:`_count_started`, once
    the status and Content-Length of a possibly ranged answer are known);
    ``bytes_completed`` once the body has been handed to the kernel.
    """

    def __init__(self, path: Path, stats: PathStats, *, chunk_size: int) -> None:
        super().__init__(path, chunk_size=chunk_size)
        self.path_stats = stats

    async def prepare(self, request: web.BaseRequest) -> Any:
        writer = await super().prepare(request)
        if request.method != "HEAD" and self.status in (200, 206):
            self.path_stats.bytes_completed += self.content_length or 0
        return writer

    async def _sendfile(
        self, request: web.BaseRequest, fobj: IO[Any], offset: int, count: int
    ) -> AbstractStreamWriter:
        """aiohttp's sendfile, in slices, so ``bytes_sent`` knows what an aborted body cost."""
        transport = request.transport
        if self.compression or transport is None:
            done = await super()._sendfile(request, fobj, offset, count)
            self.path_stats.bytes_sent += count
            return done
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        loop = asyncio.get_running_loop()
        end = offset + count
        while offset < end:
            n = min(SEND_SLICE, end - offset)
            self.path_stats.bytes_sent += n
            await loop.sendfile(transport, fobj, offset, n)
            offset += n
        await web.StreamResponse.write_eof(self)
        return writer


async def _count_started(request: web.Request, response: web.StreamResponse) -> None:
    counted = isinstance(response, _CountedFileResponse) and request.method != "HEAD"
    if counted and response.status in (200, 206):
        assert isinstance(response, _CountedFileResponse)
        response.path_stats.bytes += response.content_length or 0


class Origin:
    """The origin server: serves ``directory`` on ``host:port`` (0 picks a free port)."""

    def __init__(self, directory: str | Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.directory = Path(directory).resolve()
        self.host = host
        self._port = port
        self.stats = OriginStats()
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/_stats", self._get_stats)
        app.router.add_post("/_stats/reset", self._reset_stats)
        app.router.add_get("/{path:.*}", self._serve)
        app.on_response_prepare.append(_count_started)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self._port = int(sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Origin:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        return self._port

    def url(self, name: str, *, fault: str | None = None, query: str = "") -> str:
        """The URL of file ``name``, optionally through a fault (see the module docstring)."""
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        path = f"/_fault/{fault}/{name}" if fault else f"/{name}"
        return f"http://{self.host}:{self._port}{path}" + (f"?{query}" if query else "")

    # -- handlers --------------------------------------------------------------

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.to_json())

    async def _reset_stats(self, request: web.Request) -> web.Response:
        self.stats.reset()
        return web.json_response({"ok": True})

    def _resolve(self, rel: str) -> tuple[Path, int] | None:
        """The file ``rel`` names inside the directory and its size, or None (never outside it)."""
        target = (self.directory / rel).resolve()
        if not target.is_relative_to(self.directory) or not target.is_file():
            return None
        return target, target.stat().st_size

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        stats = self.stats.paths[path]
        stats.requests += 1
        if request.method == "GET" and request.headers.get("Range", "").replace(" ", "") == "bytes=0-0":
            self.stats.size_probes += 1
        fault = ""
        rel = path.lstrip("/")
        if rel.startswith("_fault/"):
            fault, _, rel = rel[len("_fault/") :].partition("/")
            if fault not in FAULTS:
                raise web.HTTPBadRequest(text=f"unknown fault {fault!r}\n")
        if fault == "404":
            raise web.HTTPNotFound()
        if fault == "500":
            raise web.HTTPInternalServerError()
        found = self._resolve(rel)
        if found is None:
            raise web.HTTPNotFound()
        target, size = found
        if fault in ("truncate", "stall", "slow"):
            return await self._serve_fault(request, fault, target, size, stats)

        return _CountedFileResponse(target, stats, chunk_size=_CHUNK)

    async def _serve_fault(
        self, request: web.Request, fault: str, target: Path, size: int, stats: PathStats
    ) -> web.StreamResponse:
        start, stop = 0, size
        if fault == "slow" and "Range" in request.headers:
            try:
                r = request.http_range
            except ValueError:
                raise web.HTTPRequestRangeNotSatisfiable() from None
            start = size + r.start if r.start is not None and r.start < 0 else (r.start or 0)
            stop = min(size, r.stop) if r.stop is not None else size
            if not 0 <= start < stop:
                raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
        response = web.StreamResponse(status=206 if (start, stop) != (0, size) else 200)
        if response.status == 206:
            response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        response.content_length = stop - start
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        stats.bytes += stop - start
        transport = request.transport
        with target.open("rb") as f:
            if fault == "truncate":
                stats.bytes_sent += size // 2
                await response.write(f.read(size // 2))
                if transport is not None:
                    transport.close()
                return response
            if fault == "stall":
                stats.bytes_sent += min(size, _STALL_HEAD)
                await response.write(f.read(min(size, _STALL_HEAD)))
                deadline = asyncio.get_running_loop().time() + float(request.query.get("stall_s", "30"))
                while asyncio.get_running_loop().time() < deadline:
                    if transport is None or transport.is_closing():
                        break
                    await asyncio.sleep(0.05)
                if transport is not None:
                    transport.close()
                return response
            rate = max(1, int(request.query.get("rate", str(1 * MiB))))
            chunk = max(1, min(_CHUNK, rate // 10))
            f.seek(start)
            left = stop - start
            while left > 0 and (block := f.read(min(chunk, left))):
                stats.bytes_sent += len(block)
                left -= len(block)
                await response.write(block)
                await asyncio.sleep(len(block) / rate)
        await response.write_eof()
        stats.bytes_completed += stop - start
        return response


async def _serve_forever(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Origin(args.dir, host=args.host, port=args.port) as origin:
        log.info("origin serving %s on %s:%d", origin.directory, origin.host, origin.port)
        if args.ready_file:
            write_ready_file(Path(args.ready_file), {"pid": os.getpid(), "port": origin.port})
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m damselfly.testbed.origin", description=__doc__)
    parser.add_argument("--dir", required=True, help="directory whose files are served")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ready-file", help='write {"pid", "port"} here once listening')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve_forever(args))


if __name__ == "__main__":
    main()
