"""ByteLimiter: grants, fairness between consumers, the burst bound, run-time changes.

Time is a fake clock that the limiter's injected ``sleep`` advances, so these
run in milliseconds and assert exact numbers.
"""

from __future__ import annotations

import asyncio

import pytest

from damselfly.daemon.ratelimit import MAX_GRANT, MIN_GRANT, ByteLimiter, LimiterChain, chain
from damselfly.units import KiB, MiB
from helpers.wait import until


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def limiter(rate: float, burst: int | None = None) -> tuple[ByteLimiter, FakeTime]:
    t = FakeTime()
    return ByteLimiter(rate, burst=burst, clock=t, sleep=t.sleep), t


async def test_consume_takes_rate_time_after_the_initial_burst() -> None:
    lim, t = limiter(1 * MiB, burst=64 * KiB)
    await lim.consume(64 * KiB)  # the full bucket: no wait
    assert t.now == 0
    await lim.consume(10 * MiB)
    assert t.now == pytest.approx(10.0)
    assert lim.bytes_granted == 10 * MiB + 64 * KiB


async def test_grants_never_exceed_the_grant_size_or_the_ask() -> None:
    lim, _ = limiter(100 * MiB)  # default burst: 10 MiB; a grant is 10 ms of the rate
    assert lim.grant_size == MiB
    assert await lim.acquire(10 * MiB) == MiB
    assert await lim.acquire(1000) == 1000
    fast, _ = limiter(10_000 * MiB)
    assert fast.grant_size == MAX_GRANT
    slow, _ = limiter(1 * MiB)
    assert slow.grant_size == MIN_GRANT
    small, _ = limiter(1000, burst=300)
    assert small.grant_size == 300
    assert await small.acquire(10_000) == 300


async def test_four_consumers_get_equal_shares() -> None:
    lim, t = limiter(8 * MiB, burst=256 * KiB)
    got = [0, 0, 0, 0]

    async def consumer(i: int, ask: int) -> None:
        while t.now < 20:
            got[i] += await lim.acquire(ask)
            await asyncio.sleep(0)

    # Different appetites: the grant size is the quantum, so shares stay equal.
    await asyncio.gather(*(consumer(i, ask) for i, ask in enumerate([64 * KiB, MiB, 4 * MiB, 256 * KiB])))
    total = sum(got)
    assert total == pytest.approx(8 * MiB * 20 + 256 * KiB, rel=0.02)
    # 64 KiB asks get 64 KiB turns: a quarter of the turns, less of the bytes. The
    # others ask at least a grant per turn and split the rest evenly.
    assert got[1] == pytest.approx(got[2], rel=0.05)
    assert got[1] == pytest.approx(got[3], rel=0.05)


async def test_equal_consumers_within_five_percent_of_a_quarter() -> None:
    lim, t = limiter(4 * MiB, burst=128 * KiB)
    got = [0] * 4

    async def consumer(i: int) -> None:
        while t.now < 20:
            got[i] += await lim.acquire(MiB)
            await asyncio.sleep(0)

    await asyncio.gather(*(consumer(i) for i in range(4)))
    share = sum(got) / 4
    for g in got:
        assert abs(g - share) / share < 0.05


async def test_bursts_never_exceed_the_bucket() -> None:
    rate, burst = 1 * MiB, 100 * KiB
    lim, t = limiter(rate, burst=burst)
    grants: list[tuple[float, int]] = []

    async def consumer() -> None:
        while t.now < 5:
            n = await lim.acquire(3 * burst)
            grants.append((t.now, n))
            await asyncio.sleep(0)

    await asyncio.gather(consumer(), consumer(), consumer())
    # In every window [a, b] of grant times, bytes granted <= burst + rate * (b - a).
    for i, (a, _) in enumerate(grants):
        total = 0
        for b, n in grants[i:]:
            total += n
            assert total <= burst + rate * (b - a) + 1e-6


async def test_refund_gives_unused_bytes_back() -> None:
    lim, t = limiter(1000, burst=1000)
    n = await lim.acquire(1000)
    lim.refund(n - 10)
    assert lim.bytes_granted == 10
    await lim.consume(990)
    assert t.now == 0  # served from the refund, no wait


async def test_unlimited_never_waits() -> None:
    lim, t = limiter(0)
    await lim.consume(10**12)
    assert t.now == 0
    assert lim.unlimited


