"""The consistent-hash ring that places tasks on schedulers (daemon/scheduler_ring.py)."""

from __future__ import annotations

import hashlib
from collections import Counter

from damselfly.daemon.scheduler_ring import HashRing

NODES = ["10.0.0.1:8002", "10.0.0.2:8002", "10.0.0.3:8002"]
KEYS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(3000)]


def test_two_daemons_place_every_task_on_the_same_scheduler() -> None:
    # Built from the same addresses in another order (another daemon, another config file).
    a, b = HashRing(NODES), HashRing(reversed(NODES))
    assert [a.lookup(k) for k in KEYS] == [b.lookup(k) for k in KEYS]


def test_tasks_spread_over_all_schedulers() -> None:
    shares = Counter(HashRing(NODES).lookup(k) for k in KEYS)
    assert set(shares) == set(NODES)
    assert all(0.25 < n / len(KEYS) < 0.42 for n in shares.values()), shares


def test_a_dead_schedulers_tasks_move_to_the_others_and_no_other_task_moves() -> None:
    ring = HashRing(NODES)
    dead = NODES[1]
    before = {k: ring.lookup(k) for k in KEYS}
    after = {k: ring.lookup(k, lambda n: n != dead) for k in KEYS}
    without = HashRing([n for n in NODES if n != dead])
    assert after == {k: without.lookup(k) for k in KEYS}  # as if it had never been there
    assert dead not in after.values()
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == dead}
    # Its tasks go to both others, not all to one.
    assert len({after[k] for k in moved}) == 2
    # Back again: it takes exactly its own share back.
    assert {k: ring.lookup(k) for k in KEYS} == before


def test_no_live_scheduler_is_none() -> None:
    assert HashRing(NODES).lookup(KEYS[0], lambda n: False) is None
    assert HashRing().lookup(KEYS[0]) is None


def test_changing_the_nodes_keeps_the_tasks_of_the_ones_that_stay() -> None:
    ring = HashRing(NODES[:2])
    before = {k: ring.lookup(k) for k in KEYS}
    ring.set_nodes(NODES)
    after = {k: ring.lookup(k) for k in KEYS}
    assert ring.nodes == frozenset(NODES)
    assert all(after[k] in (before[k], NODES[2]) for k in KEYS)
