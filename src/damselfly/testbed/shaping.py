"""Per-host bandwidth shaping with ``tc``: a token bucket on egress and, through
an ``ifb`` device, on ingress.

Why ``tbf`` and ``ifb``: a qdisc shapes only what leaves a device, so the
download side is shaped by redirecting everything arriving on the host's
interface to an ``ifb`` device (``ingress`` qdisc + a match-all ``u32`` filter
with ``mirred egress redirect``) and shaping what leaves *that*. netem (latency,
loss) is not available in this kernel, so the links are rate-only.

The functions here only build command lines (lists of strings); running them is
:class:`damselfly.testbed.netns.Runner`'s job, so the shapes are unit-tested.
"""

from __future__ import annotations

import re

from ..errors import InvalidArgument

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)(bit|bps)?\s*$", re.IGNORECASE)
_SCALE = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}

# The bucket must hold at least one GSO super-packet (veth does TSO: up to 64 KiB)
# or tbf has to split them; beyond that, a few milliseconds of traffic.
MIN_BURST_BYTES = 64 * 1024
BURST_SECONDS = 0.004
# How long a packet may wait in the bucket's queue before tbf drops it.
LATENCY_MS = 100


def parse_rate(text: str | int) -> int:
    """``"100mbit"`` -> 100_000_000 bits/s. Accepts ``bit`` (decimal k/m/g) and
    ``bps`` (bytes per second, as tc does: ``"10mbps"`` is 80 Mbit/s); a bare
    number is bits/s."""
    if isinstance(text, int):
        if text <= 0:
            raise InvalidArgument(f"a rate must be > 0, not {text}")
        return text
    m = _RATE.match(text)
    if not m:
        raise InvalidArgument(f"not a rate: {text!r} (try 100mbit, 25mbit, 1gbit)")
    value = float(m.group(1)) * _SCALE[m.group(2).lower()]
    if (m.group(3) or "bit").lower() == "bps":
        value *= 8
    if value < 1:
        raise InvalidArgument(f"a rate must be > 0: {text!r}")
    return int(value)


def format_rate(bits_per_s: int) -> str:
    """The shortest exact tc spelling: 100_000_000 -> ``"100mbit"``."""
    for suffix, scale in (("gbit", 1000**3), ("mbit", 1000**2), ("kbit", 1000)):
        if bits_per_s % scale == 0:
            return f"{bits_per_s // scale}{suffix}"
    return f"{bits_per_s}bit"


def burst_bytes(bits_per_s: int) -> int:
    return max(MIN_BURST_BYTES, int(bits_per_s / 8 * BURST_SECONDS))


def tbf_args(bits_per_s: int) -> list[str]:
    return [
        "tbf",
        "rate", format_rate(bits_per_s),
        "burst", str(burst_bytes(bits_per_s)),
        "latency", f"{LATENCY_MS}ms",
    ]  # fmt: skip


def egress_commands(netns: str, dev: str, bits_per_s: int) -> list[list[str]]:
    """Shape what ``dev`` in ``netns`` sends (the host's upload)."""
    return [["tc", "-n", netns, "qdisc", "replace", "dev", dev, "root", *tbf_args(bits_per_s)]]


def ingress_commands(netns: str, dev: str, ifb: str, bits_per_s: int) -> list[list[str]]:
    """Shape what ``dev`` in ``netns`` receives (the host's download) through ``ifb``,
    which is created in ``netns`` and so goes away with it."""
    return [
        ["ip", "-n", netns, "link", "add", ifb, "type", "ifb"],
        ["ip", "-n", netns, "link", "set", ifb, "up"],
        ["tc", "-n", netns, "qdisc", "replace", "dev", ifb, "root", *tbf_args(bits_per_s)],
        ["tc", "-n", netns, "qdisc", "add", "dev", dev, "handle", "ffff:", "ingress"],
        [
            "tc", "-n", netns, "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "all",
            "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb,
        ],
    ]  # fmt: skip


def shaping_commands(
    netns: str, dev: str, ifb: str, *, up_bits: int | None, down_bits: int | None
) -> list[list[str]]:
    """Both directions; ``None`` leaves that direction unshaped."""
    out: list[list[str]] = []
    if up_bits is not None:
        out += egress_commands(netns, dev, up_bits)
    if down_bits is not None:
        out += ingress_commands(netns, dev, ifb, down_bits)
    return out
