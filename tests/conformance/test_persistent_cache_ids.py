"""Persistent cache task IDs as Dragonfly computes them: one file imported anywhere is one task.

The vectors are Dragonfly's own, from the Rust client's unit test
``should_generate_persistent_cache_task_id`` in
``dragonfly-client-util/src/id_generator/mod.rs`` (dragonflyoss/client commit
ff17c0b7): a file holding ``This is a test file`` imported with the given
piece length, tag and application (``FileContentBased``), and the same text
given as ``content_for_calculating_task_id`` (``Content``). The daemon's
``UploadPersistentCacheTask`` is what ``dfcache import`` calls
(``dragonfly-client/src/grpc/dfdaemon_download.rs``, same commit: ``Content``
when the request has ``content_for_calculating_task_id``, else
``FileContentBased`` with the request's own ``piece_length``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from damselfly.api import dfdaemon_pb2, dfdaemon_pb2_grpc
from damselfly.daemon.persistent_cache import (
    named_task_id,
    persistent_cache_task_id,
    resolve_task_id,
    stage_file,
    task_id_suffix,
)
from swarm.harness import Swarm

CONTENT = b"This is a test file"

# (piece_length, tag, application) -> task ID; mod.rs should_generate_persistent_cache_task_id, ff17c0b7.
FILE_VECTORS = [
    ((1024, "tag1", "app1"), "7160a071a9acea5ac341e770c14d0211c38a4b15b3bbe2c5f848a706fd47419e"),
    ((None, "", "app1"), "0d0f8536f51227fda07141308f5ae8149b561b51b61c6517125f25dfa27acf5b"),
    ((None, "tag1", ""), "a98b76813681e30cf83733fe055792b86393bba6f18e3d89fd8c18253922d992"),
    ((1024, "", ""), "e894374a39e39cfa78c409cac02f2cdbb5605a24f5ff55c7bc2b624877556c03"),
]

# PersistentCacheTaskIDParameter::Content("This is a test file"); same test, same commit.
CONTENT_VECTOR = "e2d0fe1585a63ec6009c8016ff8dda8b17719a637405a4e23c0ff81339148249"


@pytest.mark.parametrize(("args", "expected"), FILE_VECTORS)
def test_file_ids_match_dragonflys_vectors(args: tuple[int | None, str, str], expected: str) -> None:
    piece_length, tag, application = args
    got = persistent_cache_task_id(CONTENT, tag=tag, application=application, piece_length=piece_length)
    assert got == expected


@pytest.mark.parametrize(("args", "expected"), FILE_VECTORS)
def test_the_import_copy_names_the_file_in_its_one_pass(
    tmp_path: Path, args: tuple[int | None, str, str], expected: str
) -> None:
    piece_length, tag, application = args
    (tmp_path / "src").write_bytes(CONTENT)
    suffix = task_id_suffix(tag=tag, application=application, piece_length=piece_length)
    staged = stage_file(tmp_path / "src", tmp_path / "dst", 4, id_suffix=suffix)
    assert staged.task_id == expected
    assert len(staged.pieces) == 5  # the piece length the copy used is not the one named in the ID


def test_a_named_task_is_the_sha256_of_the_name_alone() -> None:
    assert named_task_id(CONTENT.decode()) == CONTENT_VECTOR
    assert resolve_task_id(CONTENT.decode()) == CONTENT_VECTOR  # export, stat and delete by name


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[dfdaemon_pb2_grpc.DfdaemonDownloadStub]:
    swarm = Swarm(tmp_path)
    await swarm.start()
    d = await swarm.add_daemon("d1")
    channel = grpc.aio.insecure_channel(f"unix:{d.config.socket_path}")
    try:
        yield dfdaemon_pb2_grpc.DfdaemonDownloadStub(channel)
    finally:
        await channel.close()
        await swarm.close()


async def test_upload_persistent_cache_task_answers_dragonflys_ids(
    daemon: dfdaemon_pb2_grpc.DfdaemonDownloadStub, tmp_path: Path
) -> None:
    path = tmp_path / "testfile"
    path.write_bytes(CONTENT)
    for (piece_length, tag, application), expected in FILE_VECTORS:
        request = dfdaemon_pb2.UploadPersistentCacheTaskRequest(
            path=str(path), persistent_replica_count=1, piece_length=piece_length,
            tag=tag or None, application=application or None,
        )  # fmt: skip
        task = await daemon.UploadPersistentCacheTask(request)
        assert task.id == expected
    named = dfdaemon_pb2.UploadPersistentCacheTaskRequest(
        path=str(path), persistent_replica_count=1, tag="tag1",
        content_for_calculating_task_id=CONTENT.decode(),
    )  # fmt: skip
    assert (await daemon.UploadPersistentCacheTask(named)).id == CONTENT_VECTOR
    # Stat by the name finds the named task whatever tag it was imported with.
    stat = await daemon.StatPersistentCacheTask(
        dfdaemon_pb2.StatPersistentCacheTaskRequest(task_id=CONTENT.decode())
    )
    assert stat.id == CONTENT_VECTOR and stat.content_length == len(CONTENT)
