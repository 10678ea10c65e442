"""Swarm scenarios: who downloads, over which links, and when.

Why data and not code: a scenario is a list of hosts with upload/download rates
and an arrival time, plus the origin's rate and the file size, so the same
runner (:mod:`damselfly.testbed.swarm`) plays all of them and the fluid bound
(:mod:`damselfly.testbed.fluid`) is computed from the same numbers the links
are shaped with. Named presets::

    flash-crowd            every peer starts at t=0, all links equal
    staggered              peer i starts at i * stagger
    mixed-rates            a quarter of the peers (every 4th) at a quarter of the rate
    large-file-few-peers   1 GiB to 3 peers
    small-file-many-peers  16 MiB to 16 peers
    scheduler-restart      flash-crowd; the scheduler SIGKILLed at ~30 % progress, restarted at once
    scheduler-failover     flash-crowd with three schedulers; the task's one SIGKILLed at ~30 %, for good
    seed-loss              flash-crowd; the seed serving the task SIGKILLed at ~30 %, for good

A rates file (YAML or JSON) describes any other topology::

    origin: 100mbit
    seeds: [{rate: 100mbit}]
    peers:
      - {up: 100mbit, down: 100mbit}
      - {rate: 25mbit, arrival: 5}     # rate sets both directions; arrival in s
      - {wire: dragonfly}              # this daemon speaks only Dragonfly's wire

Any scenario can be made a mixed-wire one (:func:`with_plain_wire`, the
``--plain-peers`` and ``--plain-seed`` flags): see :mod:`damselfly.testbed.wire`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..errors import InvalidArgument
from ..units import GiB, MiB
from .fluid import FluidBound, Link, fluid_bound
from .shaping import parse_rate
from .wire import DAMSELFLY, DRAGONFLY, WIRES, interleaved


@dataclass(frozen=True, slots=True)
class HostSpec:
    """A downloading host (seed or peer): link rates in bits/s, arrival in seconds after the start,
    and the wire its daemon speaks (:data:`~damselfly.testbed.wire.WIRES`)."""

    name: str
    up_bits: int
    down_bits: int
    arrival_s: float = 0.0
    wire: str = DAMSELFLY


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    file_size: int
    origin_bits: int
    seeds: tuple[HostSpec, ...]
    peers: tuple[HostSpec, ...]
    params: dict[str, Any] = field(default_factory=dict)
    schedulers: int = 1
    # A fault injected when the peers' mean progress reaches ``fault_at`` (testbed/faults.py).
    fault: str = ""
    fault_at: float = 0.3

    def bound(self) -> FluidBound:
        """``T_min`` over the seeds and peers (all N download and upload), the origin as server."""
        hosts = [Link(up=h.up_bits / 8, down=h.down_bits / 8) for h in (*self.seeds, *self.peers)]
        return fluid_bound(self.file_size, self.origin_bits / 8, hosts)

    def to_json(self) -> dict[str, Any]:
        def host(h: HostSpec) -> dict[str, Any]:
            return {
                "name": h.name,
                "up_bits": h.up_bits,
                "down_bits": h.down_bits,
                "arrival_s": h.arrival_s,
                "wire": h.wire,
            }

        return {
            "name": self.name,
            "file_size": self.file_size,
            "origin_bits": self.origin_bits,
            "seeds": [host(h) for h in self.seeds],
            "peers": [host(h) for h in self.peers],
            "params": dict(self.params),
            "schedulers": self.schedulers,
            "fault": self.fault,
            "fault_at": self.fault_at,
        }


@dataclass(frozen=True, slots=True)
class Knobs:
    """What the command line may set; None takes the scenario's default."""

    peers: int | None = None
    size: int | None = None
    rate_bits: int | None = None
    origin_bits: int | None = None
    seeds: int = 1
    schedulers: int | None = None
    seed_bits: int | None = None
    stagger_s: float = 2.0
    slow_fraction: float = 0.25
    slow_factor: float = 0.25


