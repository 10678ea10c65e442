"""Tools to run Damselfly for real on one machine: an origin HTTP server that
counts what it serves, and helpers that start the scheduler and daemons as
child processes (used by ``damselfly up``, ``damselfly bench`` and the tests)."""
