"""Requests passed straight through to a registry or origin, streamed both ways.

Everything the swarm does not carry goes here: ``/v2/`` probes, manifests,
token requests, HEADs, uploads. Headers are forwarded one by one (repeated
``Accept`` headers stay repeated: distribution answers 404 for OCI manifests
when they are collapsed), hop-by-hop headers dropped, redirects returned to
the client as the registry sent them, bodies never decompressed.

TLS to the upstream is verified by default; per-registry CA bundles and
``insecure`` come from the proxy config (see :class:`TLSPolicy`).
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from ...errors import ConfigError
from .mirror import REGISTRY_HEADER

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
    )
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", REGISTRY_HEADER.lower()}


# The "tokens" the mirror's token service hands out for registries that want no token
# (:mod:`.token`); turned back into what the registry wants here, never sent as they are.
ANONYMOUS = "damselfly-anonymous"
BASIC_PREFIX = "damselfly-basic."


def upstream_authorization(value: str) -> str | None:
    """What goes to the registry for a client's ``Authorization`` (None: nothing)."""
    if value == f"Bearer {ANONYMOUS}":
        return None
    if value.startswith(f"Bearer {BASIC_PREFIX}"):
        return "Basic " + value.removeprefix(f"Bearer {BASIC_PREFIX}")
    return value


def forward_headers(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """Request headers for the upstream: every one kept in order (repeats too), minus hop-by-hop."""
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers:
        if k.lower() not in _NOT_FORWARDED and not k.lower().startswith("x-dragonfly-"):
            if k.lower() == "authorization":
                v = upstream_authorization(v) or ""
                if not v:
                    continue
            out.add(k, v)
    return out


def response_headers(headers: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """Response headers for the client: the upstream's, minus hop-by-hop."""
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers:
        if k.lower() not in HOP_BY_HOP:
            out.add(k, v)
    return out


@dataclass
class TLSRule:
    """Upstream TLS options for hosts matching ``pattern`` (host or host:port)."""

    pattern: re.Pattern[str]
    insecure: bool = False
    certs: list[str] = field(default_factory=list)


class TLSPolicy:
    """Which SSL context to use for an upstream host: the first matching rule's, else verify.

    ``extra_cas``: CA bundles trusted for every host (``source.caCert``), so the
    swarm's fetches and the pass-through trust the same registries.
    """

    def __init__(self, rules: list[TLSRule], extra_cas: list[str] | None = None) -> None:
        self.rules = rules
        self.extra_cas = [c for c in (extra_cas or []) if c]
        self._contexts: dict[tuple[str, ...], ssl.SSLContext] = {}
        self._default = self._context(())  # fail early on a bad CA path

    def _context(self, certs: tuple[str, ...]) -> ssl.SSLContext:
        key = (*certs, *self.extra_cas)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = ssl.create_default_context()
            for path in key:
                try:
                    ctx.load_verify_locations(cafile=path)
                except (OSError, ssl.SSLError) as e:
                    raise ConfigError(f"cannot load CA bundle {path}: {e}") from e
            self._contexts[key] = ctx
        return ctx

    def for_url(self, url: str) -> ssl.SSLContext | bool:
        netloc = urlsplit(url).netloc
        host = urlsplit(url).hostname or ""
        for rule in self.rules:
            if rule.pattern.fullmatch(netloc) or rule.pattern.fullmatch(host):
                if rule.insecure:
                    return False
                return self._context(tuple(rule.certs))
        return self._default


class Upstream:
    """Owns the client session used for pass-through requests; :meth:`close` ends it."""

    def __init__(self, tls: TLSPolicy, *, connect_timeout: float = 10.0, read_timeout: float = 60.0) -> None:
        self.tls = tls
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def forward(
        self,
        request: web.BaseRequest,
        url: str,
        keep: bytearray | None = None,
        keep_max: int = 0,
        extra_headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        """Send ``request`` to ``url`` and stream the answer back as it comes.

        Raises aiohttp.ClientError (and TimeoutError) before anything was sent
        to the client when the upstream cannot be reached; the caller answers 502.
        ``keep``: a copy of the body goes there too, unless it is longer than
        ``keep_max`` (then ``keep`` ends up empty). ``extra_headers`` are added
        to the answer (the proxy's own, such as ``X-Dragonfly-Error-Type``).
        """
        headers = forward_headers(request.headers.items())
        data = request.content.iter_chunked(256 * 1024) if request.body_exists else None
        async with self.session().request(
            request.method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            ssl=self.tls.for_url(url),
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        ) as up:
            resp = web.StreamResponse(status=up.status, reason=up.reason)
            resp.headers.extend(response_headers(up.headers.items()))
            if extra_headers:
                resp.headers.update(extra_headers)
            if request.method == "HEAD" or up.status in (204, 304):
                await resp.prepare(request)
                await resp.write_eof()
                return resp
            if "Content-Length" not in resp.headers:
                resp.enable_chunked_encoding()
            await resp.prepare(request)
            try:
                async for chunk in up.content.iter_any():
                    if keep is not None:
                        if len(keep) + len(chunk) <= keep_max:
                            keep += chunk
                        else:
                            keep.clear()
                            keep = None
                    await resp.write(chunk)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                # Too late for a 502: cut the connection so the client sees a short body.
                log.info("upstream body for %s broke off: %s", urlsplit(url).path, type(e).__name__)
                if request.transport is not None:
                    request.transport.abort()
                return resp
            await resp.write_eof()
            return resp
