"""Preheat policy: which hosts a scope picks, task IDs as the daemon computes them, reports."""

from __future__ import annotations

import pytest

from damselfly.daemon.download.tasks import task_id_for
from damselfly.domain import DownloadSpec, HostInfo, HostType
from damselfly.errors import InvalidArgument, NotFound
from damselfly.scheduler.preheat import (
    HostLoad,
    Outcome,
    PreheatReport,
    Scope,
    clamp,
    select_hosts,
    task_id_of,
)


def host(name: str, *, seed: bool = False, ip: str = "", load: float = 0.0, shared: bool = True) -> HostLoad:
    info = HostInfo(
        id=f"{ip or name}-{name}",
        hostname=name,
        ip=ip or f"10.0.0.{abs(hash(name)) % 250 + 1}",
        port=4000,
        download_port=4005,
        type=HostType.SUPER_SEED if seed else HostType.NORMAL,
        disable_shared=not shared,
    )
    return HostLoad(info, load)


HOSTS = [
    host("s1", seed=True, ip="10.0.0.1", load=0.5),
    host("s2", seed=True, ip="10.0.0.2", load=0.1),
    host("p1", ip="10.0.1.1"),
    host("p2", ip="10.0.1.2"),
    host("p3", ip="10.0.1.3"),
    host("p4", ip="10.0.1.4", shared=False),
]


def names(hosts: tuple[HostInfo, ...]) -> list[str]:
    return [h.hostname for h in hosts]


def test_scope_parse() -> None:
    assert Scope.parse("") is Scope.SINGLE_SEED_PEER
    assert Scope.parse("ALL_PEERS") is Scope.ALL_PEERS
    with pytest.raises(InvalidArgument, match="single_seed_peer, all_seed_peers, all_peers"):
        Scope.parse("everyone")


def test_single_seed_peer_is_the_least_loaded_seed() -> None:
    t = select_hosts(HOSTS, Scope.SINGLE_SEED_PEER)
    assert names(t.seeds) == ["s2"] and t.others == ()


def test_all_seed_peers_and_all_peers_skip_hosts_that_do_not_share() -> None:
    assert names(select_hosts(HOSTS, Scope.ALL_SEED_PEERS).all) == ["s2", "s1"]
    t = select_hosts(HOSTS, Scope.ALL_PEERS)
    assert names(t.seeds) == ["s2", "s1"] and sorted(names(t.others)) == ["p1", "p2", "p3"]


def test_count_and_percentage_narrow_all_peers_seeds_first() -> None:
    assert names(select_hosts(HOSTS, Scope.ALL_PEERS, count=3).all) == ["s2", "s1", "p1"]
    assert len(select_hosts(HOSTS, Scope.ALL_PEERS, count=99).all) == 5
    # 5 usable hosts: 40% is 2, 1% still picks one.
    assert names(select_hosts(HOSTS, Scope.ALL_PEERS, percentage=40).all) == ["s2", "s1"]
    assert len(select_hosts(HOSTS, Scope.ALL_PEERS, percentage=1).all) == 1
    assert len(select_hosts(HOSTS, Scope.ALL_PEERS, count=2, percentage=100).all) == 2  # count wins
    with pytest.raises(InvalidArgument):
        select_hosts(HOSTS, Scope.ALL_PEERS, percentage=0)
    with pytest.raises(InvalidArgument):
        select_hosts(HOSTS, Scope.ALL_PEERS, count=0)


def test_ips_pick_hosts_and_win_over_count() -> None:
    t = select_hosts(HOSTS, Scope.ALL_PEERS, ips=["10.0.1.3", "10.0.0.1"], count=1)
    assert names(t.seeds) == ["s1"] and names(t.others) == ["p3"]
    assert names(select_hosts(HOSTS, Scope.SINGLE_SEED_PEER, ips=["10.0.0.1"]).all) == ["s1"]
    with pytest.raises(NotFound, match=r"10\.0\.1\.1"):
        select_hosts(HOSTS, Scope.ALL_SEED_PEERS, ips=["10.0.1.1"])  # not a seed
    with pytest.raises(NotFound, match=r"10\.9\.9\.9"):
        select_hosts(HOSTS, Scope.ALL_PEERS, ips=["10.0.1.1", "10.9.9.9"])


def test_no_host_in_scope_is_an_error() -> None:
    normal_only = [h for h in HOSTS if not h.info.type.is_seed]
    with pytest.raises(NotFound, match="no seed host"):
        select_hosts(normal_only, Scope.SINGLE_SEED_PEER)
    with pytest.raises(NotFound, match="no host"):
        select_hosts([], Scope.ALL_PEERS)


@pytest.mark.parametrize(
    "spec",
    [
        DownloadSpec(url="https://o.example/f?X-Amz-Signature=x&a=1"),
        DownloadSpec(url="https://o.example/f", tag="t", application="app", piece_length=4 << 20),
        DownloadSpec(url="https://o.example/f?sig=1&a=2", filtered_query_params=["sig"]),
        DownloadSpec(
            url="https://r.example/v2/a/blobs/sha256:" + "c" * 64, enable_task_id_based_blob_digest=True
        ),
        DownloadSpec(url="https://r.example/v2/a/blobs/x", enable_task_id_based_blob_digest=True, tag="t"),
        DownloadSpec(url="https://r.example/v2/a/blobs/x", content_for_calculating_task_id="name", tag="t"),
    ],
)
def test_task_id_of_matches_the_daemon(spec: DownloadSpec) -> None:
    assert task_id_of(spec) == task_id_for(spec)


def test_report_summary_lists_failures() -> None:
    r = PreheatReport("reg/app:v1")
    r.outcomes += [Outcome("sha256:a", "t1", "h1"), Outcome("sha256:b", "t2", "h1", "origin answered 404")]
    assert (
        r.summary(2)
        == "preheat reg/app:v1: 1 of 2 downloads succeeded; failed: sha256:b on h1: origin answered 404"
    )
    assert [o.item for o in r.failures] == ["sha256:b"]


def test_clamp() -> None:
    assert clamp(None, 8) == 8 and clamp(0, 8) == 8 and clamp(-3, 8) == 8
    assert clamp(3, 8) == 3 and clamp(10_000, 8, high=100) == 100
