"""tc command lines for egress and ifb ingress shaping, and rate parsing."""

from __future__ import annotations

import pytest

from damselfly.errors import InvalidArgument
from damselfly.testbed.shaping import (
    ACK_FIRST,
    FIFO,
    LATENCY_MS,
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
    cmds = shaping_commands("ns1", "eth0", "ifb0", up_bits=100_000_000, down_bits=25_000_000, queue=FIFO)
    egress, *ingress = cmds
    assert egress[:8] == ["tc", "-n", "ns1", "qdisc", "replace", "dev", "eth0", "root"]
    assert "tbf" in egress
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
    only_up = shaping_commands("ns", "eth0", "ifb0", up_bits=1000, down_bits=None, queue=FIFO)
    assert len(only_up) == 1 and "ifb" not in " ".join(only_up[0])
    only_up = shaping_commands("ns", "eth0", "ifb0", up_bits=1000, down_bits=None)
    assert only_up and all("ifb0" not in c for c in only_up)


def _on(cmds: list[list[str]], dev: str) -> list[list[str]]:
    return [c for c in cmds if c[:2] == ["tc", "-n"] and c[c.index("dev") + 1] == dev]


@pytest.mark.parametrize("dev", ["eth0", "ifb0"])
def test_ack_first_puts_pure_acks_in_a_band_served_first(dev: str) -> None:
    cmds = _on(shaping_commands("ns", "eth0", "ifb0", up_bits=100_000_000, down_bits=100_000_000), dev)
    root = cmds[0]
    assert root[root.index("root") + 1 :][:3] == ["handle", "1:", "tbf"]  # the bucket still shapes
    assert root[root.index("rate") + 1] == "100mbit"
    htb = next(c for c in cmds if "htb" in c and "qdisc" in c)
    assert htb[htb.index("parent") + 1] == "1:1" and htb[htb.index("handle") + 1] == "10:"
    classes = {c[c.index("classid") + 1]: c for c in cmds if "class" in c}
    assert classes["10:1"][classes["10:1"].index("prio") + 1] == "0"
    assert classes["10:2"][classes["10:2"].index("prio") + 1] == "1"
    # The classes never throttle: only the bucket does. (tc wants the classid before the kind.)
    for c in classes.values():
        assert c.index("classid") < c.index("htb") < c.index("rate")
        assert parse_rate(c[c.index("rate") + 1]) > 100_000_000
    # Each band holds LATENCY_MS of the rate, as the plain bucket's queue does.
    for leaf in ("10:1", "10:2"):
        q = next(c for c in cmds if "bfifo" in c and c[c.index("parent") + 1] == leaf)
        assert int(q[q.index("limit") + 1]) == 100_000_000 // 8 * LATENCY_MS // 1000
    (flt,) = [c for c in cmds if "filter" in c and c[c.index("parent") + 1] == "10:"]
    text = " ".join(flt)
    assert "match ip protocol 6 0xff" in text  # TCP...
    assert "match u16 0 0xff80 at 2" in text  # ...with an IP total length under 128 bytes
    assert flt[-1] == "10:1" and flt[-2] == "flowid"
    # The default band is data.
    assert htb[htb.index("default") + 1] == "2"


def test_queue_is_checked() -> None:
    assert ACK_FIRST != FIFO
    with pytest.raises(InvalidArgument, match="link queue"):
        shaping_commands("ns", "eth0", "ifb0", up_bits=1000, down_bits=1000, queue="red")