DEFAULT_RATE = 100_000_000


def _uniform(name: str, k: Knobs, *, peers: int, size: int) -> Scenario:
    n = k.peers if k.peers is not None else peers
    if n < 1:
        raise InvalidArgument("a scenario needs at least one peer")
    if k.seeds < 0:
        raise InvalidArgument("the number of seeds cannot be negative")
    rate = k.rate_bits or DEFAULT_RATE
    seed_rate = k.seed_bits or rate
    seeds = tuple(
        HostSpec(f"seed{i}" if k.seeds > 1 else "seed", seed_rate, seed_rate) for i in range(k.seeds)
    )
    peer_hosts = tuple(HostSpec(f"peer{i}", rate, rate) for i in range(n))
    return Scenario(
        name=name,
        file_size=k.size if k.size is not None else size,
        origin_bits=k.origin_bits or rate,
        seeds=seeds,
        peers=peer_hosts,
        schedulers=k.schedulers or 1,
    )


def flash_crowd(k: Knobs) -> Scenario:
    return _uniform("flash-crowd", k, peers=8, size=256 * MiB)


def staggered(k: Knobs) -> Scenario:
    s = _uniform("staggered", k, peers=8, size=256 * MiB)
    if k.stagger_s < 0:
        raise InvalidArgument("--stagger cannot be negative")
    peers = tuple(replace(p, arrival_s=i * k.stagger_s) for i, p in enumerate(s.peers))
    return replace(s, peers=peers, params={"stagger_s": k.stagger_s})


def mixed_rates(k: Knobs) -> Scenario:
    """Every 4th peer (for the default quarter) gets ``slow_factor`` of the rate both ways."""
    s = _uniform("mixed-rates", k, peers=8, size=256 * MiB)
    if not 0 < k.slow_fraction <= 1 or not 0 < k.slow_factor <= 1:
        raise InvalidArgument("--slow-fraction and --slow-factor must be in (0, 1]")
    n = len(s.peers)
    slow_count = max(1, round(n * k.slow_fraction))
    step = n / slow_count
    slow = {int(n - 1 - j * step) for j in range(slow_count)}
    peers = tuple(
        replace(p, up_bits=int(p.up_bits * k.slow_factor), down_bits=int(p.down_bits * k.slow_factor))
        if i in slow
        else p
        for i, p in enumerate(s.peers)
    )
    return replace(s, peers=peers, params={"slow_fraction": k.slow_fraction, "slow_factor": k.slow_factor})


def large_file_few_peers(k: Knobs) -> Scenario:
    return _uniform("large-file-few-peers", k, peers=3, size=1 * GiB)


def small_file_many_peers(k: Knobs) -> Scenario:
    return _uniform("small-file-many-peers", k, peers=16, size=16 * MiB)


def scheduler_restart(k: Knobs) -> Scenario:
    return replace(_uniform("scheduler-restart", k, peers=8, size=256 * MiB), fault="scheduler-restart")


def scheduler_failover(k: Knobs) -> Scenario:
    s = _uniform("scheduler-failover", k, peers=8, size=256 * MiB)
    if k.schedulers == 1:
        raise InvalidArgument("scheduler-failover needs at least two schedulers")
    return replace(s, schedulers=k.schedulers or 3, fault="scheduler-failover")


def seed_loss(k: Knobs) -> Scenario:
    s = _uniform("seed-loss", k, peers=8, size=256 * MiB)
    if not s.seeds:
        raise InvalidArgument("seed-loss needs at least one seed")
    return replace(s, fault="seed-loss")


PRESETS: dict[str, Callable[[Knobs], Scenario]] = {
    "flash-crowd": flash_crowd,
    "staggered": staggered,
    "mixed-rates": mixed_rates,
    "large-file-few-peers": large_file_few_peers,
    "small-file-many-peers": small_file_many_peers,
    "scheduler-restart": scheduler_restart,
    "scheduler-failover": scheduler_failover,
    "seed-loss": seed_loss,
}


