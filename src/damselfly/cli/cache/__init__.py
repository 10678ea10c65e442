"""``damselfly cache``: the local daemon's store, and persistent cache tasks in the cluster (dfcache).

- :mod:`.commands`: the typer commands ``cache stat|import|export|delete``.
- :mod:`.local_store`: the client for what this daemon's store holds
  (``ListLocalTasks`` / ``StatLocalTask``), its table and ``--json``.
- :mod:`.persistent_tasks`: the client for persistent cache tasks
  (``Upload|Download|Stat|DeletePersistentCacheTask``), its exit codes and
  rendering.

Both clients talk only to the daemon's unix socket; the daemon talks to the scheduler.
"""
