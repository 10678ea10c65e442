"""Rate limits on real transfers: a scheduler, an origin and daemons on loopback (one process).

The assertions are on tokens, never on elapsed time: every byte of a transfer
went through the right limiter, exactly once, and over any stretch of the
limiter's own clock it granted no more than its rate allows (plus one bucket),
which a slow machine cannot break. How close the achieved rate comes to the
configured one is measured by ``benchmarks/ratelimit.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from damselfly.api import dfdaemon_pb2, dfdaemon_pb2_grpc
from damselfly.config import load_daemon_config
from damselfly.daemon import download_rpc
from damselfly.daemon.app import Daemon
from damselfly.daemon.download.tasks import task_id_for
from damselfly.daemon.download_rpc import RATE_LIMIT_HEADER
from damselfly.daemon.ratelimit import ByteLimiter
from damselfly.daemon.transfer.piece_client import PieceClient
from damselfly.domain import DownloadSpec
from damselfly.errors import ResourceExhausted
from damselfly.units import MiB
from helpers.wait import wait_until
from swarm.harness import Swarm, sha256_file

RATE = 2_000_000  # bytes/s
SIZE = 4 * MiB  # 2.1 s at RATE; the first 200 kB ride the full bucket


def watch(limiter: ByteLimiter) -> list[tuple[float, int]]:
    """From now on, record each grant (+bytes) and refund (-bytes) of ``limiter``'s bucket
    at the time of the bucket's own clock when it happened."""
    bucket = limiter._bucket
    events: list[tuple[float, int]] = []
    take, give_back = bucket.try_take, bucket.give_back

    def try_take(n: int) -> bool:
        taken = take(n)
        if taken:
            events.append((bucket._last, min(n, bucket.burst)))
        return taken

    def refund(n: int) -> None:
        give_back(n)
        if n > 0:
            events.append((bucket._last, -n))

    bucket.try_take = try_take  # type: ignore[method-assign]
    bucket.give_back = refund  # type: ignore[method-assign]
    return events


def assert_within_the_limit(events: list[tuple[float, int]], limiter: ByteLimiter) -> None:
    """Over every stretch between two grants, the bytes granted (net of refunds) are at most
    the rate times the stretch plus one bucket: the limit held, however slow the machine."""
    assert events, "the limiter was never consulted"
    assert sum(n for _, n in events) == limiter.bytes_granted
    for i, (start, _) in enumerate(events):
        net = 0
        for when, n in events[i:]:
            net += n
            allowed = limiter.rate * (when - start) + limiter.burst
            assert net <= allowed + 1, f"{net} bytes in {when - start:.3f} s at {limiter!r}"


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[Swarm]:
    s = Swarm(tmp_path)
    await s.start()
    try:
        yield s
    finally:
        await s.close()


async def _seeded(swarm: Swarm, name: str, **seed_extra: object) -> str:
    """A seed daemon holding file ``name``; returns its URL."""
    swarm.file(name, SIZE)
    await swarm.add_daemon("seed", seed=True, **seed_extra)  # type: ignore[arg-type]
    url = swarm.url(name)
    assert (await swarm.download("seed", url)).ok
    return url


async def test_host_download_limit_applies_to_peer_bytes(swarm: Swarm, tmp_path: Path) -> None:
    url = await _seeded(swarm, "down.bin")
    peer = await swarm.add_daemon("peer", download={"bandwidth_limit": RATE})
    grants = watch(peer.limiters.download)
    r = await swarm.download("peer", url, tmp_path / "out")
    assert r.ok, r.details
    assert sha256_file(tmp_path / "out") == sha256_file(swarm.root / "origin" / "down.bin")
    assert peer.limiters.download.rate == RATE
    assert peer.limiters.download.bytes_granted == SIZE  # every byte, exactly once
    assert_within_the_limit(grants, peer.limiters.download)


