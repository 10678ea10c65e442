"""Scenario tests: a scheduler, an origin and several daemons in one process."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import grpc

from damselfly.daemon.app import Daemon
from damselfly.daemon.download.tasks import task_id_for
from damselfly.daemon.store.piece_store import PieceStore
from damselfly.domain import DownloadSpec
from damselfly.units import MiB
from helpers.wait import TIMEOUT, until

from .harness import Swarm, corrupt, sha256_file


async def test_seed_fetches_origin_once_for_a_crowd(swarm: Swarm, tmp_path):
    size = 24 * MiB + 123
    src = swarm.file("crowd.bin", size)
    await swarm.add_daemon("seed", seed=True)
    names = [f"peer{i}" for i in range(4)]
    for n in names:
        await swarm.add_daemon(n)
    url = swarm.url("crowd.bin")
    results = await asyncio.gather(*(swarm.download(n, url, tmp_path / f"{n}.out") for n in names))
    assert all(r.ok for r in results), [r.details for r in results]
    want = sha256_file(src)
    for n in names:
        assert sha256_file(tmp_path / f"{n}.out") == want
    # One fetch of the file from the origin, by the seed peer.
    assert swarm.origin_bytes() <= size * 1.01
    tid = task_id_for(DownloadSpec(url=url))
    seed_meta = swarm.daemons["seed"].store.get(tid)
    assert seed_meta is not None and seed_meta.is_complete


async def test_second_download_is_a_local_hit(swarm: Swarm, tmp_path):
    src = swarm.file("hit.bin", 5 * MiB)
    await swarm.add_daemon("seed", seed=True)
    await swarm.add_daemon("peer")
    url = swarm.url("hit.bin")
    assert (await swarm.download("peer", url, tmp_path / "a")).ok
    before = swarm.origin_bytes()
    r = await swarm.download("peer", url, tmp_path / "b")
    assert r.ok and r.content_length == 5 * MiB
    assert sha256_file(tmp_path / "b") == sha256_file(src)
    assert swarm.origin_bytes() == before


async def test_corrupt_piece_at_parent_is_rejected_and_refetched(swarm: Swarm, tmp_path):
    size = 12 * MiB
    src = swarm.file("bad.bin", size)
    await swarm.add_daemon("seed", seed=True)
    await swarm.add_daemon("peer1")
    url = swarm.url("bad.bin")
    assert (await swarm.download("peer1", url, tmp_path / "p1")).ok
    tid = task_id_for(DownloadSpec(url=url))
    # Flip a byte in piece 1 at both holders; a new peer must not accept it.
    corrupt(swarm.daemons["seed"].store.content_path(tid), 4 * MiB + 10)
    corrupt(swarm.daemons["peer1"].store.content_path(tid), 4 * MiB + 10)
    await swarm.add_daemon("peer2")
    r = await swarm.download("peer2", url, tmp_path / "p2")
    assert r.ok, r.details
    assert sha256_file(tmp_path / "p2") == sha256_file(src)
    meta = swarm.daemons["peer2"].store.get(tid)
    assert meta is not None and meta.is_complete


async def test_origin_errors_are_clear_and_leave_no_output(swarm: Swarm, tmp_path):
    swarm.file("x.bin", MiB)
    await swarm.add_daemon("seed", seed=True)
    await swarm.add_daemon("peer")
    out = tmp_path / "out"
    r = await swarm.download("peer", swarm.url("x.bin", fault="404"), out)
    # As Dragonfly's dfdaemon: INTERNAL, the origin's status and headers as errordetails.v2.Backend
    # JSON in grpc-status-details-bin (C:dragonfly-client/src/grpc/dfdaemon_download.rs:395-420).
    assert not r.ok and r.code == grpc.StatusCode.INTERNAL and "404" in r.details
    backend = json.loads(r.trailers["grpc-status-details-bin"])
    assert backend["status_code"] == 404 and backend["message"].startswith("404")
    assert isinstance(backend["header"], dict) and backend["header"]
    assert not out.exists()
    r = await swarm.download("peer", swarm.url("x.bin", fault="500"), out)
    assert not r.ok and "500" in r.details and not out.exists()
    r = await swarm.download("peer", swarm.url("x.bin"), out, digest="sha256:" + "0" * 64)
    assert not r.ok and r.code == grpc.StatusCode.DATA_LOSS and not out.exists()
    r = await swarm.download("peer", "http://127.0.0.1:9/nothing", out)
    assert not r.ok and r.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION)
    assert not out.exists()


async def test_stop_waits_for_a_flush_already_under_way(swarm: Swarm) -> None:
    # A finished task's content is fsynced in a worker thread; stopping the daemon must not
    # leave that thread writing into the store (a restart on the same data dir raced it).
    d = await swarm.add_daemon("peer1")
    started, release = threading.Event(), threading.Event()
    flushed: list[str] = []

    def slow_flush(task_id: str) -> None:
        started.set()
        release.wait(TIMEOUT)
        flushed.append(task_id)

    d.store.make_durable = slow_flush  # type: ignore[method-assign]
    d._to_sync.put_nowait(("t" * 64, 0.0))  # due now
    await until(started.is_set, "the flush started in its thread")
    flushing = next(job for job in d._jobs if job.get_coro().__name__ == "_durable_loop")  # type: ignore[union-attr]
    stopping = asyncio.ensure_future(swarm.stop_daemon("peer1"))
    try:
        await until(lambda: flushing.cancelling() > 0, "stop() cancelled the flush loop")
        await asyncio.sleep(0)  # one turn of the loop: the cancel has reached the flush loop
        assert not flushing.done() and not stopping.done(), "stop() went on while the flush ran"
    finally:
        release.set()
    await asyncio.wait_for(stopping, TIMEOUT)
    assert flushed == ["t" * 64]


async def _downloaded_with_flush_delay(swarm: Swarm, tmp_path: Path, delay: float) -> tuple[Daemon, str]:
    """A daemon with ``storage.durableDelay`` ``delay`` that has just downloaded a 5 MiB file."""
    swarm.file("flush.bin", 5 * MiB)
    d = await swarm.add_daemon("peer1", storage={"durable_delay": delay})
    url = swarm.url("flush.bin")
    assert (await asyncio.wait_for(swarm.download("peer1", url, tmp_path / "out"), TIMEOUT)).ok
    return d, task_id_for(DownloadSpec(url=url))


async def test_the_export_does_not_wait_for_the_flush_of_its_content(swarm: Swarm, tmp_path):
    # The user's output (a hard link and a directory fsync) must not queue behind the bulk
    # fsync of the same content: here that flush cannot end until the download has answered.
    swarm.file("flush.bin", 5 * MiB)
    d = await swarm.add_daemon("peer1", storage={"durable_delay": 0})
    real_flush = d.store.make_durable
    release = threading.Event()

    def held_flush(task_id: str) -> None:
        release.wait(TIMEOUT)
        real_flush(task_id)

    d.store.make_durable = held_flush  # type: ignore[method-assign]
    url = swarm.url("flush.bin")
    try:
        r = await asyncio.wait_for(swarm.download("peer1", url, tmp_path / "out"), TIMEOUT)
    finally:
        release.set()
    assert r.ok, r.details
    assert sha256_file(tmp_path / "out") == sha256_file(swarm.root / "origin" / "flush.bin")
    meta = d.store.get(task_id_for(DownloadSpec(url=url)))
    assert meta is not None and meta.state == "succeeded"
    await until(lambda: meta.durable, "the content was flushed once its delay had passed")


async def test_content_waits_for_its_delay_and_stop_flushes_it(swarm: Swarm, tmp_path):
    d, tid = await _downloaded_with_flush_delay(swarm, tmp_path, 3600)
    await until(d._to_sync.empty, "the flush loop took the task")  # and now waits out its delay
    assert not d.store.get(tid).durable  # the download answered before its content was flushed
    await swarm.stop_daemon("peer1")
    reloaded = PieceStore(Path(d.config.storage.dir))
    meta = reloaded.get(tid)
    assert meta is not None and meta.durable and meta.is_complete


async def test_restarted_daemon_serves_what_it_had(swarm: Swarm, tmp_path):
    size = 9 * MiB
    src = swarm.file("keep.bin", size)
    await swarm.add_daemon("peer1")  # no seed: peer1 goes to the origin
    url = swarm.url("keep.bin")
    assert (await swarm.download("peer1", url, tmp_path / "a")).ok
    await swarm.stop_daemon("peer1")
    await swarm.add_daemon("peer1")  # same data dir
    before = swarm.origin_bytes()
    # The restored task is announced after the host: wait until the scheduler can offer it.
    tid = task_id_for(DownloadSpec(url=url))
    await until(lambda: swarm.task_available(tid), "the scheduler knows peer1 holds the task again")
    await swarm.add_daemon("peer2")
    r = await swarm.download("peer2", url, tmp_path / "b")
    assert r.ok, r.details
    assert sha256_file(tmp_path / "b") == sha256_file(src)
    assert swarm.origin_bytes() == before  # served by the restarted peer1, not the origin


async def test_parent_that_dies_midway_is_replaced(swarm: Swarm, tmp_path):
    size = 16 * MiB
    src = swarm.file("die.bin", size)
    await swarm.add_daemon("seed", seed=True)
    await swarm.add_daemon("peer")
    # The origin trickles, so the seed is still downloading when it is stopped.
    url = swarm.url("die.bin", fault="slow", query="rate=4194304")
    job = asyncio.ensure_future(swarm.download("peer", url, tmp_path / "out"))
    tid = task_id_for(DownloadSpec(url=url))

    def peer_has_a_piece() -> bool:
        meta = swarm.daemons["peer"].store.get(tid)
        return meta is not None and len(meta.pieces) >= 1

    await until(peer_has_a_piece, "the peer got a piece from the seed")
    await swarm.stop_daemon("seed")
    r = await asyncio.wait_for(job, 60)
    assert r.ok, r.details
    assert sha256_file(tmp_path / "out") == sha256_file(src)


async def test_credentials_do_not_reach_the_scheduler(swarm: Swarm, tmp_path, monkeypatch):
    from damselfly.scheduler import service as sched_service

    seen: list[dict[str, str]] = []
    original = sched_service.SchedulerService.handle

    def spy(self, request, stream):
        if request.WhichOneof("request") == "register_peer_request":
            seen.append(dict(request.register_peer_request.download.request_header))
        return original(self, request, stream)

    monkeypatch.setattr(sched_service.SchedulerService, "handle", spy)
    swarm.file("private.bin", MiB)
    await swarm.add_daemon("peer")
    headers = {"Authorization": "Bearer secret-token", "X-Trace": "1"}
    r = await swarm.download("peer", swarm.url("private.bin"), tmp_path / "o", request_header=headers)
    assert r.ok, r.details
    assert seen and all("Authorization" not in h for h in seen) and seen[0].get("X-Trace") == "1"


async def test_content_that_fails_its_digest_is_never_recorded_as_good(swarm: Swarm, tmp_path):
    import hashlib

    src = swarm.file("blob.bin", 6 * MiB)
    await swarm.add_daemon("seed", seed=True)
    await swarm.add_daemon("peer")
    url = swarm.url("blob.bin")
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    r = await swarm.download("peer", url, tmp_path / "out", digest=wrong)
    assert not r.ok and r.code == grpc.StatusCode.DATA_LOSS and not (tmp_path / "out").exists()
    tid = task_id_for(DownloadSpec(url=url))
    for name in ("seed", "peer"):  # neither the seed nor the peer keeps it as a good task
        meta = swarm.daemons[name].store.get(tid)
        assert meta is None or meta.state != "succeeded", name
    right = "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest()
    r = await swarm.download("peer", url, tmp_path / "out", digest=right)
    assert r.ok, r.details
    assert sha256_file(tmp_path / "out") == right.split(":")[1]


async def test_a_digest_checked_during_the_download_is_not_checked_again(swarm: Swarm, tmp_path, monkeypatch):
    # The content was hashed in order as its pieces landed; hashing the whole file again at the
    # end (seen on seeds: the stream saw the job done before its bookkeeping ran) costs 0.5 s/GiB.
    import hashlib

    from damselfly.daemon.download import output

    src = swarm.file("once.bin", 6 * MiB)
    await swarm.add_daemon("seed", seed=True)
    await swarm.add_daemon("peer")
    rehashed: list[str] = []
    real = output.verify_content

    def counting(content: Path, digest: str) -> None:
        rehashed.append(digest)
        real(content, digest)

    monkeypatch.setattr(output, "verify_content", counting)
    right = "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest()
    for i in range(3):
        url = swarm.url("once.bin", query=f"round={i}")
        r = await swarm.download("peer", url, tmp_path / f"out{i}", digest=right)
        assert r.ok, r.details
        assert sha256_file(tmp_path / f"out{i}") == right.split(":")[1]
    assert rehashed == []
