"""The preheat RPCs in-process: a fake downloader and registry stand in for daemons and the registry.

What must hold: seed hosts hold a task before other hosts are asked for it;
every (task, host) pair gets an outcome; blob downloads carry the registry's
Authorization to the daemon and the task ID the mirror will use; failures and
refusals end the RPC with a status that says what happened.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import pytest
from google.protobuf import empty_pb2

from damselfly import ids
from damselfly import registry_client as rc
from damselfly.api import scheduler_pb2
from damselfly.domain import DownloadSpec, HostInfo, HostType
from damselfly.errors import NotFound, SchedulerError
from damselfly.scheduler.preheat import PreheatItem, PreheatPlan, Targets, task_id_of
from damselfly.scheduler.preheat_rpc import PreheatRunner
from damselfly.scheduler.resources import PeerState, Resources

REF = rc.ImageRef("https://reg.example", "team/app", "v1")
BLOBS = [
    rc.BlobRef(f"sha256:{c * 64}", 10 * (i + 1), "", REF.blob_url(f"sha256:{c * 64}"))
    for i, c in enumerate("abc")
]
AUTH = "Bearer registry-token"


class Aborted(Exception):
    pass


@dataclass
class Context:
    code: Any = None
    details: str = ""

    async def abort(self, code: Any, details: str) -> None:
        self.code, self.details = code, details
        raise Aborted(details)


@dataclass
class Daemons:
    """Records every download asked of every host; fails or hangs where told."""

    calls: list[tuple[str, DownloadSpec]] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (start|end, host, url)
    fail: dict[tuple[str, str], str] = field(default_factory=dict)
    hang: set[str] = field(default_factory=set)
    running: int = 0
    max_running: int = 0

    async def download(self, host: HostInfo, spec: DownloadSpec) -> None:
        self.calls.append((host.hostname, spec))
        self.events.append(("start", host.hostname, spec.url))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(0)
            if host.hostname in self.hang:
                await asyncio.Event().wait()
            error = self.fail.get((host.hostname, spec.url))
            if error:
                raise SchedulerError(error)
        finally:
            self.running -= 1
            self.events.append(("end", host.hostname, spec.url))


class Registry:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []

    async def resolve(self, ref: rc.ImageRef, **kw: Any) -> rc.ResolvedImage:
        self.calls.append({"ref": ref, **kw})
        if self.error:
            raise self.error
        return rc.ResolvedImage(ref, "sha256:" + "f" * 64, "linux/amd64", list(BLOBS), AUTH)

    async def close(self) -> None:
        pass


def info(name: str, *, seed: bool = False) -> HostInfo:
    t = HostType.SUPER_SEED if seed else HostType.NORMAL
    return HostInfo(
        id=f"10.0.0.1-{name}", hostname=name, ip=f"10.0.0.{len(name)}", port=4000, download_port=4005, type=t
    )


def world(*hosts: HostInfo) -> Resources:
    res = Resources()
    for h in hosts:
        res.upsert_host(h, 0.0)
    return res


def runner_for(res: Resources, daemons: Daemons, registry: Registry) -> PreheatRunner:
    return PreheatRunner(res, downloader=daemons.download, registry=cast(rc.RegistryClient, registry))


def plan(
    items: list[str], targets: Targets, *, tasks: int = 8, peers: int = 50, timeout: float = 60.0
) -> PreheatPlan:
    its = tuple(PreheatItem(DownloadSpec(url=u), u) for u in items)
    return PreheatPlan("test", its, targets, tasks, peers, timeout)


async def test_seeds_hold_each_task_before_other_hosts_are_asked() -> None:
    daemons = Daemons()
    runner = runner_for(Resources(), daemons, Registry())
    targets = Targets((info("s1", seed=True), info("s2", seed=True)), (info("p1"), info("p2")))
    report = await runner.run(plan(["https://o.example/u1", "https://o.example/u2"], targets))
    assert not report.failures and len(report.outcomes) == 8 and report.done
    for url in ("https://o.example/u1", "https://o.example/u2"):
        ev = [(kind, h) for kind, h, u in daemons.events if u == url]
        last_seed_end = max(i for i, (kind, h) in enumerate(ev) if kind == "end" and h.startswith("s"))
        first_other_start = min(i for i, (kind, h) in enumerate(ev) if kind == "start" and h.startswith("p"))
        assert last_seed_end < first_other_start, ev


async def test_concurrency_limits_hold() -> None:
    daemons = Daemons()
    runner = runner_for(Resources(), daemons, Registry())
    targets = Targets((), tuple(info(f"p{i}") for i in range(6)))
    urls = ["https://o.example/u1", "https://o.example/u2", "https://o.example/u3"]
    await runner.run(plan(urls, targets, tasks=1, peers=2))
    assert daemons.max_running == 2
    assert len(daemons.calls) == 18


async def test_failures_and_timeouts_are_outcomes() -> None:
    daemons = Daemons(fail={("p1", "https://o.example/u1"): "origin answered 404"}, hang={"p2"})
    runner = runner_for(Resources(), daemons, Registry())
    targets = Targets((), (info("p1"), info("p2"), info("p3")))
    report = await runner.run(plan(["https://o.example/u1"], targets, timeout=0.2))
    errors = {o.host_id.split("-")[1]: o.error for o in report.outcomes}
    assert errors == {"p1": "origin answered 404", "p2": "timed out (the preheat's timeout)", "p3": ""}


async def test_preheat_image_sends_blob_downloads_as_the_mirror_asks_for_them() -> None:
    daemons = Daemons()
    registry = Registry()
    res = world(info("s1", seed=True), info("p1"))
    runner = runner_for(res, daemons, registry)
    request = scheduler_pb2.PreheatImageRequest(
        url=REF.manifest_url,
        username="alice",
        password="pw",
        platform="linux/amd64",
        header={"X-Trace": "1"},
        enable_task_id_based_blob_digest=True,
    )
    answer = await runner.preheat_image(request, Context())
    assert answer == empty_pb2.Empty()
    assert [h for h, _ in daemons.calls] == ["s1"] * 3  # single_seed_peer by default
    for (_, spec), blob in zip(daemons.calls, BLOBS, strict=True):
        assert spec.url == blob.url and spec.digest == blob.digest
        assert spec.request_header == {"X-Trace": "1", "Authorization": AUTH}
        assert task_id_of(spec) == blob.digest.removeprefix("sha256:")  # Dragonfly's blob task ID
    assert registry.calls[0]["username"] == "alice" and registry.calls[0]["platform"] == "linux/amd64"

    # All peers, URL-based task IDs: every host, seed first.
    daemons.calls.clear()
    request.scope = "all_peers"
    request.enable_task_id_based_blob_digest = False
    await runner.preheat_image(request, Context())
    assert sorted(h for h, _ in daemons.calls) == ["p1"] * 3 + ["s1"] * 3
    assert all(task_id_of(spec) == ids.task_id(spec.url) for _, spec in daemons.calls)


async def test_preheat_image_refusals_and_failures_end_the_rpc() -> None:
    res = world(info("s1", seed=True))
    ctx = Context()
    runner = runner_for(res, Daemons(), Registry(NotFound("team/app:v9 not found")))
    with pytest.raises(Aborted):
        await runner.preheat_image(scheduler_pb2.PreheatImageRequest(url=REF.manifest_url), ctx)
    assert ctx.code == grpc.StatusCode.NOT_FOUND and "v9 not found" in ctx.details

    daemons = Daemons(fail={("s1", BLOBS[1].url): "origin answered 500"})
    runner = runner_for(res, daemons, Registry())
    ctx = Context()
    with pytest.raises(Aborted):
        await runner.preheat_image(scheduler_pb2.PreheatImageRequest(url=REF.manifest_url), ctx)
    assert ctx.code == grpc.StatusCode.ABORTED
    assert "2 of 3 downloads succeeded" in ctx.details and f"{BLOBS[1].digest} on 10.0.0.1-s1" in ctx.details

    ctx = Context()
    no_seed = runner_for(world(info("p1")), daemons, Registry())
    with pytest.raises(Aborted):
        await no_seed.preheat_image(scheduler_pb2.PreheatImageRequest(url=REF.manifest_url), ctx)
    assert ctx.code == grpc.StatusCode.NOT_FOUND and "no seed host" in ctx.details

    ctx = Context()
    with pytest.raises(Aborted):
        await runner.preheat_file(scheduler_pb2.PreheatFileRequest(url="https://o/f", scope="nobody"), ctx)
    assert ctx.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_stat_image_and_stat_file_report_holders() -> None:
    s1, p1 = info("s1", seed=True), info("p1")
    res = world(s1, p1)
    registry = Registry()
    runner = runner_for(res, Daemons(), registry)
    by_digest = [DownloadSpec(url=b.url, enable_task_id_based_blob_digest=True) for b in BLOBS]
    # s1 holds blob 0 and is fetching blob 1; p1 failed blob 0.
    for n, (hid, spec, state) in enumerate(
        [
            (s1.id, by_digest[0], PeerState.SUCCEEDED),
            (s1.id, by_digest[1], PeerState.RUNNING),
            (p1.id, by_digest[0], PeerState.FAILED),
        ]
    ):
        task = res.get_or_create_task(task_id_of(spec), spec, 0.0)
        peer = res.create_peer(f"peer-{n}", task, res.hosts[hid], spec, 0.0)
        res.set_state(peer, state, 0.0)
    request = scheduler_pb2.StatImageRequest(url=REF.manifest_url, enable_task_id_based_blob_digest=True)
    answer = await runner.stat_image(request, Context())
    assert [(la.url, la.is_finished) for la in answer.image.layers] == [
        (BLOBS[0].url, True),
        (BLOBS[1].url, False),
        (BLOBS[2].url, False),
    ]
    assert [(p.hostname, [(la.url, la.is_finished) for la in p.cached_layers]) for p in answer.peers] == [
        ("s1", [(BLOBS[0].url, True), (BLOBS[1].url, False)])
    ]
    await runner.stat_image(request, Context())
    assert len(registry.calls) == 1  # a recent resolve with the same credentials is reused

    file_spec = DownloadSpec(url="https://o.example/f")
    task = res.get_or_create_task(task_id_of(file_spec), file_spec, 0.0)
    res.set_state(res.create_peer("peer-f", task, res.hosts[p1.id], file_spec, 0.0), PeerState.SUCCEEDED, 0.0)
    files = await runner.stat_file(scheduler_pb2.StatFileRequest(url="https://o.example/f"), Context())
    assert [(p.hostname, [(f.url, f.is_finished) for f in p.cached_files]) for p in files.peers] == [
        ("p1", [("https://o.example/f", True)])
    ]