async def test_host_upload_limit_applies_to_every_child(swarm: Swarm, tmp_path: Path) -> None:
    url = await _seeded(swarm, "up.bin", upload={"bandwidth_limit": RATE})
    seed = swarm.daemons["seed"]
    for n in ("p1", "p2"):
        await swarm.add_daemon(n)
    grants = watch(seed.limiters.upload)
    results = await asyncio.gather(*(swarm.download(n, url, tmp_path / f"{n}.out") for n in ("p1", "p2")))
    assert all(r.ok for r in results), [r.details for r in results]
    sent = seed.piece_server.bytes_sent
    assert sent >= SIZE  # at least one child was served by the seed
    assert seed.limiters.upload.bytes_granted == sent
    # Two children share one host limit: together they never got more than it allows.
    assert_within_the_limit(grants, seed.limiters.upload)


async def test_per_download_limit_via_header_is_consumed_not_forwarded(
    swarm: Swarm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await _seeded(swarm, "task.bin")
    peer = await swarm.add_daemon("peer")
    limits: list[tuple[ByteLimiter, list[tuple[float, int]]]] = []
    take_rate_limit = download_rpc.take_rate_limit

    def taken(spec: DownloadSpec) -> ByteLimiter | None:
        limiter = take_rate_limit(spec)
        if limiter is not None:
            limits.append((limiter, watch(limiter)))
        return limiter

    monkeypatch.setattr(download_rpc, "take_rate_limit", taken)
    seen: list[dict[str, str]] = []
    for d in (peer, swarm.daemons["seed"]):
        original = d.source.fetch_into

        async def spy(u: str, headers: dict[str, str], *a: object, _orig=original, **kw: object) -> int:
            seen.append(dict(headers))
            return await _orig(u, headers, *a, **kw)  # type: ignore[no-any-return]

        monkeypatch.setattr(d.source, "fetch_into", spy)
    before = swarm.origin_bytes()
    r = await swarm.download("peer", url, tmp_path / "out", request_header={RATE_LIMIT_HEADER: "2MB/s"})
    assert r.ok, r.details
    assert sha256_file(tmp_path / "out") == sha256_file(swarm.root / "origin" / "task.bin")
    assert swarm.origin_bytes() == before  # every byte came from the seed, on the limited path
    assert peer.limiters.download.unlimited  # the host has no limit...
    [(limiter, grants)] = limits  # ...the download had one, and every byte went through it
    assert limiter.rate == RATE and limiter.bytes_granted == SIZE
    assert_within_the_limit(grants, limiter)
    assert all(RATE_LIMIT_HEADER.lower() not in (k.lower() for k in h) for h in seen)


@pytest.mark.parametrize("fast_path", [True, False], ids=["rawhttp", "aiohttp"])
async def test_back_to_source_limit_counts_origin_bytes(
    swarm: Swarm, tmp_path: Path, fast_path: bool
) -> None:
    swarm.file("b2s.bin", SIZE)
    peer = await swarm.add_daemon("peer", download={"back_to_source_bandwidth_limit": RATE})
    peer.source.fast_path = fast_path  # both body paths take tokens from the same limiter
    r = await swarm.download("peer", swarm.url("b2s.bin"), tmp_path / "out")
    assert r.ok, r.details
    assert peer.limiters.back_to_source.bytes_granted == SIZE


async def test_piece_request_rate_limit_answers_resource_exhausted(swarm: Swarm, tmp_path: Path) -> None:
    # One request per 20 s: the second one is refused however slow the machine is.
    url = await _seeded(swarm, "req.bin", storage={"server": {"ip": "127.0.0.1", "tcp_port": 0,
                                                               "request_rate_limit": 0.05}})  # fmt: skip
    seed = swarm.daemons["seed"]
    tid = task_id_for(DownloadSpec(url=url))
    meta = seed.store.get(tid)
    assert meta is not None and meta.piece_length is not None
    client = await PieceClient.connect("127.0.0.1", seed.ports["piece_port"])
    client.damselfly = True  # Damselfly's request: many per connection, "busy" answered as such
    try:
        with open(tmp_path / "sink", "wb+") as sink:  # noqa: ASYNC230 (a test's scratch file)
            length = meta.pieces[0].length
            await client.download_piece(tid, 0, sink.fileno(), 0, length)  # the one allowed
            with pytest.raises(ResourceExhausted, match="too many piece requests"):
                await client.download_piece(tid, 0, sink.fileno(), 0, length)
        assert not client.broken  # refused cleanly: the connection stays usable
    finally:
        await client.close()
    assert seed.limiters.piece_requests.refused >= 1


async def test_upload_rpc_rate_limit_answers_resource_exhausted(swarm: Swarm) -> None:
    d = await swarm.add_daemon("peer", upload={"server": {"ip": "127.0.0.1", "port": 0,
                                                          "request_rate_limit": 1}})  # fmt: skip
    async with grpc.aio.insecure_channel(f"127.0.0.1:{d.ports['upload_port']}") as ch:
        stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(ch)
        codes = []
        for _ in range(3):
            try:
                await stub.StatTask(dfdaemon_pb2.StatTaskRequest(task_id="0" * 64))
            except grpc.aio.AioRpcError as e:
                codes.append(e.code())
    assert codes[0] == grpc.StatusCode.NOT_FOUND  # admitted, and the task is unknown
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes[1:]


def test_reload_applies_new_limits_from_the_config_file(tmp_path: Path) -> None:
    cfg_file = tmp_path / "daemon.yaml"
    cfg_file.write_text("download:\n  bandwidthLimit: 1000000\n")
    overrides = {"storage": {"dir": str(tmp_path / "data")}, "scheduler": {"addrs": []}}
    d = Daemon(load_daemon_config(cfg_file, overrides))
    assert d.limiters.download.rate == 1_000_000
    cfg_file.write_text(
        "download:\n  bandwidthLimit: 5000000\n  backToSourceBandwidthLimit: 3000000\n"
        "upload:\n  bandwidthLimit: 7000000\ngc:\n  taskTTL: 600\n"
    )
    d.reload_config()
    assert (d.limiters.download.rate, d.limiters.back_to_source.rate, d.limiters.upload.rate) == (
        5_000_000,
        3_000_000,
        7_000_000,
    )
    assert d.gc.policy.task_ttl == 600
    assert d.config.storage.dir == str(tmp_path / "data")
    cfg_file.write_text("download: [not, a, mapping]\n")
    d.reload_config()  # a broken file keeps the current limits
    assert d.limiters.download.rate == 5_000_000


def test_sighup_reloads_limits_in_a_running_daemon(short_tmp: Path) -> None:
    """A real daemon process: rewrite its config file, SIGHUP, the new limits are in force."""
    import os
    import signal

    from damselfly.runtime.children import python_module_command, spawn, stop_all

    cfg = short_tmp / "daemon.yaml"
    base = (
        "scheduler:\n  addrs: []\nmetrics:\n  enable: false\nproxy:\n  enable: false\n"
        "upload:\n  server: {ip: 127.0.0.1, port: 0}\n  bandwidthLimit: 1000000\n"
        "storage:\n  server: {ip: 127.0.0.1, tcpPort: 0}\n"
    )
    cfg.write_text(base)
    ready = short_tmp / "d.ready"
    log = short_tmp / "d.log"
    argv = python_module_command(
        "damselfly",
        "daemon",
        "--config",
        str(cfg),
        "--data-dir",
        str(short_tmp / "d"),
        "--ready-file",
        str(ready),
    )
    child = spawn("daemon", argv, log_path=log, ready_file=ready)
    try:
        child.wait_ready(30)
        cfg.write_text(base.replace("1000000", "7000000") + "download:\n  bandwidthLimit: 5000000\n")
        os.kill(child.pid, signal.SIGHUP)
        want = "reloaded limits: download 5 MB/s, upload 7 MB/s"
        wait_until(
            lambda: want in log.read_text(), lambda: f"{want!r} in the log:\n{log.read_text()[-2000:]}"
        )
        assert child.alive()
    finally:
        stop_all([child])
