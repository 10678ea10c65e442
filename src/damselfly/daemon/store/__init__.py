"""What this daemon holds: the piece store on disk and what watches it.

:mod:`.piece_store` keeps one content file per task with its metadata and
piece journal (crash-consistent), over :mod:`.metadata` (the task record and
its JSON), :mod:`.files` (file names and byte helpers) and :mod:`.recovery`
(restored at start); :mod:`.changes` lets a reader wait for a task to change
without missing one; :mod:`.receiving` tracks pieces still arriving so they
can be served on while they land (cut-through); :mod:`.digesting` hashes a
task's whole content in order as its pieces land.
"""
