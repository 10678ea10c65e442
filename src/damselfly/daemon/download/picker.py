"""Which piece to fetch next, and from which parent: pure policy, chosen by name.

A picker sees plain state (what is missing, what is in flight, which parent
holds what and how busy each parent is) and returns an assignment; the
conductor carries it out. Policies:

* ``rarest-first`` (default): among missing pieces that some usable parent
  holds, take those held by the fewest parents, break ties at random, and give
  the piece to the least-loaded parent that holds it (ties: the parent with
  the lower mean piece cost). Peers that start together then hold different
  pieces early and can trade.
* ``sequential``: lowest piece number first (useful for streaming reads).

Both take pieces in order from parents that serve only whole pieces
(:attr:`ParentView.whole_pieces`: a Dragonfly parent, or any parent of a
daemon on Dragonfly's wire): such a parent passes a piece on only once it
holds it whole, so its children see pieces in the order they finish there,
and a child that took them at random would hold back the ones its own
children wait for.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field


@dataclass(slots=True)
class ParentView:
    """What the conductor knows about one parent when picking."""

    pieces: set[int]
    in_flight: int = 0
    max_in_flight: int = 4
    mean_cost_s: float = 0.0
    ready_at: float = 0.0  # a busy parent is left alone until then
    # Pieces this parent sent elsewhere (super-seeding): not asked for again until then.
    skip: dict[int, float] = field(default_factory=dict)
    # It announces and serves only pieces it holds whole (Dragonfly's wire): store and forward.
    whole_pieces: bool = False

    def offers(self, number: int, now: float) -> bool:
        return number in self.pieces and (not self.skip or self.skip.get(number, 0.0) <= now)


@dataclass(slots=True)
class PickState:
    missing: Set[int]
    in_flight: Set[int]
    parents: Mapping[str, ParentView]
    rng: random.Random = field(default_factory=random.Random)
    now: float = 0.0


Picker = Callable[[PickState], tuple[int, str] | None]


def _usable(state: PickState) -> dict[str, ParentView]:
    return {
        pid: p
        for pid, p in state.parents.items()
        if p.in_flight < p.max_in_flight and p.ready_at <= state.now
    }


def _best_parent(candidates: list[tuple[str, ParentView]], rng: random.Random) -> str:
    rng.shuffle(candidates)
    return min(candidates, key=lambda kv: (kv[1].in_flight, kv[1].mean_cost_s))[0]


def rarest_first(state: PickState) -> tuple[int, str] | None:
    usable = _usable(state)
    if not usable:
        return None
    if all(p.whole_pieces for p in usable.values()):
        return sequential(state)
    wanted = state.missing - state.in_flight
    # Set intersections first: near the swarm's frontier most wanted pieces are held by no
    # parent, and this runs at every wake-up of the conductor.
    offered: set[int] = set()
    for p in usable.values():
        mine = p.pieces & wanted
        if p.skip:
            mine = {n for n in mine if p.offers(n, state.now)}
        offered |= mine
    if not offered:
        return None
    counts = dict.fromkeys(offered, 0)
    for p in state.parents.values():
        for number in p.pieces & offered:
            counts[number] += 1
    fewest = min(counts.values())
    best = [n for n, c in counts.items() if c == fewest]
    best.sort()  # the random choice below depends on the seed, not on set order
    number = state.rng.choice(best)
    holders = [(pid, p) for pid, p in usable.items() if p.offers(number, state.now)]
    return number, _best_parent(holders, state.rng)


def sequential(state: PickState) -> tuple[int, str] | None:
    usable = _usable(state)
    for number in sorted(state.missing - state.in_flight):
        holders = [(pid, p) for pid, p in usable.items() if p.offers(number, state.now)]
        if holders:
            return number, _best_parent(holders, state.rng)
    return None


PICKERS: dict[str, Picker] = {"rarest-first": rarest_first, "sequential": sequential}


def get_picker(name: str) -> Picker:
    try:
        return PICKERS[name]
    except KeyError:
        raise ValueError(f"unknown piece picker {name!r}; choose one of {sorted(PICKERS)}") from None
