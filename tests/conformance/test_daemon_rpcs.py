"""Every ``dfdaemon.v2`` RPC of a real daemon, answered as the Rust dfdaemon answers it.

One daemon in-process (tests/swarm/harness.py: a scheduler, an origin, real
gRPC on loopback and on the unix socket); each test calls one RPC the way a
Dragonfly peer or tool would and checks the answer or the status code against
the Rust dfdaemon's source, dragonflyoss/client commit ff17c0b7:

* U = ``dragonfly-client/src/grpc/dfdaemon_upload.rs``
* D = ``dragonfly-client/src/grpc/dfdaemon_download.rs``
* T = ``dragonfly-client/src/resource/task.rs``; E = ``dragonfly-client-core/src/error/mod.rs``
  (``TaskNotFound`` displays as ``task <id> not found``, E:57-59)
* H = ``dragonfly-client-backend/src/http.rs`` (the HTTP backend's ``stat``)
* N = ``dragonfly-client-util/src/sysinfo/network.rs`` (SyncHost's figures)

Where Damselfly keeps its own answer on purpose, the test says so and why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from damselfly.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
from damselfly.daemon.app import Daemon
from damselfly.daemon.download.tasks import task_id_for
from damselfly.domain import DownloadSpec
from swarm.harness import Swarm

UNKNOWN = "f" * 64
SIZE = 5 * 1024 * 1024 + 7  # over 4 MiB: a Dragonfly peer never asks its scheduler about less
# What a generated servicer answers by itself (grpc.aio: "Unexpected <class 'NotImplementedError'>: ...").
DEFAULT_NOT_IMPLEMENTED = "Method not implemented!"


def _defaulted(details: str) -> bool:
    return DEFAULT_NOT_IMPLEMENTED in details


class Env:
    def __init__(self, swarm: Swarm, daemon: Daemon) -> None:
        self.swarm = swarm
        self.daemon = daemon
        self.upload_channel = grpc.aio.insecure_channel(f"127.0.0.1:{daemon.ports['upload_port']}")
        self.local_channel = grpc.aio.insecure_channel(f"unix:{daemon.config.socket_path}")
        self.upload = dfdaemon_pb2_grpc.DfdaemonUploadStub(self.upload_channel)
        self.local = dfdaemon_pb2_grpc.DfdaemonDownloadStub(self.local_channel)

    async def held_task(self, name: str = "held.bin") -> str:
        """A task this daemon holds whole (downloaded from the origin through its local API)."""
        self.swarm.file(name, SIZE)
        url = self.swarm.url(name)
        result = await self.swarm.download("d1", url)
        assert result.ok, result.details
        return task_id_for(DownloadSpec(url=url))

    async def close(self) -> None:
        await self.upload_channel.close()
        await self.local_channel.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    swarm = Swarm(tmp_path)
    await swarm.start()
    # No re-announce during a test: DeleteHost's effect stays visible.
    daemon = await swarm.add_daemon("d1", scheduler={"announce_interval": 300})
    e = Env(swarm, daemon)
    try:
        yield e
    finally:
        await e.close()
        await swarm.close()


async def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status a unary call (awaitable) or a server stream (async iterable) ends with."""
    try:
        if hasattr(call, "__aiter__"):
            async for _ in call:
                pass
        else:
            await call
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


# -- every method answers --------------------------------------------------------------------


def _methods(service: str) -> list[Any]:
    return list(dfdaemon_pb2.DESCRIPTOR.services_by_name[service].methods)


@pytest.mark.parametrize("service", ["DfdaemonUpload", "DfdaemonDownload"])
async def test_every_method_of_dragonfly_api_2_3_8_has_an_answer_of_its_own(env: Env, service: str) -> None:
    # dragonfly-api 2.3.8 (P:dfdaemon_pb2_grpc.py): 22 DfdaemonUpload and 21 DfdaemonDownload
    # methods. None may fall through to the generated "Method not implemented!".
    channel = env.upload_channel if service == "DfdaemonUpload" else env.local_channel
    methods = _methods(service)
    assert len(methods) == (22 if service == "DfdaemonUpload" else 21)
    defaulted = []
    for m in methods:
        if m.client_streaming:
            continue  # none in dfdaemon.v2
        path = f"/dfdaemon.v2.{service}/{m.name}"
        request_type = dfdaemon_pb2 if m.input_type.file.name == "dfdaemon.proto" else empty_pb2
        request = getattr(request_type, m.input_type.name)()
        serialize = type(request).SerializeToString
        if m.server_streaming:
            call = channel.unary_stream(path, request_serializer=serialize, response_deserializer=bytes)(
                request, timeout=10
            )
            try:
                async for _ in call:
                    break  # SyncHost streams until the caller hangs up: one message says enough
            except grpc.aio.AioRpcError as e:
                if _defaulted(e.details() or ""):
                    defaulted.append(m.name)
            call.cancel()
        else:
            unary = channel.unary_unary(path, request_serializer=serialize, response_deserializer=bytes)
            _, details = await _status(unary(request, timeout=10))
            if _defaulted(details):
                defaulted.append(m.name)
    assert defaulted == []


