import random

import pytest

from damselfly.daemon.download.picker import ParentView, PickState, get_picker, rarest_first, sequential


def state(missing, parents, in_flight=()):
    return PickState(set(missing), set(in_flight), parents, random.Random(7))


def test_rarest_piece_first():
    parents = {
        "a": ParentView(pieces={0, 1, 2}),
        "b": ParentView(pieces={0, 1}),
        "c": ParentView(pieces={0}),
    }
    assert rarest_first(state({0, 1, 2}, parents)) == (2, "a")


def test_skips_in_flight_and_unheld_pieces():
    parents = {"a": ParentView(pieces={0, 1})}
    assert rarest_first(state({0, 1, 5}, parents, in_flight={0})) == (1, "a")
    assert rarest_first(state({5}, parents)) is None


def test_least_loaded_holder_wins():
    parents = {"a": ParentView(pieces={3}, in_flight=3), "b": ParentView(pieces={3}, in_flight=1)}
    assert rarest_first(state({3}, parents)) == (3, "b")


def test_full_parents_get_nothing():
    parents = {"a": ParentView(pieces={0, 1}, in_flight=4, max_in_flight=4)}
    assert rarest_first(state({0, 1}, parents)) is None
    assert sequential(state({0, 1}, parents)) is None


def test_spreads_choices_among_equally_rare_pieces():
    parents = {"a": ParentView(pieces=set(range(64)))}
    picks = {
        rarest_first(PickState(set(range(64)), set(), parents, random.Random(seed)))[0] for seed in range(20)
    }
    assert len(picks) > 5  # peers starting together should not all ask for piece 0


def test_sequential_takes_lowest():
    parents = {"a": ParentView(pieces={4, 2, 9})}
    assert sequential(state({9, 4, 2}, parents)) == (2, "a")


def test_unknown_picker_name():
    with pytest.raises(ValueError, match="unknown piece picker"):
        get_picker("nope")


def test_busy_parent_is_left_alone_until_ready():
    parents = {"a": ParentView(pieces={0}, ready_at=5.0), "b": ParentView(pieces={1})}
    assert rarest_first(PickState({0, 1}, set(), parents, random.Random(1), now=4.0)) == (1, "b")
    assert rarest_first(PickState({0}, set(), parents, random.Random(1), now=4.0)) is None
    assert rarest_first(PickState({0}, set(), parents, random.Random(1), now=5.0)) == (0, "a")
