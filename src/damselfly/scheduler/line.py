"""The chain topology's line when peers on Dragonfly's wire alone take part.

Between Damselfly peers the line is the order of registration. A peer on Dragonfly's wire
(``Peer.plain``: a Rust dfdaemon, or a Damselfly daemon with ``wire.extensions: false``)
serves a piece only once it holds it whole, so it gets a fixed place with the other plain
peers, behind the Damselfly ones (docs/INTEROP.md section 6.9).
"""

from __future__ import annotations

from .resources import Peer, PeerState, Task

# A Damselfly peer holding at most this many pieces may still be moved in the line (it asks
# for parents again within a second or so and follows); one holding more would wait for a
# newcomer put before it to catch up.
MOVABLE_PIECES = 2


def _movable(peer: Peer) -> bool:
    """Whether ``peer`` would follow a change of its parent: a Damselfly peer that holds next
    to nothing yet, or a plain one still waiting for its first parent."""
    if peer.state.is_final or len(peer.finished_pieces) > MOVABLE_PIECES:
        return False
    return not peer.plain or (not peer.parents and peer.id in peer.task.waiting)


def _live(peer: Peer) -> bool:
    return not peer.state.is_final or peer.state is PeerState.SUCCEEDED


def _line_slot(line: list[Peer], peer: Peer) -> int:
    """Where a newcomer goes in the line (an index into ``line``; ``len(line)``: the end).

    Only the peer already at that index changes its parent (to the newcomer), so it must be
    one that may still move (:func:`_movable`): a plain peer never asks for parents again. A plain
    newcomer goes right after the last plain peer, so plain peers stand together and each
    store-and-forward hop they cost is paid once by the peers behind them (at the end of the
    line instead when plain peers lead it: it was answered before any Damselfly peer came); a Damselfly
    newcomer behind a plain tail goes instead before the last movable peer that follows a
    Damselfly peer or the seed, so it is not behind the plain peers.
    """
    live = [i for i, p in enumerate(line) if _live(p)]
    if not live:
        return len(line)
    if peer.plain:
        plain = [i for i in live if line[i].plain]
        # Not when only plain peers lead the line: the Damselfly peers behind them would each
        # move back again, and wait behind one more store-and-forward hop.
        led = bool(plain) and any(not line[i].plain for i in live if i < plain[-1])
        if led and plain[-1] != live[-1]:
            after = next(i for i in live if i > plain[-1])
            if _movable(line[after]):
                return after
        return len(line)
    if not line[live[-1]].plain:
        return len(line)
    for k in range(len(live) - 1, -1, -1):
        i = live[k]
        if _movable(line[i]) and (k == 0 or not line[live[k - 1]].plain):
            return i
    return len(line)


def line_of(task: Task) -> list[Peer]:
    """The task's peers in the chain's line order.

    Between Damselfly peers it is the order they registered in. Once a peer on Dragonfly's
    wire alone has registered (``task.mixed_wire``), each newcomer gets a fixed place
    (``Peer.line_key``) chosen by :func:`_line_slot`: such a peer serves a piece only once it
    holds it whole, and the Damselfly parent of a plain child announces it only then too, so
    every hop into or out of a plain peer costs a piece's whole transfer time. Registration
    order would put the two kinds turn about in a flash crowd, paying that at nearly every
    hop; grouped, the plain peers pay it about once each.
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
