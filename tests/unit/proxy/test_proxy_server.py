"""The proxy server in-process on real loopback sockets: mirror, Range, proxy form, CONNECT.

The daemon behind it has no scheduler (every P2P blob comes from the origin),
so these tests exercise the proxy's own behaviour: what goes through the
store, what passes through, what is refused, and what a TLS client sees.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from damselfly.config import ProxyConfig, SourceConfig
from damselfly.daemon.download.conductor import ConductorDeps
from damselfly.daemon.download.tasks import TaskManager
from damselfly.daemon.origin.source import HTTPSource
from damselfly.daemon.proxy import ProxyServer
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer.peer_rpc import PeerRPC
from damselfly.testbed.registry import make_tls
from helpers.wait import until

SECRET = "Bearer secret-token-123"


def blob_task_id(digest: str) -> str:
    """A blob's task ID with ``proxy.blobTaskIdByDigest`` on (the default): its digest's hex."""
    return digest.removeprefix("sha256:")


@dataclass
class Origin:
    """A tiny registry: blobs by digest, a manifest endpoint that echoes Accept headers."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    gets: dict[str, int] = field(default_factory=dict)
    auth_seen: list[str] = field(default_factory=list)
    port: int = 0
    runner: web.AppRunner | None = None

    def add(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    async def blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        self.auth_seen.append(request.headers.get("Authorization", ""))
        if digest not in self.blobs:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        if request.method == "GET":
            self.gets[digest] = self.gets.get(digest, 0) + 1
        data = self.blobs[digest]
        if digest in self.corrupt:
            data = bytes([data[0] ^ 1]) + data[1:]
        return web.Response(body=data, headers={"Docker-Content-Digest": digest})

    async def manifest(self, request: web.Request) -> web.Response:
        return web.json_response({"accept": request.headers.getall("Accept", [])})

    async def start(self, ssl_ctx: ssl.SSLContext | None = None) -> None:
        app = web.Application()
        app.router.add_route("*", "/v2/{name:.+}/blobs/{digest}", self.blob)
        app.router.add_get("/v2/{name:.+}/manifests/{ref}", self.manifest)
        self.runner = web.AppRunner(app, access_log=None)  # the "registry" logs nothing here
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
        await site.start()
        self.port = self.runner.addresses[0][1]


@dataclass
class Env:
    origin: Origin
    tls_origin: Origin
    proxy: ProxyServer
    store: PieceStore
    ca_pem: Path  # the test registry CA (origin certificates)

    @property
    def mirror(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    ca, crt, key = make_tls(tmp_path / "tls")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(crt, key)
    origin, tls_origin = Origin(), Origin()
    await origin.start()
    await tls_origin.start(server_ctx)
    source_cfg = SourceConfig(ca_cert=str(ca))
    store = PieceStore(tmp_path / "data")
    source = HTTPSource(source_cfg)
    peer_rpc = PeerRPC()
    deps = ConductorDeps(
        store=store, pool=None, source=source, peer_rpc=peer_rpc, scheduler=None,
        host_id="127.0.0.1-t", host_ip="127.0.0.1", hostname="t", is_seed=False,
    )  # fmt: skip
    manager = TaskManager(deps)
    cfg = ProxyConfig.model_validate(
        {
            "server": {"ip": "127.0.0.1", "port": 0},
            "registryMirror": {"url": f"http://127.0.0.1:{origin.port}"},
            "hijackHTTPS": {"hosts": [{"regx": "localhost"}]},
            "allowHosts": [rf"127\.0\.0\.1:{tls_origin.port}"],
        }
    )
    proxy = ProxyServer(cfg, manager=manager, store=store, data_dir=tmp_path / "data", source=source_cfg)
    await proxy.start()
    yield Env(origin, tls_origin, proxy, store, ca)
    await proxy.close()
    await manager.close()
    await source.close()
    await peer_rpc.close()
    for o in (origin, tls_origin):
        assert o.runner is not None
        await o.runner.cleanup()
    store.close()


async def test_blob_through_the_store_once_with_task_id_by_digest(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    data = os.urandom(5 * 1024 * 1024 + 123)
    digest = env.origin.add(data)
    async with aiohttp.ClientSession() as s:
        for _ in range(2):
            url = f"{env.mirror}/v2/team/app/blobs/{digest}?X-Amz-Signature=sig-topsecret"
            async with s.get(url, headers={"Authorization": SECRET}) as r:
                assert r.status == 200
                assert r.headers["Docker-Content-Digest"] == digest
                assert r.headers["X-Dragonfly-Task-ID"] == blob_task_id(digest)
                assert await r.read() == data
    assert env.origin.gets[digest] == 1  # the second GET came from the store
    assert env.proxy.metrics.p2p_bytes._value.get() == 2 * len(data)
    assert env.proxy.metrics.request_total.labels("p2p", "200")._value.get() == 2
    assert env.origin.auth_seen == [SECRET]  # the credentials reached the registry...
    assert "secret-token" not in caplog.text  # ...and never the logs
    assert "sig-topsecret" not in caplog.text  # nor do signed query strings


async def test_range_is_206_from_the_pieces(env: Env) -> None:
    data = os.urandom(3 * 1024 * 1024)
    digest = env.origin.add(data)
    async with aiohttp.ClientSession() as s:
        url = f"{env.mirror}/v2/team/app/blobs/{digest}"
        async with s.get(url, headers={"Range": "bytes=1000-2099999"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes 1000-2099999/{len(data)}"
            assert await r.read() == data[1000:2100000]
        async with s.get(url, headers={"Range": f"bytes={len(data)}-"}) as r:
            assert r.status == 416


async def test_manifest_passes_through_with_repeated_accept(env: Env) -> None:
    accepts = [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
    async with aiohttp.ClientSession() as s:
        headers = [("Accept", a) for a in accepts]
        async with s.get(f"{env.mirror}/v2/team/app/manifests/v1", headers=headers) as r:
            assert r.status == 200
            assert (await r.json())["accept"] == accepts


async def test_missing_blob_is_404_and_leaves_nothing(env: Env) -> None:
    digest = "sha256:" + "1" * 64
    async with aiohttp.ClientSession() as s, s.get(f"{env.mirror}/v2/team/app/blobs/{digest}") as r:
        assert r.status == 404
        assert "BLOB_UNKNOWN" in await r.text()
    assert env.store.get(blob_task_id(digest)) is None


async def test_wrong_bytes_abort_the_response_and_are_not_kept(env: Env) -> None:
    data = os.urandom(2 * 1024 * 1024)
    digest = env.origin.add(data)
    env.origin.corrupt.add(digest)
    async with aiohttp.ClientSession() as s:
        # Either the download failed its digest before the answer started (a 502),
        # or the answer is cut before its last byte; never a whole 200 of wrong bytes.
        try:
            async with s.get(f"{env.mirror}/v2/team/app/blobs/{digest}") as r:
                await r.read()
            assert r.status == 502, r.status
        except aiohttp.ClientPayloadError:
            pass
    await until(lambda: env.store.get(blob_task_id(digest)) is None, "the wrong bytes were dropped")
    env.origin.corrupt.discard(digest)
    async with aiohttp.ClientSession() as s, s.get(f"{env.mirror}/v2/team/app/blobs/{digest}") as r:
        assert await r.read() == data


async def test_not_an_open_proxy(env: Env) -> None:
    async with aiohttp.ClientSession() as s:
        # Proxy form to a host that is neither the registry nor allowed.
        async with s.get("http://203.0.113.9/x", proxy=env.mirror) as r:
            assert r.status == 403
        # Proxy form to the registry is fine.
        digest = env.origin.add(b"hello world" * 100)
        async with s.get(f"http://127.0.0.1:{env.origin.port}/v2/a/blobs/{digest}", proxy=env.mirror) as r:
            assert r.status == 200
            assert await r.read() == b"hello world" * 100
        # Registry form that is not /v2/.
        async with s.get(f"{env.mirror}/etc/passwd") as r:
            assert r.status == 404
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    writer.write(b"CONNECT 203.0.113.9:443 HTTP/1.1\r\nHost: 203.0.113.9:443\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 403")
    writer.close()
    assert env.proxy.metrics.request_total.labels("refused", "403")._value.get() == 2


async def test_connect_to_an_allowed_host_is_a_tunnel(env: Env) -> None:
    """TLS end to end: the client sees the origin's own certificate, not ours."""
    data = os.urandom(100_000)
    digest = env.tls_origin.add(data)
    client_ctx = ssl.create_default_context(cafile=str(env.ca_pem))
    async with aiohttp.ClientSession() as s:
        url = f"https://127.0.0.1:{env.tls_origin.port}/v2/a/blobs/{digest}"
        async with s.get(url, proxy=env.mirror, ssl=client_ctx) as r:
            assert await r.read() == data
    # A tunnel carries bytes only: the blob did not go through the store.
    assert env.store.get(blob_task_id(digest)) is None


async def test_intercepted_upstream_tls_is_still_verified(env: Env) -> None:
    """Interception does not weaken the upstream check: a certificate for another name is a clear 502."""
    data = os.urandom(1_500_000)
    digest = env.tls_origin.add(data)
    client_ctx = ssl.create_default_context(cafile=str(env.proxy.ca_cert_path))
    async with aiohttp.ClientSession() as s:
        # "localhost" is hijacked; the origin's certificate names only 127.0.0.1.
        url = f"https://localhost:{env.tls_origin.port}/v2/a/blobs/{digest}"
        async with s.get(url, proxy=env.mirror, ssl=client_ctx) as r:
            status, body = r.status, await r.read()
    assert status == 502, body[:200]
    assert b"certificate" in body.lower() or b"verify" in body.lower()
    assert env.tls_origin.gets.get(digest) is None
    assert env.store.get(blob_task_id(digest)) is None


async def test_intercepted_blob_is_served_through_the_store(env: Env, tmp_path: Path) -> None:
    data = os.urandom(1_200_000)
    digest = env.tls_origin.add(data)
    env.proxy.hijack.append(re.compile(r"127\.0\.0\.1"))
    client_ctx = ssl.create_default_context(cafile=str(env.proxy.ca_cert_path))
    async with aiohttp.ClientSession() as s:
        url = f"https://127.0.0.1:{env.tls_origin.port}/v2/a/blobs/{digest}"
        async with s.get(url, proxy=env.mirror, ssl=client_ctx) as r:
            assert r.status == 200
            assert r.headers["X-Dragonfly-Task-ID"] == blob_task_id(digest)
            assert await r.read() == data
    assert env.tls_origin.gets[digest] == 1


async def test_client_gone_mid_blob_the_download_still_finishes(env: Env) -> None:
    """The task belongs to the daemon, not to the request: a client that leaves does not waste the fetch."""
    data = os.urandom(12 * 1024 * 1024)
    digest = env.origin.add(data)
    reader, writer = await asyncio.open_connection("127.0.0.1", env.proxy.port)
    writer.write(f"GET /v2/a/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    writer.close()
    tid = blob_task_id(digest)

    def succeeded() -> bool:
        meta = env.store.get(tid)
        return meta is not None and meta.state == "succeeded"

    await until(succeeded, "the download finished without its client")
    url = f"{env.mirror}/v2/a/blobs/{digest}"
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Range": "bytes=-5"}) as r:
        assert r.status == 206
        assert await r.read() == data[-5:]
    assert env.origin.gets[digest] == 1


# --------------------------------------------------------------------------- mirror routing


async def _other_origin() -> Origin:
    other = Origin()
    await other.start()
    return other


async def test_mirror_path_reaches_the_registry_it_names(env: Env) -> None:
    """podman/skopeo name the registry in the path: it is reached, never the default registry."""
    other = await _other_origin()
    try:
        data = os.urandom(200_000)
        digest = other.add(data)
        env.origin.add(b"the default registry's blob of another name")
        base = f"{env.mirror}/v2/damselfly__mirror/http/127.0.0.1_{other.port}/team/app"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{base}/blobs/{digest}") as r:
                assert r.status == 200
                assert await r.read() == data
            async with s.get(f"{base}/manifests/v1", headers={"Accept": "application/x-one"}) as r:
                assert r.status == 200
                assert (await r.json())["accept"] == ["application/x-one"]
            # A malformed marked path is refused, not handed to the default registry.
            async with s.get(f"{env.mirror}/v2/damselfly__mirror/http/Bad:1/team/app/manifests/v1") as r:
                assert r.status == 400
        assert other.gets == {digest: 1}
        assert env.origin.auth_seen == []  # the default registry saw nothing
        assert env.store.get(blob_task_id(digest)) is not None  # the blob went through the store
    finally:
        assert other.runner is not None
        await other.runner.cleanup()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_mirror_refuses_writes(env: Env, method: str) -> None:
    digest = env.origin.add(b"keep me")
    async with aiohttp.ClientSession() as s:
        named = {"X-Dragonfly-Registry": f"http://127.0.0.1:{env.origin.port}"}
        marked = f"{env.mirror}/v2/damselfly__mirror/http/127.0.0.1_{env.origin.port}"
        for url, hdrs in [
            (f"{env.mirror}/v2/team/app/blobs/{digest}", {}),
            (f"{env.mirror}/v2/team/app/blobs/{digest}", named),
            (f"{marked}/team/app/blobs/{digest}", {}),
        ]:
            async with s.request(method, url, headers=hdrs, data=b"x") as r:
                assert r.status == 405
                assert r.headers["Allow"] == "GET, HEAD"
    assert env.origin.auth_seen == []  # nothing reached the registry
    assert env.proxy.metrics.request_total.labels("refused", "405")._value.get() == 3


async def test_registry_not_allowed_is_403_before_any_connection(env: Env, tmp_path: Path) -> None:
    accepted: list[object] = []

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer.get_extra_info("peername"))
        writer.close()

    target = await asyncio.start_server(count, "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    other = await _other_origin()
    cfg = env.proxy.config.model_copy(deep=True)
    cfg.registry_mirror.allowed_registries = [rf"127\.0\.0\.1:{other.port}"]
    narrowed = ProxyServer(cfg, manager=env.proxy.manager, store=env.store, data_dir=tmp_path / "d2")
    await narrowed.start()
    try:
        mirror_url = f"http://127.0.0.1:{narrowed.port}"
        digest = other.add(b"allowed bytes")
        async with aiohttp.ClientSession() as s:
            for url, hdrs in [
                (f"{mirror_url}/v2/a/manifests/1", {"X-Dragonfly-Registry": f"http://127.0.0.1:{port}"}),
                (f"{mirror_url}/v2/damselfly__mirror/http/127.0.0.1_{port}/a/manifests/1", {}),
                (f"{mirror_url}/v2/a/manifests/1?ns=127.0.0.1:{port}", {}),
                (f"{mirror_url}/v2/a/blobs/{digest}", {"X-Dragonfly-Registry": "http://169.254.169.254"}),
            ]:
                async with s.get(url, headers=hdrs) as r:
                    assert r.status == 403, url
                    assert "does not serve" in await r.text()
            # An allowed registry and the default are served.
            named = {"X-Dragonfly-Registry": f"http://127.0.0.1:{other.port}"}
            async with s.get(f"{mirror_url}/v2/a/blobs/{digest}", headers=named) as r:
                assert r.status == 200 and await r.read() == b"allowed bytes"
            async with s.get(f"{mirror_url}/v2/a/manifests/1") as r:
                assert r.status == 200
        # Had the proxy connected, the connection would have been accepted before it answered.
        assert accepted == []
    finally:
        await narrowed.close()
        target.close()
        await target.wait_closed()
        assert other.runner is not None
        await other.runner.cleanup()


async def test_probe_is_answered_when_the_default_registry_is_out_of_reach(env: Env, tmp_path: Path) -> None:
    gone = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = gone.sockets[0].getsockname()[1]
    gone.close()
    await gone.wait_closed()  # nothing listens on ``port`` now
    cfg = env.proxy.config.model_copy(deep=True)
    cfg.registry_mirror.url = f"http://127.0.0.1:{port}"
    lost = ProxyServer(cfg, manager=env.proxy.manager, store=env.store, data_dir=tmp_path / "d3")
    await lost.start()
    try:
        async with aiohttp.ClientSession() as s:
            # The probe does not depend on the default registry: clients still use the mirror.
            async with s.get(f"http://127.0.0.1:{lost.port}/v2/") as r:
                assert r.status == 401
                assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
                realm = f'realm="http://127.0.0.1:{lost.port}/damselfly/token"'
                assert r.headers["WWW-Authenticate"].startswith(f"Bearer {realm}")
            # Anything else that fails to reach the registry is still a 502.
            async with s.get(f"http://127.0.0.1:{lost.port}/v2/a/manifests/1") as r:
                assert r.status == 502
    finally:
        await lost.close()
