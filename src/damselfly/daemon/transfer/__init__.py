"""How a piece travels between daemons.

A child learns what a parent holds with SyncPieces (:mod:`.peer_rpc`, gRPC
``DfdaemonUpload``), where two Damselfly daemons also agree to use Damselfly's
wire extensions, or between Damselfly daemons on the parent's piece port
(:mod:`.announce`), then pulls each piece's bytes over Dragonfly's Vortex:
:mod:`.vortex` is its framing (sans-IO), :mod:`.piece_server` the parent's
listener (the content sent from the store, or cut through while it still
arrives), :mod:`.piece_client` the child's connections (pooled toward Damselfly
parents, one per piece toward Dragonfly's; bytes received into the task's
file, crc32 checked). Two Damselfly daemons on one machine skip the socket:
:mod:`.local_pieces` hands the parent's file over a unix socket. What lands is
recorded in the store (:mod:`damselfly.daemon.store`).
"""
