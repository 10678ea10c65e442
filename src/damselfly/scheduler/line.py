"""The chain topology's line when peers on Dragonfly's wire alone take part.

Between Damselfly peers the line is the order of registration. A peer on Dragonfly's wire
(``Peer.plain``: a Rust dfdaemon, or a Damselfly daemon with ``wire.extensions: false``)
serves a piece only once it holds it whole, so it gets a fixed place with the other plain
peers, ahead of the Damselfly ones (docs/INTEROP.md section 6.9).
"""

from __future__ import annotations

from .resources import Peer, PeerState, Task

# A Damselfly peer holding at most this many pieces may still be moved in the line (it is told
# its new parent at once); one holding more would wait for a newcomer put before it to catch up.
MOVABLE_PIECES = 2


def _movable(peer: Peer) -> bool:
    """Whether ``peer`` may get a newcomer as its parent: a Damselfly peer (a plain one never
    asks again) that holds next to nothing yet."""
    return not peer.plain and not peer.state.is_final and len(peer.finished_pieces) <= MOVABLE_PIECES


def _live(peer: Peer) -> bool:
    return not peer.state.is_final or peer.state is PeerState.SUCCEEDED


def _line_slot(line: list[Peer], peer: Peer) -> int:
    """Where a newcomer goes in the line (an index into ``line``; ``len(line)``: the end).

    A Damselfly newcomer goes to the end. A plain one goes right after the plain peers that
    lead the line (first when none does), before the Damselfly peer standing there, when that
    peer may still move (:func:`_movable`; it is told its new parent at once, unasked);
    otherwise to the end. Only the peer already at the chosen index changes its parent (to the
    newcomer), so it must be one that follows such a change: a plain peer never asks for
    parents again.
    """
    live = [i for i, p in enumerate(line) if _live(p)]
    if not peer.plain or not live:
        return len(line)
    head = next((i for i in live if not line[i].plain), None)
    if head is None or not _movable(line[head]):
        return len(line)
    return head


def line_of(task: Task) -> list[Peer]:
    """The task's peers in the chain's line order.

    Between Damselfly peers it is the order they registered in. Once a peer on Dragonfly's
    wire alone has registered (``task.mixed_wire``), each newcomer gets a fixed place
    (``Peer.line_key``) chosen by :func:`_line_slot`. Such a peer serves a piece only once it
    holds it whole, and takes from its parent only whole pieces: each one in the line costs
    everyone behind it a piece's transfer time at least. Its parent's pieces must land one
    after the other for that to be all: pieces that land together (a Damselfly peer has
    several in flight, shared on its link) are forwarded one after the other, and a plain
    peer behind Damselfly ones ends that many piece-times after its parent. So plain peers
    lead the line: the seed's pieces land in order from the origin's one stream, each plain
    peer passes them on one at a time, and the Damselfly peers behind them cut through as
    they land. Registration order would alternate the two kinds in a flash crowd and pay
    the burst at every plain peer.
    """
    if not task.mixed_wire:
        return list(task.peers.values())
    line = sorted((p for p in task.peers.values() if p.line_key is not None), key=_line_key)
    for peer in task.peers.values():  # newcomers, in the order they registered
        if peer.line_key is not None or peer.host.is_seed:
            continue
        i = _line_slot(line, peer)
        before = _line_key(line[i - 1]) if i > 0 else 0.0
        after = _line_key(line[i]) if i < len(line) else before + 2.0
        peer.line_key = (before + after) / 2
        line.insert(i, peer)
    return line


def _line_key(peer: Peer) -> float:
    assert peer.line_key is not None
    return peer.line_key


def follower(peer: Peer) -> Peer | None:
    """The live peer right after ``peer`` in its task's line (the one ``peer`` feeds), if any."""
    line = line_of(peer.task)
    if peer not in line:  # a seed peer stands before the line
        return None
    i = line.index(peer)
    return next((p for p in line[i + 1 :] if _live(p)), None)
