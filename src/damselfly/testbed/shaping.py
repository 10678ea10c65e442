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
# What waits in a host's bucket, and in which order:
# ``fifo``: one queue. A host whose upload is saturated then delays the ACKs of its own
#   downloads by up to LATENCY_MS behind its uploads (bufferbloat), and the senders of those
#   downloads stall: a seed feeding eight peers got the origin's stream at 63-97 % of the link.
# ``ack-first``: pure ACKs ahead of data, as on a Linux host with fq_codel (Debian's default
#   qdisc through systemd), whose sparse-flow boost sends ACKs first; fq_codel itself is not
#   built into this kernel. The origin's stream then holds 93-96 % of the link.
FIFO = "fifo"
ACK_FIRST = "ack-first"
QUEUES = (ACK_FIRST, FIFO)


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


def queue_commands(netns: str, dev: str, bits_per_s: int, queue: str) -> list[list[str]]:
    """The bucket on ``dev`` and, for ``ack-first``, a two-band queue inside it: TCP
    packets under 128 bytes (pure ACKs) in a band served first (htb ``prio 0``, classified by
    ``u32`` on the IP total length), everything else behind them. Each band holds
    ``LATENCY_MS`` of the rate, as the plain bucket's own queue does. The htb classes are
    only a priority scheduler: their rates are 10x the link, so the bucket alone shapes."""
    tc = ["tc", "-n", netns]
    out = [[*tc, "qdisc", "replace", "dev", dev, "root", "handle", "1:", *tbf_args(bits_per_s)]]
    if queue == FIFO:
        return out
    limit = str(max(MIN_BURST_BYTES, int(bits_per_s / 8 * LATENCY_MS / 1000)))
    fast = format_rate(bits_per_s * 10)

    def band(minor: str, prio: str) -> list[list[str]]:
        """A priority band of the htb and its queue (bytes, like the plain bucket's)."""
        return [
            [*tc, "class", "add", "dev", dev, "parent", "10:", "classid", f"10:{minor}", "htb",
             "rate", fast, "prio", prio],
            [*tc, "qdisc", "add", "dev", dev, "parent", f"10:{minor}", "bfifo", "limit", limit],
        ]  # fmt: skip

    out += [
        [*tc, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "htb", "default", "2"],
        *band("1", "0"),
        *band("2", "1"),
        [
            *tc, "filter", "add", "dev", dev, "parent", "10:", "protocol", "ip", "prio", "1", "u32",
            "match", "ip", "protocol", "6", "0xff",
            "match", "u16", "0", "0xff80", "at", "2",  # IP total length < 128: a pure ACK
            "flowid", "10:1",
        ],
    ]  # fmt: skip
    return out


def egress_commands(netns: str, dev: str, bits_per_s: int, queue: str = ACK_FIRST) -> list[list[str]]:
    """Shape what ``dev`` in ``netns`` sends (the host's upload)."""
    return queue_commands(netns, dev, bits_per_s, queue)


def ingress_commands(
    netns: str, dev: str, ifb: str, bits_per_s: int, queue: str = ACK_FIRST
) -> list[list[str]]:
    """Shape what ``dev`` in ``netns`` receives (the host's download) through ``ifb``,
    which is created in ``netns`` and so goes away with it."""
    return [
        ["ip", "-n", netns, "link", "add", ifb, "type", "ifb"],
        ["ip", "-n", netns, "link", "set", ifb, "up"],
        *queue_commands(netns, ifb, bits_per_s, queue),
        ["tc", "-n", netns, "qdisc", "add", "dev", dev, "handle", "ffff:", "ingress"],
        [
            "tc", "-n", netns, "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "all",
            "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb,
        ],
    ]  # fmt: skip


def shaping_commands(
    netns: str, dev: str, ifb: str, *, up_bits: int | None, down_bits: int | None, queue: str = ACK_FIRST
) -> list[list[str]]:
    """Both directions; ``None`` leaves that direction unshaped."""
    if queue not in QUEUES:
        raise InvalidArgument(f"link queue {queue!r}: choose one of {', '.join(QUEUES)}")
    out: list[list[str]] = []
    if up_bits is not None:
        out += egress_commands(netns, dev, up_bits, queue)
    if down_bits is not None:
        out += ingress_commands(netns, dev, ifb, down_bits, queue)
    return out
