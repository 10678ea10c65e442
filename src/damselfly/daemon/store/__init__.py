"""What this daemon holds: the piece store on disk and what watches it.

:mod:`.piece_store` keeps one content file per task with its metadata and
piece journal (crash-consistent, restored at start); :mod:`.receiving` tracks
pieces still arriving so they can be served on while they land (cut-through);
:mod:`.digesting` hashes a task's whole content in order as its pieces land.
"""
