"""Back to source: the origin's bytes straight into the piece store.

:mod:`.source` is the entry point (one streaming GET for a fresh task, ranged
GETs to fill the holes of a resumed one); :mod:`.ranges` decides which byte
ranges to ask for (pure); :mod:`.rawhttp` is the plain-HTTP body path that
lands the body in one reused buffer.
"""