# -- DfdaemonUpload ------------------------------------------------------------------------


async def test_upload_stat_local_task(env: Env) -> None:
    # U:742-787: the local metadata; unknown -> NOT_FOUND "local task not found: <id>".
    code, details = await _status(
        env.upload.StatLocalTask(dfdaemon_pb2.StatLocalTaskRequest(task_id=UNKNOWN))
    )
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, f"local task not found: {UNKNOWN}")
    task_id = await env.held_task()
    local = await env.upload.StatLocalTask(dfdaemon_pb2.StatLocalTaskRequest(task_id=task_id))
    assert local.task_id == task_id and local.content_length == SIZE and local.piece_length == 4 * 1024 * 1024
    assert local.HasField("created_at") and local.HasField("finished_at") and not local.HasField("failed_at")


@pytest.mark.parametrize("side", ["upload", "local"])
async def test_list_task_entries_is_the_origins_stat(env: Env, side: str) -> None:
    # U:789-871 / D:904-985 over H:386-650: GET with "Range: bytes=0-0"; a 206's total from
    # Content-Range, the headers rewritten to the whole object's; no entries for an HTTP URL.
    stub = env.upload if side == "upload" else env.local
    env.swarm.file("listed.bin", SIZE)
    answer = await stub.ListTaskEntries(
        dfdaemon_pb2.ListTaskEntriesRequest(task_id=UNKNOWN, url=env.swarm.url("listed.bin"))
    )
    assert answer.content_length == SIZE and answer.status_code == 206 and list(answer.entries) == []
    headers = {k.lower(): v for k, v in answer.response_header.items()}
    assert headers["content-length"] == str(SIZE) and "content-range" not in headers
    # An error status is an answer, not an error (H:646-653).
    missing = await stub.ListTaskEntries(
        dfdaemon_pb2.ListTaskEntriesRequest(task_id=UNKNOWN, url=env.swarm.url("nothing-here"))
    )
    assert missing.status_code == 404 and list(missing.entries) == []
    # A URL no backend serves: INTERNAL (U:812-822).
    code, _ = await _status(stub.ListTaskEntries(dfdaemon_pb2.ListTaskEntriesRequest(url="ftp://h/f")))
    assert code == grpc.StatusCode.INTERNAL


