"""The piece port's limits as plain decisions (daemon/transfer/send_guard.py)."""

from __future__ import annotations

import pytest

from damselfly.daemon.transfer.send_guard import Connection, SendLimits, to_evict

MiB = 1024 * 1024


def test_defaults_let_a_5_mbit_link_shared_by_eight_pieces_finish_a_64_mib_piece() -> None:
    limits = SendLimits()
    share = 5_000_000 / 8 / 8  # bytes/s of one of eight pieces on a 5 mbit link
    assert limits.idle_timeout <= 5
    assert 64 * MiB / share < limits.budget(64 * MiB)
    assert limits.per_address >= 64


def test_budget_is_never_below_the_idle_timeout() -> None:
    limits = SendLimits(idle_timeout=2, min_rate=1 * MiB)
    assert limits.budget(1) == 2
    assert limits.budget(8 * MiB) == 8


@pytest.mark.parametrize("bad", [{"idle_timeout": 0}, {"min_rate": 0}, {"per_address": -1}])
def test_nonsense_limits_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SendLimits(**bad)  # type: ignore[arg-type]


def test_stalled_sends_go_first_then_the_longest_waiting() -> None:
    limits = SendLimits(idle_timeout=4)
    now = 100.0
    moving = Connection("a", 0, progress=99.5, sending=True)
    stalled_long = Connection("a", 0, progress=50, sending=True)
    stalled = Connection("a", 0, progress=90, sending=True)
    waiting_long = Connection("a", 0, progress=10)
    waiting = Connection("a", 0, progress=95)
    everyone = [moving, stalled, waiting, stalled_long, waiting_long]
    assert to_evict(everyone, limits, now) is stalled_long
    assert to_evict([moving, stalled, waiting, waiting_long], limits, now) is stalled
    assert to_evict([moving, waiting, waiting_long], limits, now) is waiting_long
    assert to_evict([moving, waiting], limits, now) is waiting
    assert to_evict([moving], limits, now) is None  # a send making progress is never evicted
