"""The scheduler: hosts, tasks, peers and the parent DAG; answers ``scheduler.v2.Scheduler``.

Entry points: :func:`damselfly.scheduler.app.serve` (async) and
:func:`damselfly.scheduler.app.run`.
"""
