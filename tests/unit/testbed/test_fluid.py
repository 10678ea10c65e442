"""The fluid bound: each of the three terms can bind, and bad inputs are refused."""

from __future__ import annotations

import pytest

from damselfly.errors import InvalidArgument
from damselfly.testbed.fluid import Link, fluid_bound
from damselfly.units import MiB

F = 256 * MiB
MBIT = 1_000_000 / 8  # bytes/s


def test_homogeneous_flash_crowd_is_bound_by_the_server() -> None:
    # 8 peers + 1 seed at 100 mbit, origin 100 mbit: N F / (u_s + N u) = 9/10 F/u < F/u_s.
    hosts = [Link(100 * MBIT, 100 * MBIT)] * 9
    b = fluid_bound(F, 100 * MBIT, hosts)
    assert b.t_min == pytest.approx(F / (100 * MBIT))
    assert b.binding == "server"
    assert b.aggregate_term == pytest.approx(9 * F / (1000 * MBIT))
    assert b.t_min == pytest.approx(21.47483648)


def test_the_slowest_downloader_binds() -> None:
    hosts = [Link(100 * MBIT, 100 * MBIT)] * 6 + [Link(25 * MBIT, 25 * MBIT)] * 2
    b = fluid_bound(F, 100 * MBIT, hosts)
    assert b.binding == "download"
    assert b.t_min == pytest.approx(F / (25 * MBIT))


def test_weak_uploaders_make_the_aggregate_bind() -> None:
    # Peers that barely upload: the origin must feed everyone.
    hosts = [Link(1 * MBIT, 1000 * MBIT)] * 10
    b = fluid_bound(F, 100 * MBIT, hosts)
    assert b.binding == "aggregate"
    assert b.t_min == pytest.approx(10 * F / (110 * MBIT))


@pytest.mark.parametrize(
    ("size", "server", "hosts"),
    [(-1, 1.0, [Link(1, 1)]), (1, 0.0, [Link(1, 1)]), (1, 1.0, []), (1, 1.0, [Link(1, 0)])],
)
def test_bad_inputs_are_refused(size: int, server: float, hosts: list[Link]) -> None:
    with pytest.raises(InvalidArgument):
        fluid_bound(size, server, hosts)
