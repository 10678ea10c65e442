"""DownloadTask on the daemon's unix socket as Rust's dfget calls it: the content streamed, the output kept.

One daemon in-process (tests/swarm/harness.py: a scheduler, an origin, real
gRPC on the unix socket). The requests are the ones Rust's dfget sends and the
answers what Rust's dfdaemon gives, from dragonflyoss/client commit ff17c0b7:

* G = ``dragonfly-client/src/bin/dfget/main.rs``: the ``DownloadTaskRequest`` built
  in ``download`` (``--transfer-from-dfdaemon``: ``output_path`` None and
  ``need_piece_content`` true; ``overwrite`` from ``--overwrite``; priority 6,
  timeout 2h, the default filtered query params), and the loop that reads the
  answer: the started message's ``pieces`` are the pieces to come, each
  ``DownloadPieceFinishedResponse.piece.content`` is written at ``piece.offset``,
  and a piece listed but never received fails the download ("download incomplete").
* T = ``dragonfly-client/src/resource/task.rs``: the started message lists the
  "interested pieces" (number, offset, length), then one piece message per piece,
  with its bytes when ``need_piece_content``.
* D = ``dragonfly-client/src/grpc/dfdaemon_download.rs``: an ``output_path`` that
  exists (and is not the task's own content) is refused unless ``overwrite``.

Where Damselfly answers differently on purpose, the test says so and why.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from damselfly import ids
from damselfly.api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc
from damselfly.daemon.app import Daemon
from swarm.harness import Swarm

PIECE = 4 * 1024 * 1024  # Damselfly's and Dragonfly's piece length for a file this size
SIZE = 2 * PIECE + 12345  # three pieces, the last one short


class Env:
    def __init__(self, swarm: Swarm, daemon: Daemon) -> None:
        self.swarm = swarm
        self.daemon = daemon
        self.channel = grpc.aio.insecure_channel(
            f"unix:{daemon.config.socket_path}",
            # Rust's dfget lifts tonic's 4 MiB decoding limit; a piece message is a piece long.
            options=[("grpc.max_receive_message_length", -1)],
        )
        self.local = dfdaemon_pb2_grpc.DfdaemonDownloadStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    swarm = Swarm(tmp_path)
    await swarm.start()
    daemon = await swarm.add_daemon("d1")
    e = Env(swarm, daemon)
    try:
        yield e
    finally:
        await e.close()
        await swarm.close()


def rust_dfget_request(
    url: str, *, output: Path | None = None, overwrite: bool = False, digest: str | None = None
) -> dfdaemon_pb2.DownloadTaskRequest:
    """The request Rust's dfget sends (G, ``download``): with no output, ``--transfer-from-dfdaemon``."""
    download = common_pb2.Download(
        url=url,
        type=common_pb2.TaskType.Value("STANDARD"),
        tag="",
        application="",
        priority=common_pb2.Priority.Value("LEVEL6"),
        filtered_query_params=list(ids.DEFAULT_FILTERED_QUERY_PARAMS),
        timeout=duration_pb2.Duration(seconds=2 * 3600),
        need_back_to_source=False,
        disable_back_to_source=False,
        need_piece_content=output is None,
        force_hard_link=False,
        remote_ip="127.0.0.1",
        overwrite=overwrite,
    )
    if output is not None:
        download.output_path = str(output)
    if digest is not None:
        download.digest = digest
    return dfdaemon_pb2.DownloadTaskRequest(download=download)


async def _answers(env: Env, request: dfdaemon_pb2.DownloadTaskRequest) -> list[Any]:
    return [msg async for msg in env.local.DownloadTask(request)]


def _check_streamed(messages: list[Any], content: bytes) -> list[int]:
    """Rust dfget's checks (G): a started message first, every listed piece then arrives with its
    bytes at its offset. Returns the piece numbers in the order they came."""
    assert messages[0].WhichOneof("response") == "download_task_started_response"
    started = messages[0].download_task_started_response
    assert started.content_length == len(content)
    # T: the interested pieces, every piece of the content.
    assert [(p.number, p.offset, p.length) for p in started.pieces] == [
        (0, 0, PIECE),
        (1, PIECE, PIECE),
        (2, 2 * PIECE, SIZE - 2 * PIECE),
    ]
    order = []
    for msg in messages[1:]:
        assert msg.WhichOneof("response") == "download_piece_finished_response"
        piece = msg.download_piece_finished_response.piece
        assert piece.HasField("content"), f"piece {piece.number} came without its content"
        assert piece.content == content[piece.offset : piece.offset + piece.length]
        order.append(piece.number)
    assert sorted(order) == [0, 1, 2]  # each once: Rust's dfget ends with none remaining
    return order


async def test_need_piece_content_streams_every_piece_of_a_held_task_in_order(env: Env) -> None:
    env.swarm.file("held.bin", SIZE)
    content = (env.swarm.root / "origin" / "held.bin").read_bytes()
    url = env.swarm.url("held.bin")
    assert (await env.swarm.download("d1", url)).ok
    messages = await _answers(env, rust_dfget_request(url))
    assert messages[0].download_task_started_response.is_finished
    assert _check_streamed(messages, content) == [0, 1, 2]


async def test_need_piece_content_streams_a_download_as_it_lands(env: Env) -> None:
    env.swarm.file("fresh.bin", SIZE)
    content = (env.swarm.root / "origin" / "fresh.bin").read_bytes()
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    messages = await _answers(env, rust_dfget_request(env.swarm.url("fresh.bin"), digest=digest))
    _check_streamed(messages, content)


async def test_an_existing_output_is_refused_unless_overwrite(env: Env, tmp_path: Path) -> None:
    env.swarm.file("out.bin", SIZE)
    content = (env.swarm.root / "origin" / "out.bin").read_bytes()
    url = env.swarm.url("out.bin")
    out = tmp_path / "exists.bin"
    out.write_bytes(b"keep me")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _answers(env, rust_dfget_request(url, output=out))
    # D refuses with INTERNAL "output path <p> is already exists"; Damselfly says INVALID_ARGUMENT,
    # as for every other bad output path, so its dfget names it an output error (exit 7).
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"output path {out} already exists" in (e.value.details() or "")
    assert out.read_bytes() == b"keep me"

    await _answers(env, rust_dfget_request(url, output=out, overwrite=True))
    assert out.read_bytes() == content
    # The output is a hard link to the task's (read-only) stored content: asked again without
    # overwrite, it is already the task's file and stays, as D keeps an output of the same inode.
    (task,) = [m.task_id for m in env.daemon.store.tasks() if m.url == url]
    held = env.daemon.store.content_path(task)
    await _answers(env, rust_dfget_request(url, output=out))
    assert out.read_bytes() == content
    assert out.stat().st_ino == held.stat().st_ino
