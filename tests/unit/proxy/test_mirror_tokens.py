"""The token dance of clients that name the registry in the mirror path (podman, skopeo),
against small registries on real sockets: one with bearer tokens, one with basic auth, one open."""

from __future__ import annotations

import base64
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
from damselfly.daemon.proxy.token import parse_challenge, probe_challenge, split_scope
from damselfly.daemon.proxy.upstream import upstream_authorization
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer.peer_rpc import PeerRPC
from damselfly.errors import InvalidArgument

BASIC = "Basic " + base64.b64encode(b"alice:pw").decode()


@dataclass
class Reg:
    """A registry: ``auth`` is "bearer" (its own token service), "basic" or "" (open)."""

    auth: str
    service: str = "reg.example"
    token_queries: list[dict[str, str]] = field(default_factory=list)
    seen_auth: list[str] = field(default_factory=list)
    port: int = 0
    runner: web.AppRunner | None = None

    def ok(self, request: web.Request) -> bool:
        got = request.headers.get("Authorization", "")
        self.seen_auth.append(got)
        if self.auth == "bearer":
            return got == "Bearer T-repository:team/app:pull"
        if self.auth == "basic":
            return got == BASIC
        return True

    def challenge(self) -> str:
        if self.auth == "bearer":
            return f'Bearer realm="http://127.0.0.1:{self.port}/token",service="{self.service}"'
        return 'Basic realm="reg"'

    async def v2(self, request: web.Request) -> web.Response:
        if self.auth and not self.ok(request):
            return web.json_response({}, status=401, headers={"WWW-Authenticate": self.challenge()})
        return web.json_response({})

    async def manifest(self, request: web.Request) -> web.Response:
        if not self.ok(request):
            return web.json_response({}, status=401, headers={"WWW-Authenticate": self.challenge()})
        return web.json_response({"repo": request.match_info["name"], "port": self.port})

    async def token(self, request: web.Request) -> web.Response:
        self.token_queries.append(dict(request.query) | {"auth": request.headers.get("Authorization", "")})
        return web.json_response({"token": f"T-{request.query.get('scope', '')}"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v2/", self.v2)
        app.router.add_get("/v2/{name:.+}/manifests/{ref}", self.manifest)
        app.router.add_get("/token", self.token)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]


@dataclass
class Env:
    default: Reg
    proxy: ProxyServer

    @property
    def mirror(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    default = Reg("bearer", service="default.example")
    await default.start()
    store = PieceStore(tmp_path / "data")
    source = HTTPSource(SourceConfig())
    peer_rpc = PeerRPC()
    deps = ConductorDeps(
        store=store, pool=None, source=source, peer_rpc=peer_rpc, scheduler=None,
        host_id="127.0.0.1-t", host_ip="127.0.0.1", hostname="t", is_seed=False,
    )  # fmt: skip
    manager = TaskManager(deps)
    cfg = ProxyConfig.model_validate(
        {
            "server": {"ip": "127.0.0.1", "port": 0},
            "registryMirror": {"url": f"http://127.0.0.1:{default.port}"},
        }
    )
    proxy = ProxyServer(cfg, manager=manager, store=store, data_dir=tmp_path / "data")
    await proxy.start()
    yield Env(default, proxy)
    await proxy.close()
    await manager.close()
    await source.close()
    await peer_rpc.close()
    assert default.runner is not None
    await default.runner.cleanup()
    store.close()


async def _pull(env: Env, reg: Reg, creds: str = "") -> tuple[int, dict[str, object]]:
    """What containers/image does through a mirror location with a path: probe, token, manifest."""
    repo = f"damselfly__mirror/http/127.0.0.1_{reg.port}/team/app"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{env.mirror}/v2/") as r:
            assert r.status == 401
            scheme, params = parse_challenge(r.headers["WWW-Authenticate"])
        assert scheme == "bearer" and params["realm"] == f"{env.mirror}/damselfly/token"
        assert params["service"] == "damselfly"
        query = {"service": params["service"], "scope": f"repository:{repo}:pull"}
        hdrs = {"Authorization": creds} if creds else {}
        async with s.get(params["realm"], params=query, headers=hdrs) as r:
            assert r.status == 200, await r.text()
            token = (await r.json())["token"]
        async with s.get(
            f"{env.mirror}/v2/{repo}/manifests/v1", headers={"Authorization": f"Bearer {token}"}
        ) as r:
            return r.status, await r.json()


async def test_bearer_registry_named_by_path_gets_its_own_token(env: Env) -> None:
    reg = Reg("bearer")
    await reg.start()
    try:
        status, body = await _pull(env, reg, creds=BASIC)
        assert (status, body) == (200, {"repo": "team/app", "port": reg.port})
        # The named registry's token service was asked, for the name without the mirror path,
        # for its own service, with the client's credentials; the default's never was.
        assert reg.token_queries == [
            {"service": "reg.example", "scope": "repository:team/app:pull", "auth": BASIC}
        ]
        assert env.default.token_queries == []
    finally:
        assert reg.runner is not None
        await reg.runner.cleanup()


@pytest.mark.parametrize("auth", ["basic", ""])
async def test_basic_and_open_registries_by_path(env: Env, auth: str) -> None:
    reg = Reg(auth)
    await reg.start()
    try:
        status, body = await _pull(env, reg, creds=BASIC if auth else "")
        assert (status, body) == (200, {"repo": "team/app", "port": reg.port})
        # The registry saw the client's basic credentials, or nothing: never a made-up token.
        assert reg.seen_auth[-1] == (BASIC if auth else "")
    finally:
        assert reg.runner is not None
        await reg.runner.cleanup()


async def test_default_registry_scopes_go_to_its_token_service(env: Env) -> None:
    async with aiohttp.ClientSession() as s:
        url = f"{env.mirror}/damselfly/token?service=damselfly&scope=repository:library/a:pull,push"
        async with s.get(url) as r:
            assert r.status == 200
        bad = f"{env.mirror}/damselfly/token?scope=repository:damselfly__mirror/ftp/x/a:pull"
        async with s.get(bad) as r:
            assert r.status == 400
        two = (
            f"{env.mirror}/damselfly/token?scope=repository:library/a:pull"
            "&scope=repository:damselfly__mirror/https/ghcr.io/b:pull"
        )
        async with s.get(two) as r:
            assert r.status == 400  # one token, one registry
    # The mirror only reads: a push scope is asked as pull.
    assert env.default.token_queries == [
        {"service": "default.example", "scope": "repository:library/a:pull", "auth": ""}
    ]


def test_pure_parts() -> None:
    assert split_scope("repository:damselfly__mirror/http/h_5000/team/app:pull") == (
        "http://h:5000",
        "repository:team/app:pull",
    )
    assert split_scope("repository:library/a:pull") == (None, "repository:library/a:pull")
    assert split_scope("registry:catalog:*") == (None, "registry:catalog:*")
    with pytest.raises(InvalidArgument):
        split_scope("repository:damselfly__mirror/http/Bad:1/a:pull")
    assert probe_challenge('Basic realm="x"', "127.0.0.1:4001") is None
    assert probe_challenge('Bearer realm="https://auth",service="s"', '127.0.0.1:4001"evil') is None
    assert probe_challenge('Bearer realm="https://auth",service="s"', "127.0.0.1:4001") == (
        'Bearer realm="http://127.0.0.1:4001/damselfly/token",service="s"'
    )
    assert upstream_authorization("Bearer damselfly-anonymous") is None
    assert upstream_authorization("Bearer damselfly-basic.YTpi") == "Basic YTpi"
    assert upstream_authorization("Bearer real") == "Bearer real"
