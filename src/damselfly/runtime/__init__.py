"""Process supervision for ``damselfly up``: the product's own, which the testbed uses too.

- :mod:`.children`: start a child (its log, its ready file), wait until it is
  ready, name it and its log when it dies, stop children by PID.
- :mod:`.cluster`: a scheduler, a seed and peer daemons under one root, laid
  out the way ``damselfly up``'s data directory is.
- :mod:`.supervisor`: signals that leave any wait at once, and the foreground
  life of ``up`` (start, watch, stop; how it ended).

Nothing here imports the CLI or the testbed; both import this.
"""