def build_scenario(name: str, knobs: Knobs) -> Scenario:
    try:
        preset = PRESETS[name]
    except KeyError:
        raise InvalidArgument(f"unknown scenario {name!r}; one of {', '.join(PRESETS)}") from None
    return preset(knobs)


def with_plain_wire(scenario: Scenario, *, plain_peers: int = 0, plain_seed: bool = False) -> Scenario:
    """``scenario`` with ``plain_peers`` of its peers (spread by :func:`~damselfly.testbed.wire.interleaved`)
    and, with ``plain_seed``, every seed speaking only Dragonfly's wire. Hosts a rates file already
    made plain stay plain; the choice is recorded in the scenario's params."""
    chosen = set(interleaved(len(scenario.peers), plain_peers))  # refuses a K outside 0..N
    if not chosen and not plain_seed:
        return scenario
    peers = tuple(replace(p, wire=DRAGONFLY) if i in chosen else p for i, p in enumerate(scenario.peers))
    seeds = tuple(replace(h, wire=DRAGONFLY) for h in scenario.seeds) if plain_seed else scenario.seeds
    params = {**scenario.params, "plain_peers": plain_peers, "plain_seed": plain_seed}
    return replace(scenario, seeds=seeds, peers=peers, params=params)


def _host_from(entry: Any, name: str, default_bits: int) -> HostSpec:
    if not isinstance(entry, dict):
        raise InvalidArgument(f"{name}: expected a mapping like {{rate: 100mbit}}, got {entry!r}")
    unknown = set(entry) - {"rate", "up", "down", "arrival", "name", "wire"}
    if unknown:
        raise InvalidArgument(f"{name}: unknown keys {sorted(unknown)} (rate, up, down, arrival, name, wire)")
    wire = str(entry.get("wire", DAMSELFLY))
    if wire not in WIRES:
        raise InvalidArgument(f"{name}: wire {wire!r}: one of {', '.join(WIRES)}")
    both = parse_rate(str(entry["rate"])) if "rate" in entry else default_bits
    up = parse_rate(str(entry["up"])) if "up" in entry else both
    down = parse_rate(str(entry["down"])) if "down" in entry else both
    arrival = float(entry.get("arrival", 0.0))
    if arrival < 0:
        raise InvalidArgument(f"{name}: arrival cannot be negative")
    return HostSpec(str(entry.get("name", name)), up, down, arrival, wire)


def scenario_from_rates(data: Any, *, name: str, size: int, default_bits: int = DEFAULT_RATE) -> Scenario:
    """A scenario from a parsed rates file (see the module docstring)."""
    if not isinstance(data, dict) or not isinstance(data.get("peers"), list) or not data["peers"]:
        raise InvalidArgument("a rates file needs a non-empty 'peers' list")
    origin = parse_rate(str(data["origin"])) if "origin" in data else default_bits
    seeds_raw = data.get("seeds", [{}])
    if not isinstance(seeds_raw, list):
        raise InvalidArgument("'seeds' must be a list")
    seeds = tuple(
        _host_from(e, "seed" if len(seeds_raw) == 1 else f"seed{i}", default_bits)
        for i, e in enumerate(seeds_raw)
    )
    peers = tuple(_host_from(e, f"peer{i}", default_bits) for i, e in enumerate(data["peers"]))
    names = [h.name for h in (*seeds, *peers)]
    if len(set(names)) != len(names):
        raise InvalidArgument("host names in a rates file must be distinct")
    return Scenario(name=name, file_size=size, origin_bits=origin, seeds=seeds, peers=peers)


def load_rates_file(path: Path, *, size: int, default_bits: int = DEFAULT_RATE) -> Scenario:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise InvalidArgument(f"cannot read rates file {path}: {e}") from None
    return scenario_from_rates(data, name=f"rates:{path.name}", size=size, default_bits=default_bits)
