"""api/convert.py: every domain type survives domain -> protobuf -> domain.

Values are chosen to be exact in float seconds and in nanoseconds, so a round
trip compares equal; where a message tells an unset field from an empty one,
both are tried.
"""

from __future__ import annotations

import pytest

from damselfly.api import cache_convert, convert
from damselfly.domain import (
    CacheExport,
    CacheImport,
    DownloadStarted,
    HostInfo,
    HostType,
    LocalTaskInfo,
    PeerInfo,
    PersistentCachePeerInfo,
    PersistentCacheTaskInfo,
    PieceDownloaded,
    PieceInfo,
    TaskInfo,
    TrafficType,
)

TASK = "a" * 64
WALL = 1_700_000_000.5
HOST = HostInfo(
    id="10.0.0.1-h", hostname="h", ip="10.0.0.1", port=4000, download_port=4005, type=HostType.STRONG_SEED
)


@pytest.mark.parametrize(
    "task",
    [
        TaskInfo(id=TASK),
        TaskInfo(
            id=TASK,
            url="http://origin/f",
            digest="sha256:" + "b" * 64,
            tag="t",
            application="app",
            filtered_query_params=["sig", "expires"],
            content_length=10_000,
            piece_count=3,
            state="Succeeded",
            peer_count=4,
            has_available_peer=True,
        ),
        TaskInfo(id=TASK, tag="", application="", digest=""),  # sent empty, not left out
    ],
)
def test_task_round_trips(task: TaskInfo) -> None:
    assert convert.task_from_pb(convert.task_to_pb(task)) == task


def test_an_unset_tag_is_not_an_empty_one() -> None:
    assert not convert.task_to_pb(TaskInfo(id=TASK)).HasField("tag")
    assert convert.task_to_pb(TaskInfo(id=TASK, tag="")).HasField("tag")


def test_peer_round_trips() -> None:
    peer = PeerInfo(
        id="p1",
        state="Running",
        task=TaskInfo(id=TASK, url="http://origin/f", tag="", content_length=5),
        host=HOST,
        need_back_to_source=True,
    )
    assert convert.peer_from_pb(convert.peer_to_pb(peer)) == peer


@pytest.mark.parametrize(("finished_at", "failed_at"), [(None, None), (WALL + 2, None), (None, WALL + 3)])
def test_local_task_round_trips(finished_at: float | None, failed_at: float | None) -> None:
    local = LocalTaskInfo(
        task_id=TASK,
        piece_length=4 << 20,
        content_length=9 << 20,
        response_header={"Content-Type": "application/octet-stream"},
        uploading_count=2,
        uploaded_count=7,
        created_at=WALL,
        updated_at=WALL + 1,
        finished_at=finished_at,
        failed_at=failed_at,
    )
    pb = convert.local_task_to_pb(local)
    assert pb.HasField("piece_length") and pb.HasField("content_length")
    assert convert.local_task_from_pb(pb) == local


CACHE_TASK = PersistentCacheTaskInfo(
    id=TASK,
    persistent_replica_count=3,
    current_persistent_replica_count=2,
    current_replica_count=2,
    tag="t",
    application="app",
    piece_length=4096,
    content_length=10_000,
    piece_count=3,
    state="Succeeded",
    ttl_s=3600.25,
    created_at=WALL,
    updated_at=WALL + 10,
)


@pytest.mark.parametrize("task", [CACHE_TASK, PersistentCacheTaskInfo(id=TASK, state="Pending")])
def test_persistent_cache_task_round_trips(task: PersistentCacheTaskInfo) -> None:
    assert cache_convert.cache_task_from_pb(cache_convert.cache_task_to_pb(task)) == task


def test_persistent_cache_task_expiry_from_its_creation_and_ttl() -> None:
    assert CACHE_TASK.expires_at(now=0.0) == WALL + 3600.25
    no_time = PersistentCacheTaskInfo(id=TASK, ttl_s=60.0)
    assert no_time.expires_at(now=WALL) == WALL + 60.0  # no creation time sent: from now
    assert PersistentCacheTaskInfo(id=TASK).expires_at(now=WALL) == 0.0  # no TTL: never


@pytest.mark.parametrize("host", [HOST, None])
def test_persistent_cache_peer_round_trips(host: HostInfo | None) -> None:
    peer = PersistentCachePeerInfo(id="cp1", task=CACHE_TASK, persistent=True, state="Succeeded", host=host)
    assert cache_convert.cache_peer_from_pb(cache_convert.cache_peer_to_pb(peer)) == peer


def test_persistent_cache_answer_round_trips() -> None:
    parents = [
        PersistentCachePeerInfo(id="cp1", task=CACHE_TASK, persistent=True, state="Succeeded", host=HOST),
        PersistentCachePeerInfo(id="cp2", task=CACHE_TASK, state="Succeeded", host=HOST),
    ]
    assert cache_convert.cache_answer_from_pb(cache_convert.cache_answer_to_pb(parents)) == parents
    empty = cache_convert.cache_answer_to_pb(None)
    assert empty.WhichOneof("response") == "empty_persistent_cache_task_response"
    assert cache_convert.cache_answer_from_pb(empty) is None


@pytest.mark.parametrize(
    "request_",
    [
        CacheImport(path="/data/f"),
        CacheImport(
            path="/data/f",
            persistent_replica_count=3,
            tag="t",
            application="app",
            piece_length=1 << 20,
            ttl_s=7200.0,
            content_for_calculating_task_id="my-model",
        ),
    ],
)
def test_cache_import_round_trips(request_: CacheImport) -> None:
    assert cache_convert.cache_import_from_pb(cache_convert.cache_import_to_pb(request_)) == request_


@pytest.mark.parametrize(
    "request_",
    [
        CacheExport(task_id=TASK),
        CacheExport(
            task_id="my-model",
            persistent=True,
            tag="t",
            application="app",
            output_path="/out/f",
            timeout_s=30.5,
            digest="sha256:" + "c" * 64,
            force_hard_link=True,
        ),
    ],
)
def test_cache_export_round_trips(request_: CacheExport) -> None:
    assert cache_convert.cache_export_from_pb(cache_convert.cache_export_to_pb(request_)) == request_


def test_cache_download_progress_round_trips() -> None:
    started = DownloadStarted(TASK, 10_000)
    piece = PieceDownloaded(
        TASK,
        PieceInfo(
            1, 4096, 4096, "crc32:7", parent_id="cp1", traffic_type=TrafficType.REMOTE_PEER, cost_s=0.5
        ),
    )
    for event in (started, piece):
        pb = cache_convert.cache_progress_to_pb("10.0.0.1-h", event)
        assert pb.host_id == "10.0.0.1-h" and pb.task_id == TASK
        assert cache_convert.cache_progress_from_pb(pb) == event