async def test_upload_delete_task(env: Env) -> None:
    # U:873-922, T:2465-2494: unknown -> INTERNAL "task <id> not found" (E:58).
    code, details = await _status(env.upload.DeleteTask(dfdaemon_pb2.DeleteTaskRequest(task_id=UNKNOWN)))
    assert (code, details) == (grpc.StatusCode.INTERNAL, f"task {UNKNOWN} not found")
    # Damselfly's own rule, kept: a peer may not delete what this host holds (docs/INTEROP.md P7).
    task_id = await env.held_task()
    code, _ = await _status(env.upload.DeleteTask(dfdaemon_pb2.DeleteTaskRequest(task_id=task_id)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert env.daemon.store.get(task_id) is not None


async def test_sync_host_streams_the_network_load(env: Env) -> None:
    # U:1147-1222: an endless stream of Host{network{max_rx, rx, max_tx, tx}} and nothing else,
    # one per sample of N:121-170 (1 s apart); bandwidths in bit/s (N:157-167).
    call = env.upload.SyncHost(dfdaemon_pb2.SyncHostRequest(host_id="child", peer_id="child-peer"))
    seen: list[common_pb2.Host] = []
    async for host in call:
        seen.append(host)
        if len(seen) == 2:
            break
    call.cancel()
    for host in seen:
        assert host.HasField("network") and host.id == "" and host.ip == "" and not host.HasField("cpu")
        network = host.network
        assert network.HasField("rx_bandwidth") and network.HasField("tx_bandwidth")  # loopback is known
        assert network.max_tx_bandwidth == network.max_rx_bandwidth


async def test_upload_cache_task_methods_are_unimplemented(env: Env) -> None:
    # U:2532-2590: todo!() in Dragonfly (its release build aborts the process); here UNIMPLEMENTED.
    calls = [
        env.upload.DownloadCacheTask(dfdaemon_pb2.DownloadCacheTaskRequest()),
        env.upload.StatCacheTask(dfdaemon_pb2.StatCacheTaskRequest(task_id=UNKNOWN)),
        env.upload.DeleteCacheTask(dfdaemon_pb2.DeleteCacheTaskRequest(task_id=UNKNOWN)),
        env.upload.SyncCachePieces(dfdaemon_pb2.SyncCachePiecesRequest(task_id=UNKNOWN)),
        env.upload.DownloadCachePiece(dfdaemon_pb2.DownloadCachePieceRequest(task_id=UNKNOWN)),
    ]
    for call in calls:
        code, details = await _status(call)
        assert code == grpc.StatusCode.UNIMPLEMENTED and not _defaulted(details)


async def test_upload_persistent_task_methods_for_a_host_holding_none(env: Env) -> None:
    u = env.upload
    # U:1230-1300: the object storage is checked first.
    code, details = await _status(
        u.DownloadPersistentTask(dfdaemon_pb2.DownloadPersistentTaskRequest(url="s3://b/k"))
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "missing object storage")
    storage = common_pb2.ObjectStorage(region="r")
    code, details = await _status(
        u.DownloadPersistentTask(
            dfdaemon_pb2.DownloadPersistentTaskRequest(url="s3://b/k", object_storage=storage)
        )
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "missing object storage endpoint")
    storage.endpoint = "e"
    code, _ = await _status(
        u.DownloadPersistentTask(
            dfdaemon_pb2.DownloadPersistentTaskRequest(url="s3://b/k", object_storage=storage)
        )
    )
    assert code == grpc.StatusCode.UNIMPLEMENTED  # no object-storage backend here
    # U:1691-1760: an unknown task's pieces -> INTERNAL "persistent task <id> not found".
    code, details = await _status(
        u.SyncPersistentPieces(dfdaemon_pb2.SyncPersistentPiecesRequest(task_id=UNKNOWN))
    )
    assert (code, details) == (grpc.StatusCode.INTERNAL, f"persistent task {UNKNOWN} not found")
    # U:1559-1603: persist an unknown task -> INTERNAL (TaskNotFound); persistent=false does nothing.
    update = dfdaemon_pb2.UpdatePersistentTaskRequest(task_id=UNKNOWN, persistent=True)
    assert await _status(u.UpdatePersistentTask(update)) == (
        grpc.StatusCode.INTERNAL,
        f"task {UNKNOWN} not found",
    )
    update.persistent = False
    assert await _status(u.UpdatePersistentTask(update)) == (grpc.StatusCode.OK, "")
    # U:1606-1650: any failure INTERNAL; U:1653-1684: a delete is always OK.
    code, _ = await _status(u.StatPersistentTask(dfdaemon_pb2.StatPersistentTaskRequest(task_id=UNKNOWN)))
    assert code == grpc.StatusCode.INTERNAL
    delete = dfdaemon_pb2.DeletePersistentTaskRequest(task_id=UNKNOWN)
    assert await _status(u.DeletePersistentTask(delete)) == (grpc.StatusCode.OK, "")


async def test_upload_persistent_cache_methods_answer_as_dragonflys(env: Env) -> None:
    u = env.upload
    # U:2170-2215: persist an unknown task -> INTERNAL "task <id> not found".
    update = dfdaemon_pb2.UpdatePersistentCacheTaskRequest(task_id=UNKNOWN, persistent=True)
    assert await _status(u.UpdatePersistentCacheTask(update)) == (
        grpc.StatusCode.INTERNAL,
        f"task {UNKNOWN} not found",
    )
    # U:2217-2262: the scheduler's view; any failure INTERNAL.
    code, _ = await _status(
        u.StatPersistentCacheTask(dfdaemon_pb2.StatPersistentCacheTaskRequest(task_id=UNKNOWN))
    )
    assert code == grpc.StatusCode.INTERNAL
    # U:2264-2296: a delete is always OK, held or not.
    delete = dfdaemon_pb2.DeletePersistentCacheTaskRequest(task_id=UNKNOWN)
    assert await _status(u.DeletePersistentCacheTask(delete)) == (grpc.StatusCode.OK, "")


# -- DfdaemonDownload ----------------------------------------------------------------------


async def test_local_stat_local_task_not_found_as_dragonfly_words_it(env: Env) -> None:
    # D:809-858: unknown -> NOT_FOUND "local task not found: <id>".
    code, details = await _status(env.local.StatLocalTask(dfdaemon_pb2.StatLocalTaskRequest(task_id=UNKNOWN)))
    assert (code, details) == (grpc.StatusCode.NOT_FOUND, f"local task not found: {UNKNOWN}")


async def test_local_delete_task_and_delete_local_task(env: Env) -> None:
    # D:988-1032 / D:1035-1080, T:2465-2523: unknown -> INTERNAL "task <id> not found".
    for call in (env.local.DeleteTask, env.local.DeleteLocalTask):
        request_type = (
            dfdaemon_pb2.DeleteTaskRequest
            if call is env.local.DeleteTask
            else dfdaemon_pb2.DeleteLocalTaskRequest
        )
        code, details = await _status(call(request_type(task_id=UNKNOWN)))
        assert (code, details) == (grpc.StatusCode.INTERNAL, f"task {UNKNOWN} not found")
    # Held: gone from this host (and, for DeleteTask, from the scheduler's record of it).
    first = await env.held_task("one.bin")
    second = await env.held_task("two.bin")
    await env.local.DeleteTask(dfdaemon_pb2.DeleteTaskRequest(task_id=first))
    await env.local.DeleteLocalTask(dfdaemon_pb2.DeleteLocalTaskRequest(task_id=second))
    assert env.daemon.store.get(first) is None and env.daemon.store.get(second) is None


async def test_local_delete_host_removes_the_host_from_the_scheduler(env: Env) -> None:
    # D:1083-1112: the scheduler's DeleteHost for this host.
    assert await env.swarm.host_known(env.daemon.host_id)
    await env.local.DeleteHost(empty_pb2.Empty())
    assert not await env.swarm.host_known(env.daemon.host_id)


async def test_local_cache_and_persistent_task_methods(env: Env) -> None:
    d = env.local
    # D:2268-2292: todo!() in Dragonfly; here UNIMPLEMENTED.
    for call in (
        d.DownloadCacheTask(dfdaemon_pb2.DownloadCacheTaskRequest()),
        d.StatCacheTask(dfdaemon_pb2.StatCacheTaskRequest(task_id=UNKNOWN)),
        d.DeleteCacheTask(dfdaemon_pb2.DeleteCacheTaskRequest(task_id=UNKNOWN)),
    ):
        code, details = await _status(call)
        assert code == grpc.StatusCode.UNIMPLEMENTED and not _defaulted(details)
    # D:1122-1180, D:1445-1500: the object storage is checked first.
    code, details = await _status(
        d.DownloadPersistentTask(dfdaemon_pb2.DownloadPersistentTaskRequest(url="s3://b/k"))
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "missing object storage")
    code, details = await _status(
        d.UploadPersistentTask(dfdaemon_pb2.UploadPersistentTaskRequest(url="s3://b/k"))
    )
    assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, "missing object storage")
    # D:1583-1716: stat INTERNAL; the local stat of an unknown task INTERNAL "task <id> not found";
    # the local list of a host holding none: empty.
    code, _ = await _status(d.StatPersistentTask(dfdaemon_pb2.StatPersistentTaskRequest(task_id=UNKNOWN)))
    assert code == grpc.StatusCode.INTERNAL
    stat_local = dfdaemon_pb2.StatLocalPersistentTaskRequest(task_id=UNKNOWN)
    assert await _status(d.StatLocalPersistentTask(stat_local)) == (
        grpc.StatusCode.INTERNAL,
        f"task {UNKNOWN} not found",
    )
    listed = await d.ListLocalPersistentTasks(dfdaemon_pb2.ListLocalPersistentTasksRequest())
    assert list(listed.tasks) == []


async def test_local_persistent_cache_tasks_listed_and_stat_as_dragonflys(env: Env, tmp_path: Path) -> None:
    d = env.local
    # D:2170-2218: unknown -> INTERNAL "task <id> not found"; D:2220-2258: the list.
    stat_local = dfdaemon_pb2.StatLocalPersistentCacheTaskRequest(task_id=UNKNOWN)
    assert await _status(d.StatLocalPersistentCacheTask(stat_local)) == (
        grpc.StatusCode.INTERNAL,
        f"task {UNKNOWN} not found",
    )
    assert (
        list(
            (await d.ListLocalPersistentCacheTasks(dfdaemon_pb2.ListLocalPersistentCacheTasksRequest())).tasks
        )
        == []
    )
    # A file imported with dfcache (Damselfly's persistent cache, kept working) is listed.
    path = tmp_path / "cached.bin"
    path.write_bytes(b"x" * 1000)
    task = await d.UploadPersistentCacheTask(
        dfdaemon_pb2.UploadPersistentCacheTaskRequest(path=str(path), persistent_replica_count=1)
    )
    local = await d.StatLocalPersistentCacheTask(
        dfdaemon_pb2.StatLocalPersistentCacheTaskRequest(task_id=task.id)
    )
    assert local.task_id == task.id and local.content_length == 1000 and local.persistent
    assert local.HasField("ttl") and local.HasField("finished_at")
    listed = await d.ListLocalPersistentCacheTasks(dfdaemon_pb2.ListLocalPersistentCacheTasksRequest())
    assert [t.task_id for t in listed.tasks] == [task.id]
    # U:2170-2215: persisting a held copy is OK.
    update = dfdaemon_pb2.UpdatePersistentCacheTaskRequest(task_id=task.id, persistent=True)
    assert await _status(env.upload.UpdatePersistentCacheTask(update)) == (grpc.StatusCode.OK, "")
