"""Evaluators: rank candidate parents for a peer, and spot bad parents.

Evaluators are small policies chosen by name (``scheduler.algorithm`` in the
config) through :func:`get_evaluator`; a research user registers another one
with :func:`register_evaluator` and switches with one config line.

The default follows Dragonfly's published weights (DESIGN.md §2)::

    total = 0.6·load + 0.2·same IDC + 0.1·location prefix + 0.1·host type
    load  = 0.5·free peak bandwidth + 0.3·free bandwidth over the last minute
          + 0.2·free upload slots

Both bandwidth terms use what the host announced (``tx_bandwidth`` against
``max_tx_bandwidth``; 1.0 when the maximum is unknown): *peak* is the highest
announced rate of the last minute, *last minute* their mean. Ties (scores equal
to 3 decimals) go to the parent holding more pieces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from ..errors import ConfigError
from .resources import Peer, PeerState

MINUTE = 60.0

# Bad-parent rule: with few samples a single outlier is judged against the mean
# (last > 20x mean); with enough samples against the spread (last > mean + 3 sigma).
BAD_PARENT_MIN_SAMPLES = 30
BAD_PARENT_MEAN_FACTOR = 20.0
BAD_PARENT_SIGMAS = 3.0


class Evaluator(Protocol):
    """Scores parents for a child; higher is better."""

    name: str

    def score(self, parent: Peer, child: Peer, now: float) -> float: ...

    def is_bad_parent(self, parent: Peer) -> bool: ...

    def rank(self, candidates: list[Peer], child: Peer, limit: int, now: float) -> list[Peer]: ...


def progress(peer: Peer) -> int:
    """How many pieces a peer can serve (a restored Succeeded peer reported none, but has all)."""
    if peer.state is PeerState.SUCCEEDED:
        return max(len(peer.finished_pieces), peer.task.piece_count or 0)
    return len(peer.finished_pieces)


def stores_and_forwards(parent: Peer, child: Peer) -> bool:
    """Whether ``child`` gets each piece from ``parent`` only once the parent holds it whole,
    while a Damselfly parent would pass it on as it lands: a plain parent (Dragonfly's wire)
    that is still downloading, for a Damselfly child. A plain child asks every parent for
    whole pieces only, so to it no parent is worse than another on this count."""
    return parent.plain and not child.plain and parent.state is not PeerState.SUCCEEDED


def is_bad_parent(costs: list[float] | tuple[float, ...]) -> bool:
    """Whether the newest served-piece cost is an outlier against the earlier ones.

    The mean and spread are taken over the samples *before* the newest one, so
    one slow piece cannot hide itself by raising the mean it is compared with.
    """
    if len(costs) < 2:
        return False
    last = costs[-1]
    prev = costs[:-1]
    mean = math.fsum(prev) / len(prev)
    if len(costs) < BAD_PARENT_MIN_SAMPLES:
        return last > BAD_PARENT_MEAN_FACTOR * mean
    var = math.fsum((c - mean) ** 2 for c in prev) / len(prev)
    return last > mean + BAD_PARENT_SIGMAS * math.sqrt(var)


def location_score(a: str, b: str) -> float:
    """Matched ``|``-separated prefix elements over the longer of the two locations."""
    if not a or not b:
        return 0.0
    pa, pb = a.split("|"), b.split("|")
    matched = 0
    for x, y in zip(pa, pb, strict=False):
        if x != y:
            break
        matched += 1
    return matched / max(len(pa), len(pb))


class DefaultEvaluator:
    """Dragonfly's default weights, with a host-type term that offloads seeds.

    Host type: a normal peer that already holds pieces scores 1.0, a seed 0.5,
    a normal peer with nothing yet 0.0. So while a task is young its seed stays
    among the candidates, and once normal peers hold pieces they are preferred
    and the seed's upload is kept for peers that still need it.
    """

    name = "default"

    def __init__(
        self,
        *,
        load_weight: float = 0.6,
        idc_weight: float = 0.2,
        location_weight: float = 0.1,
        host_type_weight: float = 0.1,
    ) -> None:
        self.load_weight = load_weight
        self.idc_weight = idc_weight
        self.location_weight = location_weight
        self.host_type_weight = host_type_weight

    def load_score(self, parent: Peer, now: float) -> float:
        host = parent.host
        max_tx = host.info.max_tx_bandwidth
        if max_tx > 0:
            recent = [tx for t, tx in host.tx_samples if now - t <= MINUTE] or [host.info.tx_bandwidth]
            peak_free = 1.0 - min(1.0, max(recent) / max_tx)
            minute_free = 1.0 - min(1.0, (sum(recent) / len(recent)) / max_tx)
        else:
            peak_free = minute_free = 1.0
        slots_free = host.free_upload_slots / host.upload_limit if host.upload_limit > 0 else 0.0
        return 0.5 * peak_free + 0.3 * minute_free + 0.2 * slots_free

    def host_type_score(self, parent: Peer) -> float:
        if parent.host.is_seed:
            return 0.5
        return 1.0 if progress(parent) > 0 else 0.0

    def score(self, parent: Peer, child: Peer, now: float) -> float:
        p, c = parent.host.info, child.host.info
        idc = 1.0 if p.idc and p.idc == c.idc else 0.0
        return (
            self.load_weight * self.load_score(parent, now)
            + self.idc_weight * idc
            + self.location_weight * location_score(p.location, c.location)
            + self.host_type_weight * self.host_type_score(parent)
        )

    def is_bad_parent(self, parent: Peer) -> bool:
        return is_bad_parent(tuple(parent.served_costs))

    def rank(self, candidates: list[Peer], child: Peer, limit: int, now: float) -> list[Peer]:
        """The best ``limit`` candidates; for a Damselfly child, parents that pass pieces on as
        they land come before plain ones still downloading (:func:`stores_and_forwards`)."""
        keyed = [
            ((not stores_and_forwards(p, child), round(self.score(p, child, now), 3), progress(p)), p)
            for p in candidates
        ]
        keyed.sort(key=lambda kp: kp[0], reverse=True)
        return [p for _, p in keyed[:limit]]


_REGISTRY: dict[str, Callable[[], Evaluator]] = {"default": DefaultEvaluator}


def register_evaluator(name: str, factory: Callable[[], Evaluator]) -> None:
    _REGISTRY[name] = factory


def get_evaluator(name: str) -> Evaluator:
    try:
        return _REGISTRY[name]()
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"unknown scheduler algorithm {name!r}; known: {known}") from None
