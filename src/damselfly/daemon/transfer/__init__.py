"""How a piece travels between daemons.

A child learns what a parent holds with SyncPieces (:mod:`.peer_rpc`, gRPC
``DfdaemonUpload``), then pulls each piece's bytes over the piece protocol:
:mod:`.vortex` is its framing (sans-IO), :mod:`.piece_server` the parent's
listener (the content sent from the store, or cut through while it still
arrives), :mod:`.piece_client` the child's pooled connections (bytes received
into the task's file, crc32 checked). Two daemons on one machine skip the
socket: :mod:`.local_pieces` hands the parent's file over a unix socket.
What lands is recorded in the store (:mod:`damselfly.daemon.store`).
"""
