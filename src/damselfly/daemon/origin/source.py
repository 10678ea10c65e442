"""Back-to-source over HTTP(S): the origin's bytes go straight into the piece store.

:meth:`HTTPSource.fetch_into` is the entry point for content. A fresh download is one
streaming GET (the origin sees one fetch of the file); the body is cut into
pieces as it arrives, each piece ``pwrite``-n at its offset into the store's
content fd with its crc32 computed on the way, and reported as soon as its last
byte is written, so other peers can pull it while the rest downloads. A resumed
download asks only for the missing pieces, with one ``Range`` request per run of
consecutive missing pieces (and copes with origins that ignore ``Range``). Which
ranges to ask for is decided in :mod:`.ranges`, with no I/O; this module does
the requests and lands the bodies.

:meth:`HTTPSource.stat` only asks the content's length and headers, as Dragonfly's
client does before it registers a download with Dragonfly's scheduler.

Headers the user gave (``Authorization`` included) go to the origin and nowhere
else; they are never logged. ``Accept-Encoding: identity`` is sent unless the
user set an encoding, and bodies are never decompressed: the stored content is
exactly the origin's bytes.

Errors are translated here: status >= 400 -> :class:`SourceStatusError`; DNS,
refused connection, TLS, connect timeout -> :class:`SourceUnreachable`; no byte
for ``read_timeout`` -> :class:`DownloadTimeout`; a body shorter than announced,
or a broken connection mid-body -> :class:`SourceError`; a failed disk write ->
:class:`StorageError`.

Long because: one origin client serves the streaming fetch, the ranged fill of a
resumed task and the size probe, and they share its session, status checks and
error mapping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Set
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from ...checksum import crc32
from ...config import SourceConfig
from ...domain import PieceInfo, TrafficType
from ...errors import (
    ConfigError,
    DamselflyError,
    DownloadTimeout,
    SourceError,
    SourceStatusError,
    SourceUnreachable,
    StorageError,
)
from ..store.digesting import Feed, InOrderDigest
from ..store.files import pwrite_all, reserve
from ..store.receiving import Receiving
from . import ranges, rawhttp

log = logging.getLogger(__name__)


class ByteLimiter(Protocol):
    """A host-wide bandwidth limit: ``consume`` returns once ``nbytes`` may pass."""

    async def consume(self, nbytes: int) -> None: ...


OnStart = Callable[[int | None, dict[str, str]], Awaitable[int]]
OnPiece = Callable[[PieceInfo], None]
# (number, offset, length) of a piece whose first bytes are about to be written; may
# return where to count its bytes as they land (cut-through, daemon/store/receiving.py).
OnPieceStart = Callable[[int, int, int], Receiving | None]

# Headers that describe one hop or one byte range, not the content.
_DROP_RESPONSE = frozenset(
    h.lower()
    for h in ("Connection", "Keep-Alive", "Transfer-Encoding", "Content-Range", "Content-Length", "Trailer")
)
_DROP_REQUEST = frozenset(h.lower() for h in ("Range", "If-Range", "Connection", "Keep-Alive", "Host"))


@dataclass(frozen=True, slots=True)
class OriginSize:
    """What :meth:`HTTPSource.stat` learned: the content's length and the origin's headers
    (as a whole-content answer would carry them: no range headers, ``Content-Length`` the total)."""

    content_length: int
    headers: dict[str, str]


class HTTPSource:
    """Fetches content from HTTP(S) origins into the piece store.

    Owns one :class:`aiohttp.ClientSession`, created on first use (inside the
    running loop) and closed by :meth:`close`. TLS certificates are verified
    unless ``insecure_skip_verify``; ``ca_cert`` adds a trusted CA bundle.
    """

    def __init__(
        self,
        config: SourceConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        limiter: ByteLimiter | None = None,
        fast_path: bool = True,
    ) -> None:
        self._config = config
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        # Host-wide back-to-source bandwidth: every body chunk takes tokens first.
        self.limiter = limiter
        # Plain-HTTP origins go through rawhttp (see its docstring for why).
        self.fast_path = fast_path

    def _ssl(self) -> ssl.SSLContext | bool:
        if self._config.insecure_skip_verify:
            return False
        if self._config.ca_cert:
            try:
                return ssl.create_default_context(cafile=self._config.ca_cert)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError(f"cannot load source.caCert {self._config.ca_cert}: {e}") from e
        return True

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(
                total=None,
                sock_connect=self._config.connect_timeout,
                sock_read=self._config.read_timeout,
            )
            self._session = aiohttp.ClientSession(
                timeout=timeout,
                connector=aiohttp.TCPConnector(ssl=self._ssl()),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def fetch_into(
        self,
        url: str,
        headers: dict[str, str],
        *,
        fd_factory: Callable[[], int],
        on_start: OnStart,
        on_piece: OnPiece,
        have: Set[int] = frozenset(),
        piece_length: int | None = None,
        on_piece_start: OnPieceStart | None = None,
        digest: InOrderDigest | None = None,
    ) -> int:
        """Download ``url`` into the store, piece by piece; return the content length.

        The call sequence, for the caller (the conductor):

        1. ``await on_start(content_length, response_headers)`` once, as soon as
           the origin answers. ``content_length`` is None when the origin sends
           no length (chunked); the headers are the origin's, minus hop-by-hop
           and range headers. It must return the piece length to cut the
           content into (``damselfly.pieces.piece_length_for``); this is the
           moment to size the store (``set_content_length``). For an unknown
           length, the caller must keep that piece length for the end.
        2. ``fd_factory()`` once, after ``on_start``: an fd open for writing on
           the content file. ``fetch_into`` owns it and closes it on return.
        3. ``on_piece(PieceInfo)`` for every piece as soon as its bytes are
           written (``crc32:<n>`` digest, cost in seconds, traffic type
           BACK_TO_SOURCE; ``parent_id`` empty). Not called for pieces in
           ``have``. An exception from it aborts the download.

        ``have``: piece numbers already held (their bytes are neither rewritten
        nor reported). With ``have`` non-empty, pass ``piece_length`` (the
        store's) so only the missing runs are requested with ``Range``;
        without it the whole content is fetched and held pieces are skipped.
        An origin answering ``200`` to a Range request is read from the start.
        ``on_piece_start(number, offset, length)``, when the content length is
        known, before a piece's first bytes are written: the :class:`Receiving`
        it may return follows the piece's bytes as they land (its digest is the
        caller's to fill in at ``on_piece``). ``digest``: the task's whole-content
        digest, fed each piece's bytes while they are in hand when the piece is
        the next it needs (in order from the start: the usual case).

        Raises SourceStatusError, SourceUnreachable, DownloadTimeout, SourceError,
        StorageError (see the module docstring), and whatever the callbacks raise.
        """
        run = _Fetch(
            self, url, headers, fd_factory, on_start, on_piece, have, piece_length, on_piece_start, digest
        )
        try:
            with self._translated(url):
                return await run.go()
        finally:
            run.close()

    async def stat(self, url: str, headers: dict[str, str]) -> OriginSize:
        """The content's length and headers, asked of the origin without its body.

        As Dragonfly's client asks (dragonfly-client-backend/src/http.rs:386-655 at
        ff17c0b): a ``GET`` with ``Range: bytes=0-0`` (a GET, so URLs signed for GET
        work), the length from ``Content-Range`` of a 206 or ``Content-Length`` of a
        200; a chunked answer with no length is asked again with ``HEAD``, a 416 (some
        origins for empty content) again without ``Range``. An origin that says no
        length raises :class:`SourceError`, like Dragonfly's ``InvalidContentLength``;
        error statuses and network errors raise as :meth:`fetch_into` does.
        """
        req = self._origin_headers(headers)
        session = self._get_session()
        with self._translated(url):
            async with session.get(url, headers={**req, "Range": "bytes=0-0"}) as resp:
                if resp.status == 206:
                    total = ranges.parse_content_range(resp.headers.get("Content-Range", ""), url)[2]
                    await resp.read()  # the one byte: the connection goes back to the pool
                    return _sized(url, resp, total)
                if resp.status != 416 and not (
                    "Transfer-Encoding" in resp.headers and "Content-Length" not in resp.headers
                ):
                    resp.close()  # a 200 carries the whole body: not read
                    return _sized(url, resp, resp.content_length)
            again = session.head if resp.status != 416 else session.get
            async with again(url, headers=req) as resp:
                resp.close()
                return _sized(url, resp, resp.content_length)

    @contextmanager
    def _translated(self, url: str) -> Iterator[None]:
        """Foreign errors of a request to the origin, as this module's errors."""
        try:
            yield
        except DamselflyError:
            raise
        except aiohttp.ConnectionTimeoutError as e:
            raise SourceUnreachable(f"timed out connecting to the origin for {url}: {e}") from e
        except TimeoutError as e:
            raise DownloadTimeout(
                f"the origin sent no byte for {self._config.read_timeout:g}s while downloading {url}"
            ) from e
        except (aiohttp.ClientConnectorError, aiohttp.ClientSSLError) as e:
            raise SourceUnreachable(f"cannot reach the origin for {url}: {e}") from e
        except aiohttp.ClientPayloadError as e:
            raise SourceError(f"the origin's body for {url} ended early or was malformed: {e}") from e
        except aiohttp.InvalidURL as e:
            raise SourceUnreachable(f"invalid URL {url!r}: {e}") from e
        except aiohttp.ClientError as e:
            raise SourceError(f"downloading {url} from the origin failed: {e}") from e

    def _origin_headers(self, headers: dict[str, str]) -> dict[str, str]:
        out = {k: v for k, v in headers.items() if k.lower() not in _DROP_REQUEST}
        if not any(k.lower() == "accept-encoding" for k in out):
            out["Accept-Encoding"] = "identity"
        return out

    @asynccontextmanager
    async def _get(
        self, url: str, headers: dict[str, str], byte_range: tuple[int, int | None] | None
    ) -> AsyncIterator[Any]:
        req = dict(headers)
        if byte_range is not None:
            start, end = byte_range
            req["Range"] = f"bytes={start}-{'' if end is None else end}"
        if self.fast_path and url.startswith("http://"):
            try:
                raw = await rawhttp.get(
                    url,
                    req,
                    connect_timeout=self._config.connect_timeout,
                    read_timeout=self._config.read_timeout,
                )
            except rawhttp.Unsupported:
                pass  # a redirect or a chunked body: aiohttp below handles it
            else:
                try:
                    _check_status(url, raw.status, raw.reason, raw.headers)
                    yield raw
                finally:
                    raw.close()
                return
        async with self._get_session().get(url, headers=req) as resp:
            _check_status(url, resp.status, resp.reason or "", resp.headers)
            yield resp


