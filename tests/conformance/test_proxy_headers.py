"""The ``X-Dragonfly-*`` headers through a real proxy and a real origin, as Dragonfly's proxy reads them.

The proxy of one daemon (no scheduler: every P2P request is fetched from the
origin into the store) in front of a small registry/file server on loopback.
Each test sends what a client of Dragonfly's proxy sends and checks the task
it names (``X-Dragonfly-Task-ID``, computed as Dragonfly does in
``damselfly.ids``), the download it asks for, and the answer's headers, against
dragonflyoss/client commit ff17c0b7:

* HR = ``dragonfly-client/src/proxy/header.rs`` (how each header is read)
* MR = ``dragonfly-client/src/proxy/mod.rs`` (routing, the download request, the answer)
* TR = ``dragonfly-client/src/proxy/task.rs`` (the task ID's order of rules, :88-104)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from damselfly import ids
from damselfly.config import ProxyConfig, SourceConfig
from damselfly.daemon.download.conductor import ConductorDeps
from damselfly.daemon.download.tasks import TaskManager
from damselfly.daemon.origin.source import HTTPSource
from damselfly.daemon.proxy import ProxyServer
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.daemon.transfer.peer_rpc import PeerRPC
from damselfly.domain import DownloadSpec

MiB = 1024 * 1024
TASK_ID = "X-Dragonfly-Task-ID"
ERROR_TYPE = "X-Dragonfly-Error-Type"


@dataclass
class Origin:
    """Blobs under ``/v2/<name>/blobs/<digest>``, files under ``/files/...``; it records what it was sent."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    gets: dict[str, int] = field(default_factory=dict)
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    def add_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest

    async def blob(self, request: web.Request) -> web.StreamResponse:
        self.seen_headers.append(dict(request.headers))
        data = self.blobs.get(request.match_info["digest"])
        if data is None:
            return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)
        self.gets[request.path] = self.gets.get(request.path, 0) + 1
        return web.Response(body=data)

    async def file(self, request: web.Request) -> web.StreamResponse:
        self.seen_headers.append(dict(request.headers))
        data = self.files.get(request.match_info["name"])
        if data is None:
            return web.Response(status=404)
        self.gets[request.path] = self.gets.get(request.path, 0) + 1
        return web.Response(body=data, content_type="application/x-test")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v2/{name:.+}/blobs/{digest}", self.blob)
        app.router.add_get("/files/{name:.+}", self.file)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]


class RecordingManager(TaskManager):
    """The daemon's task manager, remembering each download the proxy asked for."""

    def __init__(self, deps: ConductorDeps) -> None:
        super().__init__(deps)
        self.specs: list[DownloadSpec] = []

    def ensure(self, spec: DownloadSpec) -> Any:
        self.specs.append(spec)
        return super().ensure(spec)


@dataclass
class Env:
    origin: Origin
    proxy: ProxyServer
    manager: RecordingManager
    store: PieceStore
    tmp: Path

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    async def get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
        """GET ``url`` through the proxy: a mirror request for a ``/v2/...`` path, else a proxy-form one."""
        async with aiohttp.ClientSession() as s:
            if url.startswith("/"):
                r = await s.get(self.address + url, headers=headers)
            else:
                r = await s.get(url, headers=headers, proxy=self.address)
            async with r:
                return r.status, r.headers, await r.read()


async def _env(tmp_path: Path, *, blob_task_id_by_digest: bool = True) -> tuple[Env, Any]:
    origin = Origin()
    await origin.start()
    store = PieceStore(tmp_path / "data")
    source = HTTPSource(SourceConfig())
    peer_rpc = PeerRPC()
    deps = ConductorDeps(
        store=store, pool=None, source=source, peer_rpc=peer_rpc, scheduler=None,
        host_id="127.0.0.1-t", host_ip="127.0.0.1", hostname="t", is_seed=False,
    )  # fmt: skip
    manager = RecordingManager(deps)
    cfg = ProxyConfig.model_validate(
        {
            "server": {"ip": "127.0.0.1", "port": 0},
            "registryMirror": {"url": origin.url("")},
            "rules": [{"regx": "blobs/sha256.*"}, {"regx": "/files/p2p/"}],
            "blobTaskIdByDigest": blob_task_id_by_digest,
            "readAhead": 0,
        }
    )
    proxy = ProxyServer(cfg, manager=manager, store=store, data_dir=tmp_path / "data")
    await proxy.start()

    async def close() -> None:
        await proxy.close()
        await manager.close()
        await source.close()
        await peer_rpc.close()
        assert origin.runner is not None
        await origin.runner.cleanup()
        store.close()

    return Env(origin, proxy, manager, store, tmp_path), close


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    e, close = await _env(tmp_path)
    try:
        yield e
    finally:
        await close()


# -- task IDs --------------------------------------------------------------------------------


