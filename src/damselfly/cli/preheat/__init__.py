"""``damselfly preheat file|image``: warm the swarm before a rollout, through the scheduler.

- :mod:`.commands`: the typer commands (``preheat file``, ``preheat image``).
- :mod:`.options`: the options both commands share, declared and checked once.
- :mod:`.runner`: the gRPC side: the preheat call, polling Stat while it runs,
  per-task results.
- :mod:`.report`: what the user reads: progress lines, the result table, ``--json``.

How it follows a preheat: ``PreheatFile`` / ``PreheatImage`` return ``Empty``
only once the job is over (the scheduler answers when every download ended,
with ``ABORTED`` and one line per failure otherwise; see
``scheduler/preheat_rpc.py``). While that call is in flight the command polls
``StatFile`` / ``StatImage`` every ``--interval`` and prints a line whenever
the picture changes (which hosts hold or are fetching which task). At the end
it prints per-task results (task ID, size from ``StatTask``, hosts that hold
it) as text, or as one JSON document with ``--json``.

Exit codes (from :class:`damselfly.cli.exitcodes.ExitCode`): 0 every download
succeeded; 1 some download failed (or an unexpected error); 2 bad arguments;
3 the scheduler cannot be reached; 4 the registry or origin refused (missing
tag or platform, login refused, unreachable); 6 the preheat's ``--timeout``
passed.
"""
