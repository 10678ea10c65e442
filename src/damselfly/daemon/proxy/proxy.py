"""The registry mirror and HTTP(S) proxy listener of a daemon.

One TCP listener (loopback by default) takes three kinds of requests:

* **mirror** (``GET /v2/...`` with no absolute URI): the registry comes from
  ``X-Dragonfly-Registry``, containerd's ``?ns=``, the mirror path, or the configured
  default (:mod:`.mirror`); GET and HEAD only (405 otherwise), and a registry outside
  ``proxy.registryMirror.allowedRegistries`` is refused (403) before any connection;
  the ``/v2/`` probe and ``/damselfly/token`` are answered by :mod:`.token`;
* **proxy** (absolute URI, ``GET http://host/...``): only to hosts that are a
  registry we mirror, an intercepted host, or on the allow-list: never an open proxy;
* **CONNECT host:port**: TLS-intercepted with a leaf certificate from our CA
  when the host matches ``proxy.hijackHTTPS.hosts`` (the requests inside are
  then handled like proxy requests to ``https://host``), tunnelled untouched
  when the host is allowed, refused otherwise.

The first request head on a connection is sniffed (:mod:`.connect`): a CONNECT
is handled on the raw transport, anything else hands the connection to
aiohttp's HTTP protocol. Requests matching the rules (:mod:`.rules`) go through the swarm and
are streamed from the store (:mod:`.stream`); the rest pass straight through
(:mod:`.upstream`). Dragonfly's ``X-Dragonfly-*`` request headers shape the
download as in Dragonfly (:mod:`.headers`), and the answers carry its response
headers. Credentials (``Authorization``...) go only to the
registry, never into logs. Owner of the listener, the aiohttp server, the
upstream session and the CONNECT tasks: :class:`ProxyServer` (:meth:`close`).

Long because: the three kinds of request share one listener, one set of routing rules
and one lifetime, and each kind's entry point stays beside the others'.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from ... import ids
from ...config import ProxyConfig, SourceConfig
from ...domain import DownloadSpec
from ...errors import DamselflyError, DigestMismatch, InvalidArgument, SourceStatusError
from ..download.tasks import TaskManager, task_id_for
from ..store.piece_store import PieceStore
from ..threads import cancel_and_wait
from . import headers, mirror, token
from .ca import CertificateAuthority, LazyCA
from .connect import ConnectHandler, Sniffer
from .metrics import ProxyMetrics
from .rules import Route, compile_rules, decide
from .stream import (
    RangeNotSatisfiable,
    ResponseSink,
    Span,
    forget_bad_task,
    parse_range,
    send_span,
    wait_for_length,
    wait_until_held,
)
from .upstream import TLSPolicy, TLSRule, Upstream, forward_headers

log = logging.getLogger(__name__)

# After a blob failed its digest check, fetch it from the registry for this long
# (a parent in the swarm may hold the same wrong bytes).
DISTRUST_S = 600.0
DISTRUST_MAX = 1024
TASK_ID_HEADER = headers.TASK_ID
READ_AHEAD_MEMORY = 4096  # blobs whose followers are remembered (least recently seen go first)
# Statuses a client must see as the registry sent them (the 401 carries the
# WWW-Authenticate challenge that starts the token dance).
_PASS_STATUSES = frozenset({400, 401, 403, 404, 405, 407, 416, 429})


class ProxyServer:
    """The proxy/mirror of one daemon; downloads go through its :class:`TaskManager`."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        manager: TaskManager,
        store: PieceStore,
        data_dir: Path,
        source: SourceConfig | None = None,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or ProxyMetrics()
        self.manager = manager
        self.store = store
        self.rules = compile_rules(config.rules)
        self.default_registry = mirror.normalize_registry(config.registry_mirror.url)
        source = source or SourceConfig()
        self.hijack = [re.compile(h.regx) for h in config.hijack_https.hosts]
        self.allow = [re.compile(h) for h in config.allow_hosts]
        self.allowed_registries = mirror.compile_allowed(config.registry_mirror.allowed_registries)
        mirror_host = urlsplit(self.default_registry).netloc
        tls_rules = [
            TLSRule(re.compile(re.escape(mirror_host)), config.registry_mirror.insecure,
                    list(config.registry_mirror.certs)),
            *(TLSRule(re.compile(h.regx), h.insecure, list(h.certs)) for h in config.hijack_https.hosts),
        ]  # fmt: skip
        self.upstream = Upstream(
            TLSPolicy(tls_rules, [source.ca_cert]),
            connect_timeout=source.connect_timeout,
            read_timeout=source.read_timeout,
        )
        hijack = config.hijack_https
        self._ca = LazyCA(data_dir, hijack.cert, hijack.key, [h.regx for h in hijack.hosts])
        if hijack.hosts:
            self._ca.get()  # now, so a bad CA file is an error at start
        self.tokens = token.TokenService(self.upstream, self.default_registry, self.allowed_registries)
        self._web: web.Server | None = None
        self._server: asyncio.Server | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        self.tunnel_hosts: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._distrust: dict[str, float] = {}
        self._first_byte: dict[int, float] = {}  # request id -> when its headers went out (for the log)
        # blob digest -> (its URL's start and end, the blobs its manifest lists after it)
        self._next_blobs: OrderedDict[str, tuple[str, str, tuple[str, ...]]] = OrderedDict()
        self.read_ahead_started = 0
        self.connect = ConnectHandler(self)
        self.port = 0

    # ----------------------------------------------------------------- life

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        # No aiohttp access log: request lines of proxied URLs may carry signed
        # query strings; blobs get one line of our own (digest, status, bytes, time).
        # A kept-alive connection's next head: the keep-alive timeout (its first: the Sniffer's).
        kw: dict[str, Any] = {"access_log": None, "keepalive_timeout": self.config.server.head_timeout}
        self._web = web.Server(self._handle, handler_cancellation=True, **kw)
        cfg = self.config.server
        self._server = await loop.create_server(lambda: Sniffer(self), cfg.ip, cfg.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await cancel_and_wait(list(self._jobs))
        if self._web is not None:
            await self._web.shutdown(2.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        await self.upstream.close()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        job = asyncio.get_running_loop().create_task(coro)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    def http_protocol(self) -> asyncio.Protocol:
        assert self._web is not None
        proto: asyncio.Protocol = self._web()
        return proto

    @property
    def ca(self) -> CertificateAuthority:
        return self._ca.get()

    @property
    def ca_cert_path(self) -> Path:
        return self._ca.get().cert_path

    # ------------------------------------------------------------ policy

    def _registry_hosts(self) -> set[str]:
        return {urlsplit(self.default_registry).netloc}

    def is_hijacked(self, host: str) -> bool:
        return any(p.fullmatch(host) for p in self.hijack)

    def may_reach(self, host: str, port: int) -> bool:
        """Whether absolute-URI/CONNECT requests may go to ``host:port`` (no open proxy)."""
        names = {host, f"{host}:{port}"}
        if names & self._registry_hosts():
            return True
        return any(p.fullmatch(n) for p in (*self.hijack, *self.allow) for n in names)

    # ------------------------------------------------------------ requests

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            url = self._target(request)
        except InvalidArgument as e:
            self.metrics.request("refused", 400)
            return _error(400, str(e), headers.ERROR_PROXY)
        except PermissionError as e:
            self.metrics.request("refused", 403)
            return _error(403, str(e), headers.ERROR_PROXY)
        except mirror.MethodNotAllowed as e:
            self.metrics.request("refused", 405)
            return _error(405, str(e), headers.ERROR_PROXY, {"Allow": ", ".join(mirror.MIRROR_METHODS)})
        if url in (token.PROBE, token.TOKEN_PATH):
            return await self.tokens.answer(url, request)
        if url is None:
            self.metrics.request("refused", 404)
            return _error(404, "not a registry request: the mirror serves /v2/...", headers.ERROR_PROXY)
        asked = headers.read(request.headers)
        decision = decide(request.method, url, self.rules, use_p2p=asked.use_p2p)
        log.debug("%s %s -> %s", request.method, urlsplit(decision.url).path, decision.route.value)
        if decision.route is Route.P2P:
            resp = await self._p2p(request, decision.url, asked)
        elif self.config.read_ahead and request.method == "GET" and "/manifests/" in decision.url:
            body = bytearray()
            resp = await self._forward(request, decision.url, body)
            if resp.status == 200 and body:
                self._learn_blob_order(decision.url, resp.headers.get("Content-Type", ""), bytes(body))
        else:
            resp = await self._forward(request, decision.url)
        self.metrics.request(decision.route.value, resp.status)
        return resp

    def _target(self, request: web.BaseRequest) -> str | None:
        """The upstream URL of ``request``, None when it is not one we serve."""
        # The request-target as sent: absolute for proxy-form requests. aiohttp
        # deprecated the public alias of this field, not the field.
        target = request._message.url
        if target.is_absolute():  # proxy form
            host, port = target.host or "", target.port or 80
            if target.scheme not in ("http", "https") or not self.may_reach(host, port):
                raise PermissionError(f"this proxy does not forward to {host}:{port}")
            return str(target)
        tunnel = self.tunnel_hosts.get(request.transport) if request.transport is not None else None
        if tunnel is not None:  # inside an intercepted CONNECT
            return f"https://{tunnel}{request.rel_url.raw_path_qs}"
        rel = request.rel_url
        if request.method not in mirror.MIRROR_METHODS:
            raise mirror.MethodNotAllowed(f"the registry mirror serves GET and HEAD, not {request.method}")
        if rel.raw_path == token.TOKEN_PATH or not rel.raw_path.startswith("/v2"):
            return token.TOKEN_PATH if rel.raw_path == token.TOKEN_PATH else None
        routed = mirror.route(
            request.headers, rel.raw_path, rel.raw_query_string, self.default_registry,
            dynamic=self.config.registry_mirror.dynamic,
        )  # fmt: skip
        # Decided before any connection: a registry not allowed is never contacted.
        if not mirror.registry_allowed(routed.base, self.default_registry, self.allowed_registries):
            raise PermissionError(f"this mirror does not serve {routed.base} (see allowedRegistries)")
        if routed.named_by == "default" and routed.path in ("/v2", "/v2/"):
            return token.PROBE  # answered from the default registry's challenge (token.py)
        return mirror.upstream_url(routed.base, routed.path, rel.raw_query_string)

    async def _forward(
        self,
        request: web.BaseRequest,
        url: str,
        keep: bytearray | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        try:
            return await self.upstream.forward(request, url, keep, mirror.MANIFEST_MAX, extra_headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            reason = f"the registry at {_origin(url)} failed: {type(e).__name__}: {e}"
            return _error(502, reason, headers.ERROR_BACKEND)

    def _spec(self, request: web.BaseRequest, url: str, asked: headers.RequestHeaders) -> DownloadSpec:
        """The download a P2P request asks for, as Dragonfly's proxy builds it (mod.rs:1265-1336).

        A registry blob's digest (from the URL) is always checked on the content. With
        blob task IDs (``proxy.blobTaskIdByDigest``, or the request's header) the task is
        named by that digest: a URL Dragonfly takes for a blob but the mirror does not
        parse (a ``/v2/`` further down the path) is checked against the digest naming it too.
        """
        forwarded: dict[str, str] = {}
        for k, v in forward_headers(request.headers.items()).items():
            if k.lower() not in ("range", "if-range"):
                forwarded.setdefault(k, v)
        by_digest = asked.enable_task_id_based_blob_digest
        if by_digest is None:
            by_digest = self.config.blob_task_id_by_digest
        digest = mirror.blob_digest(urlsplit(url).path) or ""
        if not digest and by_digest and not asked.content_for_calculating_task_id:
            encoded = ids.blob_digest(url)
            digest = f"sha256:{encoded}" if encoded else ""
        return DownloadSpec(
            url=url,
            tag=asked.tag,
            application=asked.application,
            priority=asked.priority,
            filtered_query_params=asked.filtered_query_params,
            request_header=forwarded,
            piece_length=asked.piece_length,
            content_for_calculating_task_id=asked.content_for_calculating_task_id,
            enable_task_id_based_blob_digest=by_digest,
            digest=digest,
            prefetch=asked.prefetch_for("Range" in request.headers, self.config.prefetch),
            need_back_to_source=self._distrusted(digest),
            remote_ip=request.remote or "",
        )

    def _learn_blob_order(self, url: str, content_type: str, body: bytes) -> None:
        """Remember, for each blob of an image manifest a client fetched, the blobs after it."""
        found = mirror.blob_order(url, content_type, body)
        if found is None:
            return
        prefix, suffix, order = found
        ahead = self.config.read_ahead
        for i, digest in enumerate(order):
            self._next_blobs[digest] = (prefix, suffix, tuple(order[i + 1 : i + 1 + ahead]))
            self._next_blobs.move_to_end(digest)
        while len(self._next_blobs) > READ_AHEAD_MEMORY:
            self._next_blobs.popitem(last=False)

    def _read_ahead(
        self,
        request: web.BaseRequest,
        asked: headers.RequestHeaders,
        digest: str,
        task_id: str,
        job: asyncio.Task[None],
    ) -> None:
        """A client asked for ``digest``: the blobs its manifest lists next start in the background
        (a client that pulls one layer at a time then finds the next one here already) once this
        daemon holds every piece of the one asked for, so the two fetches do not split the machine
        while the client waits for the first (A/B, 12 pulls each way: 1.27-1.36 -> 1.23-1.27 s)."""
        entry = self._next_blobs.get(digest)
        if entry is None:
            self.metrics.read_ahead.labels("no_order").inc()
            return
        prefix, suffix, following = entry
        # The client's own headers, taken now: the request may be gone by then. A content
        # named for the task ID is this blob's, not its neighbours'.
        ahead = dataclasses.replace(asked, content_for_calculating_task_id="")
        specs = [self._spec(request, f"{prefix}{nxt}{suffix}", ahead) for nxt in following]

        async def start_when_held() -> None:
            with contextlib.suppress(DamselflyError):
                await wait_until_held(self.store, task_id, job)
            if job.done() and (job.cancelled() or job.exception() is not None):
                self.metrics.read_ahead.labels("asked_blob_failed").inc()
                return  # the asked blob failed: its neighbours would most likely fail alike
            for spec in specs:
                nxt_id = task_id_for(spec)
                meta = self.store.get(nxt_id)
                if self.manager.is_running(nxt_id) or (meta is not None and meta.state == "succeeded"):
                    continue
                self.manager.ensure(spec)
                self.read_ahead_started += 1
                self.metrics.read_ahead.labels("started").inc()
                log.debug("reading ahead: blob %s after %s", spec.digest, digest)

        self.spawn(start_when_held())

    def _distrusted(self, digest: str) -> bool:
        if not digest:
            return False
        since = self._distrust.get(digest)
        if since is None:
            return False
        if time.monotonic() - since > DISTRUST_S:
            del self._distrust[digest]
            return False
        return True

    def _distrust_blob(self, digest: str) -> None:
        if len(self._distrust) >= DISTRUST_MAX:
            self._distrust.pop(next(iter(self._distrust)))
        self._distrust[digest] = time.monotonic()

    async def _p2p(
        self, request: web.BaseRequest, url: str, asked: headers.RequestHeaders
    ) -> web.StreamResponse:
        began = time.monotonic()
        try:
            asked.check()
        except InvalidArgument as e:
            return _error(400, str(e), headers.ERROR_PROXY)
        if asked.ignored:
            log.debug("ignored %s: never honoured for proxy clients", ", ".join(asked.ignored))
        spec = self._spec(request, url, asked)
        try:
            resp = await self._p2p_serve(request, spec, asked)
        finally:
            first = self._first_byte.pop(id(request), began) - began
        what = spec.digest or urlsplit(url).path
        took = time.monotonic() - began
        size = resp.content_length or resp.body_length
        log.info("P2P %s %s -> %d, %d bytes in %.2fs (headers after %.2fs)",
                 request.method, what, resp.status, size, took, first)  # fmt: skip
        return resp

    async def _p2p_serve(
        self, request: web.BaseRequest, spec: DownloadSpec, asked: headers.RequestHeaders
    ) -> web.StreamResponse:
        url, digest = spec.url, spec.digest
        held = self.store.get(task_id_for(spec))
        finished = held is not None and held.state == "succeeded" and held.is_complete
        task_id, job = self.manager.ensure(spec)
        if digest and self.config.read_ahead:
            self._read_ahead(request, asked, digest, task_id, job)
        try:
            meta = await wait_for_length(self.store, task_id, job)
        except SourceStatusError as e:
            self._forget_failed(task_id)
            if e.status in _PASS_STATUSES:
                # Let the registry tell the client itself (its 401 challenge, its 404 body).
                return await self._forward(
                    request, url, extra_headers={headers.ERROR_TYPE: headers.ERROR_BACKEND}
                )
            reason = f"the registry answered {e.status} {e.reason} for this blob".rstrip()
            return _error(502, reason, headers.ERROR_BACKEND)
        except DamselflyError as e:
            self._forget_failed(task_id)
            return _error(502, f"could not fetch the blob: {e}", headers.ERROR_DFDAEMON)
        assert meta.content_length is not None and meta.piece_length is not None
        total = meta.content_length
        span: Span | None = None
        if "Range" in request.headers:
            try:
                span = parse_range(request.headers["Range"], total)
            except RangeNotSatisfiable as e:
                return _error(416, str(e), headers.ERROR_DFDAEMON, {"Content-Range": f"bytes */{total}"})
        resp = web.StreamResponse(status=200 if span is None else 206)
        resp.headers["Content-Type"] = _content_type(meta.response_header) if not digest else _OCTETS
        resp.headers["Accept-Ranges"] = "bytes"
        # As Dragonfly's proxy answers (mod.rs:1404-1427).
        resp.headers[TASK_ID_HEADER] = task_id
        resp.headers[headers.SERVER_IP] = self.manager.deps.host_ip
        if finished:
            resp.headers[headers.TASK_DOWNLOAD_FINISHED] = "true"
        if digest:
            resp.headers["Docker-Content-Digest"] = digest
            resp.headers["ETag"] = f'"{digest}"'
        shared = None
        if span is None:
            span = Span(0, total - 1, total)
            # A blob this daemon already checked whole is served as stored; a
            # running download shares its digester, so the blob is hashed once.
            check = "" if self.manager.verified.get(task_id) == digest else digest
            conductor = self.manager.running().get(task_id)
            digester = conductor.digester if conductor is not None else None
            if check and digester is not None and str(digester.expected) == digest:
                shared = digester
        else:
            resp.headers["Content-Range"] = f"bytes {span.start}-{span.end}/{total}"
            check = ""
        resp.content_length = span.length
        await resp.prepare(request)
        self._first_byte[id(request)] = time.monotonic()
        if span.length <= 0:
            await resp.write_eof()
            return resp
        try:
            sink = ResponseSink(resp)
            pl = meta.piece_length
            await send_span(self.store, task_id, job, span, pl, sink, digest=check, shared=shared)
        except DigestMismatch as e:
            log.warning("blob %s from %s: %s; aborting the response", digest, _origin(url), e)
            # Forget the bytes before the client learns of the failure, so its retry
            # cannot find them; the retry goes to the registry (distrusted digest).
            self._distrust_blob(digest)
            await forget_bad_task(self.store, task_id, job)
            _abort(request)
            return resp
        except (DamselflyError, OSError) as e:
            log.warning("serving blob %s failed mid-way: %s", digest or urlsplit(url).path, e)
            _abort(request)
            self._forget_failed(task_id)
            return resp
        await resp.write_eof()
        self.metrics.p2p_bytes.inc(span.length)
        with contextlib.suppress(DamselflyError):
            self.store.touch(task_id)
        return resp

    def _forget_failed(self, task_id: str) -> None:
        """A failed download leaves nothing behind that a later request could trust."""
        meta = self.store.get(task_id)
        if meta is not None and meta.state == "failed" and not self.manager.is_running(task_id):
            with contextlib.suppress(DamselflyError, OSError):
                self.store.delete_task(task_id)


_OCTETS = "application/octet-stream"


def _content_type(origin_headers: dict[str, str]) -> str:
    """The origin's Content-Type for content it named itself (not a blob), else bytes."""
    for name, value in origin_headers.items():
        if name.lower() == "content-type" and value:
            return value
    return _OCTETS


def _error(status: int, reason: str, kind: str, extra: dict[str, str] | None = None) -> web.Response:
    """An error answer; ``kind`` is who failed, in Dragonfly's ``X-Dragonfly-Error-Type``."""
    return web.Response(
        status=status, text=reason + "\n", headers={headers.ERROR_TYPE: kind, **(extra or {})}
    )


def _abort(request: web.BaseRequest) -> None:
    if request.transport is not None:
        request.transport.abort()


def _origin(url: str) -> str:
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}"