async def test_filtered_query_params_are_comma_separated_and_trimmed(env: Env) -> None:
    # HR:42,207-222: "a, b" filters a and b; MR:1298-1301 passes them to the task ID.
    env.origin.files["p2p/q.bin"] = os.urandom(1000)
    url = env.origin.url("/files/p2p/q.bin?a=1&keep=2&b=3")
    status, headers, _ = await env.get(url, {"X-Dragonfly-Filtered-Query-Params": "a, b"})
    assert status == 200
    assert headers[TASK_ID] == ids.task_id(url, filtered_query_params=["a", "b"])
    assert headers[TASK_ID] == ids.task_id(
        env.origin.url("/files/p2p/q.bin?keep=2"), filtered_query_params=[]
    )


async def test_tag_application_and_piece_length_name_the_task(env: Env) -> None:
    # HR:24,27,75,279-297: tag, application, and a bytesize piece length ("8 MiB"), all in the ID.
    env.origin.files["p2p/t.bin"] = os.urandom(1000)
    url = env.origin.url("/files/p2p/t.bin")
    asked = {"X-Dragonfly-Tag": "t", "X-Dragonfly-Application": "app", "X-Dragonfly-Piece-Length": "8 MiB"}
    status, headers, _ = await env.get(url, asked)
    assert status == 200
    assert headers[TASK_ID] == ids.task_id(url, tag="t", application="app", piece_length=8 * MiB)
    held = env.store.get(headers[TASK_ID])
    assert held is not None and held.piece_length == 8 * MiB


@pytest.mark.parametrize(
    ("value", "piece_length"),
    [("4mib", 4 * MiB), ("4194304", 4 * MiB), ("16MiB", 16 * MiB), ("64 mib", 64 * MiB), ("bogus", None)],
)
async def test_piece_length_is_a_bytesize_and_unparsable_is_ignored(
    env: Env, value: str, piece_length: int | None
) -> None:
    # HR:279-297 (bytesize 1.3.3's parser; unparsable -> None, so the default rule applies).
    env.origin.files["p2p/pl.bin"] = os.urandom(1000)
    url = env.origin.url("/files/p2p/pl.bin")
    status, headers, _ = await env.get(url, {"X-Dragonfly-Piece-Length": value})
    assert status == 200
    assert headers[TASK_ID] == ids.task_id(url, piece_length=piece_length)


@pytest.mark.parametrize("value", ["0", "1mib", "4000000", "65mib", "1gib"])
async def test_piece_length_out_of_range_is_refused_by_the_proxy(env: Env, value: str) -> None:
    # MR:1272-1281: below 4 MiB is refused as a proxy error (Dragonfly answers 500; here 400, the
    # client's mistake); above 64 MiB the Go scheduler would refuse the task (PGV 4-64 MiB).
    env.origin.files["p2p/bad.bin"] = b"x"
    status, headers, body = await env.get(
        env.origin.url("/files/p2p/bad.bin"), {"X-Dragonfly-Piece-Length": value}
    )
    assert status == 400 and headers[ERROR_TYPE] == "proxy"
    assert b"X-Dragonfly-Piece-Length" in body and b"4-64 MiB" in body
    assert env.origin.gets == {}


async def test_content_for_calculating_task_id_names_the_task(env: Env) -> None:
    # HR:80,300-306, TR:88-91: the task ID is sha256 of the value, nothing else hashed.
    env.origin.files["p2p/c.bin"] = os.urandom(1000)
    asked = {"X-Dragonfly-Content-For-Calculating-Task-ID": "my-model-v1", "X-Dragonfly-Tag": "ignored"}
    status, headers, _ = await env.get(env.origin.url("/files/p2p/c.bin"), asked)
    assert status == 200 and headers[TASK_ID] == hashlib.sha256(b"my-model-v1").hexdigest()


async def test_blob_task_ids_follow_the_setting_and_the_header(env: Env, tmp_path: Path) -> None:
    # TR:92-93 + dragonfly-client-util/src/id_generator/mod.rs:201-205: with the flag, a blob's task
    # ID is its digest's hex; HR:88,309-325: the header ("true"/other) wins over the setting.
    data = os.urandom(100_000)
    digest = env.origin.add_blob(data)
    path = f"/v2/team/app/blobs/{digest}"
    status, headers, body = await env.get(path)  # proxy.blobTaskIdByDigest: true (default)
    assert (status, body) == (200, data) and headers[TASK_ID] == digest.removeprefix("sha256:")
    status, headers, _ = await env.get(path, {"X-Dragonfly-Enable-Task-ID-Based-Blob-Digest": "False"})
    assert status == 200 and headers[TASK_ID] == ids.task_id(env.origin.url(path))
    # The setting off: URL task IDs, unless the header asks for digests.
    other, close = await _env(tmp_path / "off", blob_task_id_by_digest=False)
    try:
        other.origin.blobs[digest] = data
        status, headers, _ = await other.get(path)
        assert status == 200 and headers[TASK_ID] == ids.task_id(other.origin.url(path))
        status, headers, _ = await other.get(path, {"X-Dragonfly-Enable-Task-ID-Based-Blob-Digest": "TRUE"})
        assert status == 200 and headers[TASK_ID] == digest.removeprefix("sha256:")
        assert other.manager.specs[-1].enable_task_id_based_blob_digest
    finally:
        await close()


# -- routing ---------------------------------------------------------------------------------


