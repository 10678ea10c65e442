"""``damselfly bench scheduler``: thousands of simulated hosts and peers against one scheduler.

:mod:`.plan` (who arrives when; pure), :mod:`.peers` (one simulated daemon's
AnnouncePeer stream), :mod:`.worker` (one generator process), :mod:`.run`
(the coordinator: scheduler process, workers, the report).
"""
