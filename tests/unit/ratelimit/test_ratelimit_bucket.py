"""Token-bucket arithmetic on a fake clock: no sleeping."""

from __future__ import annotations

import pytest

from damselfly.daemon.ratelimit import MIN_BURST, RequestLimiter, TokenBucket, default_burst


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_starts_full_and_refills_at_rate_up_to_burst() -> None:
    clock = Clock()
    b = TokenBucket(1000, 500, clock=clock)
    assert b.tokens == 500
    assert b.try_take(500)
    assert not b.try_take(1)
    clock.now += 0.25
    assert b.tokens == pytest.approx(250)
    clock.now += 10
    assert b.tokens == 500  # capped at the burst


def test_delay_is_the_time_to_earn_the_missing_tokens() -> None:
    clock = Clock()
    b = TokenBucket(1000, 1000, clock=clock)
    assert b.delay(1000) == 0
    b.try_take(1000)
    assert b.delay(100) == pytest.approx(0.1)
    clock.now += 0.05
    assert b.delay(100) == pytest.approx(0.05)
    # An ask above the bucket is capped to it: it can never be granted whole.
    assert b.delay(10_000) == pytest.approx(0.95)


def test_unlimited_grants_everything() -> None:
    b = TokenBucket(0, clock=Clock())
    assert b.unlimited
    assert b.delay(10**12) == 0
    assert all(b.try_take(10**9) for _ in range(100))


def test_set_rate_keeps_earned_tokens_capped_by_the_new_burst() -> None:
    clock = Clock()
    b = TokenBucket(1000, 1000, clock=clock)
    b.set_rate(10_000, 200)
    assert b.tokens == 200
    b.try_take(200)
    clock.now += 0.01
    assert b.tokens == pytest.approx(100)  # the new rate from now on
    with pytest.raises(ValueError):
        b.set_rate(-1)


def test_give_back_returns_unused_tokens() -> None:
    clock = Clock()
    b = TokenBucket(100, 100, clock=clock)
    b.try_take(100)
    b.give_back(30)
    assert b.tokens == pytest.approx(30)
    b.give_back(1000)
    assert b.tokens == 100


def test_default_burst_is_a_tenth_of_a_second_with_a_floor() -> None:
    assert default_burst(100e6) == 10_000_000
    assert default_burst(1000) == MIN_BURST


def test_request_limiter_allows_the_rate_and_counts_refusals() -> None:
    clock = Clock()
    r = RequestLimiter(10, clock=clock)
    assert sum(r.allow() for _ in range(20)) == 10  # a burst of one second's worth
    assert r.refused == 10
    clock.now += 0.5
    assert sum(r.allow() for _ in range(20)) == 5
    r.set_rate(0)
    assert all(r.allow() for _ in range(1000))