def _check_status(url: str, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
    if status >= 400:
        raise SourceStatusError(url, status, reason, headers)
    if status not in (200, 206):
        raise SourceError(f"the origin answered {status} {reason} for {url}")


def _sized(url: str, resp: aiohttp.ClientResponse, total: int | None) -> OriginSize:
    """The answer to :meth:`HTTPSource.stat`, from a response whose status is not checked yet."""
    _check_status(url, resp.status, resp.reason or "", resp.headers)
    if total is None:
        raise SourceError(
            f"the origin did not say the content length of {url}, which the scheduler needs before "
            "the download starts"
        )
    return OriginSize(total, _response_headers(resp, total))


def _response_headers(resp: aiohttp.ClientResponse, total: int | None) -> dict[str, str]:
    out = {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE}
    if total is not None:
        out["Content-Length"] = str(total)
    return out


_Carry = tuple[int, float]  # (crc32 so far, start time) of a piece cut between two bodies


class _Fetch:
    """The state of one ``fetch_into`` call: where the bytes go and which pieces are done."""

    def __init__(
        self,
        source: HTTPSource,
        url: str,
        headers: dict[str, str],
        fd_factory: Callable[[], int],
        on_start: OnStart,
        on_piece: OnPiece,
        have: Set[int],
        piece_length: int | None,
        on_piece_start: OnPieceStart | None = None,
        digest: InOrderDigest | None = None,
    ) -> None:
        self.source = source
        self.on_piece_start = on_piece_start
        self.landing: dict[int, Receiving] = {}  # pieces whose bytes are landing, by number
        self.url = url
        self.headers = source._origin_headers(headers)
        self.fd_factory = fd_factory
        self.on_start = on_start
        self.on_piece = on_piece
        self.skip: set[int] = set(have)
        self.hint = piece_length
        self.fd: int | None = None
        self.piece_length = 0
        self.total: int | None = None
        self.digest = digest

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    async def go(self) -> int:
        src = self.source
        streams = max(1, src._config.range_streams)
        # A fresh download that may be split asks for the first bytes only (a probe),
        # learns the length from Content-Range, then fetches the rest in parallel ranges.
        first, probing = ranges.first_request(self.skip, self.hint, streams)
        async with src._get(self.url, self.headers, first) as resp:
            start, stop, self.total, whole = ranges.first_answer(
                resp.status, resp.headers.get("Content-Range", ""), resp.content_length, first, self.url
            )
            self.piece_length = await self.on_start(self.total, _response_headers(resp, self.total))
            if self.piece_length <= 0:
                raise SourceError(f"on_start returned piece length {self.piece_length}")
            if not whole and not probing and self.piece_length != self.hint:
                raise SourceError("on_start returned a piece length other than the one given for resume")
            self.fd = self.fd_factory()
            written, carry = await self._stream(resp, start, stop)
            if whole:
                return self.total if self.total is not None else written
        if self.total is None:
            raise SourceError(f"the origin did not say the content length of {self.url} in its 206 answer")
        if probing:
            await self._rest_in_parallel(written, carry, streams)
            return self.total
        for a, b in ranges.missing_runs(self.skip, self.piece_length, self.total):
            async with src._get(self.url, self.headers, (a, b)) as resp:
                if resp.status == 200:
                    await self._stream(resp, 0, self.total)
                    break
                self._check_range(resp, a, b)
                await self._stream(resp, a, b + 1)
        return self.total

    def _check_range(self, resp: Any, a: int, b: int) -> None:
        assert self.total is not None
        got = ranges.parse_content_range(resp.headers.get("Content-Range", ""), self.url)
        ranges.check_range(got, (a, b), self.total, self.url)

    async def _rest_in_parallel(self, pos: int, carry: _Carry | None, streams: int) -> None:
        """Bytes [pos, total) in up to ``streams`` Range requests at once (ranges.parallel_spans);
        the first continues the piece the probe left unfinished (``carry``)."""
        assert self.total is not None

        async def one(a: int, b: int, resume: _Carry | None) -> None:
            async with self.source._get(self.url, self.headers, (a, b - 1)) as resp:
                if resp.status != 206:
                    raise SourceError(
                        f"the origin answered {resp.status} to a Range request after a 206, for {self.url}"
                    )
                self._check_range(resp, a, b - 1)
                await self._stream(resp, a, b, resume)

        spans = ranges.parallel_spans(pos, self.total, self.piece_length, streams)
        jobs = [asyncio.ensure_future(one(a, b, carry if i == 0 else None)) for i, (a, b) in enumerate(spans)]
        try:
            await asyncio.gather(*jobs)
        except BaseException:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            raise

    async def _stream(
        self, resp: Any, start: int, end: int | None, carry: _Carry | None = None
    ) -> tuple[int, _Carry | None]:
        """Write the body, which holds bytes [start, end) of the content, piece by piece.

        ``end`` None: unknown (chunked); the content ends where the body does.
        ``carry``: the crc32 and start time of the piece ``start`` falls in, when an
        earlier body wrote its first bytes. Returns the offset reached, and the carry
        of a piece left unfinished at ``end`` (else None).
        """
        fd = self.fd
        assert fd is not None
        pl = self.piece_length
        clock = self.source._clock
        total = self.total
        limiter = self.source.limiter
        pos = start
        number = pos // pl
        piece_start = number * pl
        crc, began = carry if carry is not None else (0, clock())
        feed: Feed | None = None
        try:
            async for data in resp.content.iter_any():
                view = memoryview(data)
                while view:
                    piece_end = piece_start + pl if total is None else min(piece_start + pl, total)
                    if (end is not None and pos >= end) or pos >= piece_end:
                        raise SourceError(f"the origin sent more bytes than announced for {self.url}")
                    take = min(len(view), piece_end - pos)
                    chunk = view[:take]
                    if limiter is not None:
                        await limiter.consume(take)
                    if number not in self.skip:
                        crc = crc32(chunk, crc)
                        if pos == piece_start:
                            if total is not None:  # a chunked body's last piece ends where it ends
                                reserve(fd, piece_start, piece_end - piece_start)
                            if self.digest is not None:
                                feed = self.digest.claim(pos)
                        if feed is not None:
                            feed.update(chunk)
                        _pwrite_all(fd, chunk, pos)
                        if total is not None and self.on_piece_start is not None:
                            self._landed(number, piece_start, piece_end, pos + take)
                    pos += take
                    view = view[take:]
                    if pos == piece_end:
                        if feed is not None:
                            feed.commit()
                            feed = None
                        self._piece_done(number, piece_start, pos - piece_start, crc, began)
                        number += 1
                        piece_start = pos
                        crc = 0
                        began = clock()
            if end is not None and pos < end:
                raise SourceError(f"the origin's body for {self.url} ended at byte {pos} of {end}")
            if total is None and pos > piece_start:
                if feed is not None:
                    feed.commit()
                    feed = None
                self._piece_done(number, piece_start, pos - piece_start, crc, began)
        finally:
            if feed is not None:
                feed.abandon()  # a piece cut off mid-way: read back from the file once whole
        return pos, ((crc, began) if ranges.cut_mid_piece(pos, pl, total) else None)

    def _landed(self, number: int, piece_start: int, piece_end: int, upto: int) -> None:
        entry = self.landing.get(number)
        if entry is None:
            assert self.on_piece_start is not None
            entry = self.on_piece_start(number, piece_start, piece_end - piece_start)
            if entry is None:
                return
            self.landing[number] = entry
        entry.advance(upto - piece_start)

    def _piece_done(self, number: int, offset: int, length: int, crc: int, began: float) -> None:
        if number in self.skip:
            return
        self.skip.add(number)
        self.landing.pop(number, None)
        self.on_piece(
            PieceInfo(
                number=number,
                offset=offset,
                length=length,
                digest=f"crc32:{crc}",
                traffic_type=TrafficType.BACK_TO_SOURCE,
                cost_s=self.source._clock() - began,
            )
        )


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    try:
        pwrite_all(fd, data, offset)
    except OSError as e:
        raise StorageError(e.errno, f"cannot write downloaded content: {e.strerror}") from e
