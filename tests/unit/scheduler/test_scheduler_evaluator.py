"""The default evaluator's ordering and the bad-parent rules."""

from __future__ import annotations

import pytest
from sched_world import World

from damselfly.errors import ConfigError
from damselfly.scheduler.evaluator import DefaultEvaluator, get_evaluator, is_bad_parent, location_score
from damselfly.scheduler.resources import PeerState

MB = 1_000_000


def rank(w: World, child_host: str, *parents: str) -> list[str]:
    child = w.peer("child", child_host)
    cands = [w.res.peer(p) for p in parents]
    return [p.id for p in w.evaluator.rank(cands, child, 4, w.clock())]


def test_idle_host_beats_busy_host() -> None:
    w = World()
    w.host("busy", max_tx_bandwidth=100 * MB, tx_bandwidth=90 * MB)
    w.host("idle", max_tx_bandwidth=100 * MB, tx_bandwidth=10 * MB)
    w.peer("p-busy", "busy", state=PeerState.SUCCEEDED)
    w.peer("p-idle", "idle", state=PeerState.SUCCEEDED)
    assert rank(w, "c", "p-busy", "p-idle") == ["p-idle", "p-busy"]


def test_free_upload_slots_count() -> None:
    w = World()
    full = w.host("full")
    w.peer("p-full", full, state=PeerState.SUCCEEDED)
    w.peer("p-free", "free", state=PeerState.SUCCEEDED)
    full.children = 150
    assert rank(w, "c", "p-full", "p-free") == ["p-free", "p-full"]


def test_same_idc_then_location_prefix() -> None:
    w = World()
    w.host("c", idc="idc1", location="cn|hz|a")
    w.host("far", idc="idc2", location="us|ny|b")
    w.host("near", idc="idc2", location="cn|hz|b")
    w.host("same-idc", idc="idc1", location="us|ny|b")
    for h in ("far", "near", "same-idc"):
        w.peer(f"p-{h}", h, state=PeerState.SUCCEEDED)
    assert rank(w, "c", "p-far", "p-near", "p-same-idc") == ["p-same-idc", "p-near", "p-far"]


def test_location_score_is_matched_prefix_over_longest() -> None:
    assert location_score("a|b|c", "a|b|d") == pytest.approx(2 / 3)
    assert location_score("a|b", "a|b|c|d") == pytest.approx(0.5)
    assert location_score("x|b", "a|b") == 0.0
    assert location_score("", "a") == 0.0


def test_normal_peers_with_pieces_beat_seeds_and_seeds_beat_empty_peers() -> None:
    w = World()
    w.peer("seed", w.host("s", seed=True), state=PeerState.SUCCEEDED, pieces=10)
    w.peer("normal", "n", state=PeerState.RUNNING, pieces=1)
    w.peer("empty", "e", state=PeerState.RUNNING)
    assert rank(w, "c", "empty", "seed", "normal") == ["normal", "seed", "empty"]


def test_ties_go_to_the_parent_with_more_pieces() -> None:
    w = World()
    w.peer("few", "a", state=PeerState.RUNNING, pieces=2)
    w.peer("many", "b", state=PeerState.RUNNING, pieces=9)
    w.peer("done", "d", state=PeerState.SUCCEEDED)
    w.task().piece_count = 20
    assert rank(w, "c", "few", "many", "done") == ["done", "many", "few"]


def test_bad_parent_with_few_samples_is_twenty_times_the_mean() -> None:
    assert not is_bad_parent([1.0])
    assert not is_bad_parent([1.0, 1.0, 19.0])
    assert is_bad_parent([1.0, 1.0, 21.0])
    assert not is_bad_parent([0.5] * 10 + [1.5])  # 3x slower is not enough with few samples


def test_bad_parent_with_many_samples_is_three_sigma() -> None:
    steady = [1.0, 1.2] * 20  # mean 1.1, sigma 0.1
    assert not is_bad_parent([*steady, 1.35])
    assert is_bad_parent([*steady, 1.45])  # > mean + 3 sigma, far below 20x the mean


def test_evaluator_reads_served_costs() -> None:
    w = World()
    p = w.peer("p", "a", state=PeerState.RUNNING)
    p.served_costs.extend([0.01, 0.01, 0.5])
    assert w.evaluator.is_bad_parent(p)


def test_registry_by_name() -> None:
    assert isinstance(get_evaluator("default"), DefaultEvaluator)
    with pytest.raises(ConfigError, match="default"):
        get_evaluator("nope")