async def test_raising_the_limit_wakes_a_waiter_at_once() -> None:
    lim = ByteLimiter(1, burst=64 * KiB)  # real time: 1 byte/s
    await lim.consume(64 * KiB)
    waiter = asyncio.ensure_future(lim.consume(64 * KiB))  # would take 18 hours
    await until(lambda: lim.waiting == 1, "the consumer waits for tokens")
    assert not waiter.done()
    lim.set_rate(0)
    await asyncio.wait_for(waiter, 5)


async def test_chain_takes_every_limit_and_grants_at_most_the_smallest_quantum() -> None:
    t = FakeTime()
    host = ByteLimiter(10 * MiB, burst=1 * MiB, clock=t, sleep=t.sleep)
    task = ByteLimiter(1 * MiB, burst=64 * KiB, clock=t, sleep=t.sleep)
    both = chain(host, task)
    assert isinstance(both, LimiterChain)
    assert both.grant_size == 64 * KiB
    await both.consume(5 * MiB)
    assert t.now == pytest.approx(5 - 64 * KiB / MiB, rel=0.01)  # the task's limit rules
    assert host.bytes_granted == task.bytes_granted == 5 * MiB
    assert chain(None, ByteLimiter(0)) is None
    assert chain(host, None) is host


async def test_turns_are_fair_per_task_not_per_connection() -> None:
    lim, t = limiter(4 * MiB, burst=256 * KiB)
    got: dict[str, int] = {"many": 0, "one": 0, "two": 0}

    async def connection(task: str) -> None:
        while t.now < 20:
            n = await lim.acquire(MiB, task)  # not `got[task] += await ...`: that reads before awaiting
            got[task] += n
            await asyncio.sleep(0)

    conns = ["many"] * 8 + ["one"] + ["two"] * 2
    await asyncio.gather(*(connection(task) for task in conns))
    share = sum(got.values()) / 3
    for task, n in got.items():
        assert abs(n - share) / share < 0.05, (task, got)
    assert lim.waiting == 0


async def test_a_cancelled_waiter_does_not_stall_the_others() -> None:
    lim = ByteLimiter(1, burst=64 * KiB)  # real time, 1 byte/s: the head sleeps "forever"
    await lim.consume(64 * KiB)
    head = asyncio.ensure_future(lim.acquire(1000, "a"))
    behind = asyncio.ensure_future(lim.acquire(1000, "b"))
    queued = asyncio.ensure_future(lim.acquire(1000, "a"))
    await until(lambda: lim.waiting == 3, "the three asks wait")
    head.cancel()
    queued.cancel()
    await asyncio.gather(head, queued, return_exceptions=True)
    assert lim.waiting == 1
    lim.set_rate(0)
    assert await asyncio.wait_for(behind, 5) == 1000
    assert lim.waiting == 0


async def test_tasks_with_small_asks_still_get_equal_bytes() -> None:
    lim, t = limiter(8 * MiB, burst=256 * KiB)
    got = [0, 0, 0, 0]

    async def consumer(i: int, ask: int) -> None:
        while t.now < 20:
            got[i] += await lim.acquire(ask, key=i)
            await asyncio.sleep(0)

    # Fair in bytes, not in turns: a task asking 48 KiB at a time is served more often.
    await asyncio.gather(*(consumer(i, ask) for i, ask in enumerate([48 * KiB, MiB, 4 * MiB, 100 * KiB])))
    for g in got:
        assert g == pytest.approx(sum(got) / 4, rel=0.05), got


async def test_a_task_that_steps_away_briefly_keeps_its_share() -> None:
    lim, t = limiter(8 * MiB, burst=256 * KiB)
    got = {"a": 0, "b": 0, "c": 0, "io": 0}

    async def always(key: str) -> None:
        while t.now < 20:
            n = await lim.acquire(MiB, key)
            got[key] += n

    async def io_bound() -> None:
        while t.now < 20:
            n = await lim.acquire(MiB, "io")
            got["io"] += n
            await asyncio.sleep(0)  # its one connection is busy with I/O for a moment

    await asyncio.gather(*(always(k) for k in "abc" for _ in range(2)), io_bound())
    # Back in time for its next tag: it is not sent behind every other task.
    for n in got.values():
        assert n == pytest.approx(sum(got.values()) / 4, rel=0.05), got
