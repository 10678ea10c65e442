"""A swarm where some daemons run with ``wire.extensions: false`` (only Dragonfly's wire
behaviour): pieces still flow every way, the origin is fetched once, and the extensions
(same-machine handover here) are used only between daemons that both keep them."""

from __future__ import annotations

from damselfly.units import MiB

from .harness import Swarm, sha256_file

LOCAL = {"local_share": True}
PLAIN = {"extensions": False}


async def test_daemons_with_and_without_extensions_share_a_task(swarm: Swarm, tmp_path):
    size = 20 * MiB + 7
    src = swarm.file("mixed.bin", size)
    seed = await swarm.add_daemon("seed", seed=True, storage=LOCAL)
    plain = await swarm.add_daemon("plain", storage=LOCAL, wire=PLAIN)
    full = await swarm.add_daemon("full", storage=LOCAL)
    for name in ("plain", "full"):
        r = await swarm.download(name, swarm.url("mixed.bin"), tmp_path / f"{name}.out")
        assert r.ok, r.details
        assert sha256_file(tmp_path / f"{name}.out") == sha256_file(src)
    # The seed fetched it once; the plain daemon asked the origin for the size first, as
    # Dragonfly's client does before it registers (a one-byte ranged GET).
    assert swarm.origin_bytes() == size + 1
    # The Dragonfly-compatible daemon neither offers nor takes the file handover.
    assert plain.local_server is None
    assert plain.pool.local is not None and plain.pool.local.pieces_copied == 0
    assert plain.piece_server.busy_refusals == 0 and plain.piece_server.elsewhere_refusals == 0
    # What the seed handed over went to the daemon that keeps the extensions.
    assert seed.local_server is not None and full.pool.local is not None
    assert seed.local_server.pieces_shared == full.pool.local.pieces_copied
