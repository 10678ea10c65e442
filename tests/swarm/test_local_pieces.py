"""Daemons on one host pass pieces as file descriptors (daemon/transfer/local_pieces.py), checked as ever."""

from __future__ import annotations

from damselfly.daemon.download.tasks import task_id_for
from damselfly.daemon.transfer import local_pieces
from damselfly.domain import DownloadSpec
from damselfly.units import MiB

from .harness import Swarm, corrupt, sha256_file

LOCAL = {"local_share": True}


async def test_a_same_host_child_copies_pieces_from_its_parents_file(swarm: Swarm, tmp_path):
    size = 24 * MiB + 5  # seven pieces of 4 MiB, the last one 5 bytes
    src = swarm.file("local.bin", size)
    seed = await swarm.add_daemon("seed", seed=True, storage=LOCAL)
    peer = await swarm.add_daemon("peer", storage=LOCAL)
    r = await swarm.download("peer", swarm.url("local.bin"), tmp_path / "out")
    assert r.ok, r.details
    assert sha256_file(tmp_path / "out") == sha256_file(src)
    assert swarm.origin_bytes() == size  # the seed fetched it once
    assert peer.pool.local is not None and peer.pool.local.pieces_copied == 7
    assert seed.local_server is not None and seed.local_server.pieces_shared == 7
    assert seed.piece_server.pieces_sent == 0  # nothing went over TCP


async def test_a_corrupt_piece_in_the_parents_file_is_caught_and_fetched_again(swarm: Swarm, tmp_path):
    src = swarm.file("bad.bin", 12 * MiB)
    await swarm.add_daemon("seed", seed=True, storage=LOCAL)
    await swarm.add_daemon("peer1", storage=LOCAL)
    url = swarm.url("bad.bin")
    assert (await swarm.download("peer1", url, tmp_path / "p1")).ok
    tid = task_id_for(DownloadSpec(url=url))
    # A byte of piece 1 flips on disk at both holders after they verified it.
    corrupt(swarm.daemons["seed"].store.content_path(tid), 4 * MiB + 10)
    corrupt(swarm.daemons["peer1"].store.content_path(tid), 4 * MiB + 10)
    await swarm.add_daemon("peer2", storage=LOCAL)
    r = await swarm.download("peer2", url, tmp_path / "p2")
    assert r.ok, r.details
    assert sha256_file(tmp_path / "p2") == sha256_file(src)
    meta = swarm.daemons["peer2"].store.get(tid)
    assert meta is not None and meta.is_complete
    assert meta.pieces[1].traffic_type.name == "BACK_TO_SOURCE"  # the bad copies were refused
    local = swarm.daemons["peer2"].pool.local
    assert local is not None and local.pieces_copied == 2  # pieces 0 and 2 came from a file


async def test_a_corrupt_local_piece_does_not_poison_the_content_digest(swarm: Swarm, tmp_path):
    # With a digest to check, pieces copied in order feed it on the way; the corrupt piece's
    # bytes were fed before its crc32 failed, and must not count.
    src = swarm.file("blob.bin", 12 * MiB)
    digest = f"sha256:{sha256_file(src)}"
    await swarm.add_daemon("seed", seed=True, storage=LOCAL)
    await swarm.add_daemon("peer1", storage=LOCAL)
    url = swarm.url("blob.bin")
    assert (await swarm.download("peer1", url, tmp_path / "p1", digest=digest)).ok
    tid = task_id_for(DownloadSpec(url=url, digest=digest))
    corrupt(swarm.daemons["seed"].store.content_path(tid), 4 * MiB + 10)
    corrupt(swarm.daemons["peer1"].store.content_path(tid), 4 * MiB + 10)
    await swarm.add_daemon("peer2", storage=LOCAL)
    r = await swarm.download("peer2", url, tmp_path / "p2", digest=digest)
    assert r.ok, r.details
    assert sha256_file(tmp_path / "p2") == sha256_file(src)
    local = swarm.daemons["peer2"].pool.local
    assert local is not None and local.pieces_copied == 2


async def test_a_parent_with_an_upload_limit_serves_over_tcp(swarm: Swarm, tmp_path):
    src = swarm.file("limited.bin", 8 * MiB)
    seed = await swarm.add_daemon("seed", seed=True, storage=LOCAL, upload={"bandwidth_limit": 200 * MiB})
    peer = await swarm.add_daemon("peer", storage=LOCAL)
    r = await swarm.download("peer", swarm.url("limited.bin"), tmp_path / "out")
    assert r.ok, r.details
    assert sha256_file(tmp_path / "out") == sha256_file(src)
    assert peer.pool.local is not None and peer.pool.local.pieces_copied == 0
    assert seed.piece_server.pieces_sent == 2  # the limit is honoured on the TCP path


async def test_a_parent_of_another_user_is_not_trusted(swarm: Swarm, tmp_path, monkeypatch):
    # Both ends check the other's uid (SO_PEERCRED); here every uid counts as foreign.
    monkeypatch.setattr(local_pieces, "_trusted", lambda uid: False)
    src = swarm.file("foreign.bin", 8 * MiB)
    seed = await swarm.add_daemon("seed", seed=True, storage=LOCAL)
    peer = await swarm.add_daemon("peer", storage=LOCAL)
    r = await swarm.download("peer", swarm.url("foreign.bin"), tmp_path / "out")
    assert r.ok, r.details
    assert sha256_file(tmp_path / "out") == sha256_file(src)
    assert peer.pool.local is not None and peer.pool.local.pieces_copied == 0
    assert seed.local_server is not None and seed.local_server.pieces_shared == 0
    assert seed.piece_server.pieces_sent == 2
