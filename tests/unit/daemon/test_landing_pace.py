"""The receive path's step size: a parent's pace sets how many bytes a recv waits for."""

from __future__ import annotations

from damselfly.daemon.transfer.landing import RECV_LOW_WATER, RECV_LOW_WATER_MIN, RECV_STEP_S, Pace


def test_unknown_pace_starts_small() -> None:
    assert Pace().low_water() == RECV_LOW_WATER_MIN


def test_the_step_is_what_the_parent_sends_in_a_step_s_time() -> None:
    pace = Pace()
    pace.note(65536, 65536 / 3_125_000)  # 25 mbit/s
    assert pace.low_water() == int(RECV_STEP_S * 3_125_000)
    fast = Pace()
    fast.note(1 << 20, 1e-5)  # found waiting: as fast as memory
    assert fast.low_water() == RECV_LOW_WATER
    crawl = Pace()
    crawl.note(16384, 2.0)  # a stalled parent
    assert crawl.low_water() == RECV_LOW_WATER_MIN


def test_a_stall_shortens_the_steps_more_than_a_burst_lengthens_them() -> None:
    pace = Pace()
    pace.note(131072, 131072 / 12_500_000)  # 100 mbit/s: about 125 KB a step
    steady = pace.low_water()
    burst = Pace(pace.seconds_per_byte)
    burst.note(131072, 1e-6)
    stall = Pace(pace.seconds_per_byte)
    stall.note(131072, 0.5)
    assert steady - stall.low_water() > burst.low_water() - steady
    assert stall.low_water() < steady <= burst.low_water()