async def test_use_p2p_true_sends_an_unmatched_get_through_the_swarm(env: Env) -> None:
    # HR:48,225-238, MR:457-500: "true" (any case) routes a GET no rule matches through dfdaemon
    # with the default rule; without it the request passes straight through.
    data = os.urandom(3000)
    env.origin.files["plain.bin"] = data
    url = env.origin.url("/files/plain.bin")
    status, headers, body = await env.get(url)
    assert (status, body) == (200, data) and TASK_ID not in headers and env.manager.specs == []
    status, headers, body = await env.get(url, {"X-Dragonfly-Use-P2P": "True"})
    assert (status, body) == (200, data) and headers[TASK_ID] == ids.task_id(url)
    assert headers["Content-Type"] == "application/x-test"  # the origin's headers answer (MR:1380-1390)
    assert env.store.get(ids.task_id(url)) is not None


async def test_use_p2p_false_does_not_bypass_a_matching_rule(env: Env) -> None:
    # HR:44-47: with "false", a URL matching a proxy rule still goes through P2P.
    env.origin.files["p2p/r.bin"] = os.urandom(1000)
    url = env.origin.url("/files/p2p/r.bin")
    status, headers, _ = await env.get(url, {"X-Dragonfly-Use-P2P": "false"})
    assert status == 200 and headers[TASK_ID] == ids.task_id(url)


# -- the download asked for ------------------------------------------------------------------


async def test_priority_and_prefetch_reach_the_download(env: Env) -> None:
    # HR:176-196: an integer, absent or not a number -> 6 (LEVEL6).
    # MR:1339-1353: prefetch only for a Range request; the header wins over proxy.prefetch (true).
    env.origin.files["p2p/pp.bin"] = os.urandom(2000)
    url = env.origin.url("/files/p2p/pp.bin")
    cases: list[tuple[dict[str, str], int, bool]] = [
        ({}, 6, False),
        ({"X-Dragonfly-Priority": "3"}, 3, False),
        ({"X-Dragonfly-Priority": "high"}, 6, False),
        ({"Range": "bytes=0-9"}, 6, True),
        ({"Range": "bytes=0-9", "X-Dragonfly-Prefetch": "false"}, 6, False),
        ({"X-Dragonfly-Prefetch": "true"}, 6, False),
    ]
    for asked, priority, prefetch in cases:
        status, _, _ = await env.get(url, asked)
        assert status in (200, 206)
        spec = env.manager.specs[-1]
        assert (spec.priority, spec.prefetch) == (priority, prefetch), asked


async def test_output_path_and_force_hard_link_are_never_honoured(env: Env) -> None:
    # HR:62,68 let a Dragonfly proxy client make the daemon write (or hard link) any path; a
    # Damselfly proxy ignores both and does not pass them to the origin either.
    env.origin.files["p2p/o.bin"] = os.urandom(1000)
    target = env.tmp / "written-by-the-daemon"
    asked = {"X-Dragonfly-Output-Path": str(target), "X-Dragonfly-Force-Hard-Link": "true"}
    status, _, _ = await env.get(env.origin.url("/files/p2p/o.bin"), asked)
    assert status == 200 and not target.exists()
    spec = env.manager.specs[-1]
    assert spec.output_path == "" and not spec.force_hard_link
    assert not any(k.lower().startswith("x-dragonfly-") for k in env.origin.seen_headers[-1])


# -- the answer ------------------------------------------------------------------------------


async def test_answer_headers_task_id_server_ip_and_download_finished(env: Env) -> None:
    # MR:1380-1428: X-Dragonfly-Task-ID and X-Dragonfly-Server-IP on every answer;
    # X-Dragonfly-Task-Download-Finished: true only when the task was complete before the request.
    data = os.urandom(50_000)
    digest = env.origin.add_blob(data)
    path = f"/v2/team/app/blobs/{digest}"
    status, first, _ = await env.get(path)
    assert status == 200 and first["X-Dragonfly-Server-IP"] == "127.0.0.1"
    assert "X-Dragonfly-Task-Download-Finished" not in first
    # The client may have every byte a moment before the download is recorded complete.
    task_id = first[TASK_ID]
    changes = env.store.changes(task_id)
    while (held := env.store.get(task_id)) is None or held.state != "succeeded":
        await changes.wait(5)
    status, again, body = await env.get(path)
    assert (status, body) == (200, data)
    assert again["X-Dragonfly-Task-Download-Finished"] == "true" and again[TASK_ID] == first[TASK_ID]


async def test_error_type_says_who_failed(env: Env) -> None:
    # HR:94-150, MR:819-884,1445-1470: "backend" with the origin's status, "proxy" for what the
    # proxy refuses.
    missing = "sha256:" + "0" * 64
    status, headers, body = await env.get(f"/v2/team/app/blobs/{missing}")
    assert status == 404 and headers[ERROR_TYPE] == "backend" and b"BLOB_UNKNOWN" in body
    status, headers, _ = await env.get("http://127.0.0.1:1/elsewhere")
    assert status == 403 and headers[ERROR_TYPE] == "proxy"  # not a host this proxy forwards to
