"""tc command lines for egress and ifb ingress shaping, and rate parsing."""

from __future__ import annotations

import pytest

from damselfly.errors import InvalidArgument
from damselfly.testbed.shaping import (
    MIN_BURST_BYTES,
    burst_bytes,
    format_rate,
    parse_rate,
    shaping_commands,
)


@pytest.mark.parametrize(
    ("text", "bits"),
    [("100mbit", 100_000_000), ("25Mbit", 25_000_000), ("1gbit", 10**9), ("512kbit", 512_000),
     ("10mbps", 80_000_000), ("1000", 1000), ("2.5mbit", 2_500_000)],
)  # fmt: skip
def test_parse_rate(text: str, bits: int) -> None:
    assert parse_rate(text) == bits


@pytest.mark.parametrize("text", ["", "fast", "100 mib", "-5mbit", "0"])
def test_parse_rate_refuses(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_rate(text)


def test_format_rate_round_trips() -> None:
    for bits in (100_000_000, 25_000_000, 10**9, 512_000, 1234):
        assert parse_rate(format_rate(bits)) == bits
    assert format_rate(100_000_000) == "100mbit"


def test_burst_holds_a_gso_packet_and_grows_with_the_rate() -> None:
    assert burst_bytes(1_000_000) == MIN_BURST_BYTES
    assert burst_bytes(10**10) > MIN_BURST_BYTES


def test_both_directions() -> None:
    cmds = shaping_commands("ns1", "eth0", "ifb0", up_bits=100_000_000, down_bits=25_000_000)
    egress, *ingress = cmds
    assert egress[:9] == ["tc", "-n", "ns1", "qdisc", "replace", "dev", "eth0", "root", "tbf"]
    assert egress[egress.index("rate") + 1] == "100mbit"
    assert ["ip", "-n", "ns1", "link", "add", "ifb0", "type", "ifb"] in ingress
    tbf = next(c for c in ingress if "tbf" in c)
    assert tbf[tbf.index("dev") + 1] == "ifb0" and tbf[tbf.index("rate") + 1] == "25mbit"
    redirect = next(c for c in ingress if "mirred" in c)
    assert redirect[redirect.index("dev") + 1] == "eth0" and redirect[-1] == "ifb0"
    # The ifb exists before anything points at it.
    assert cmds.index(ingress[0]) < cmds.index(redirect)


def test_unshaped_directions_build_nothing() -> None:
    assert shaping_commands("ns", "eth0", "ifb0", up_bits=None, down_bits=None) == []
    only_up = shaping_commands("ns", "eth0", "ifb0", up_bits=1000, down_bits=None)
    assert len(only_up) == 1 and "ifb" not in " ".join(only_up[0])
