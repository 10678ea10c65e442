"""The command line: ``damselfly`` (scheduler, daemon, get, up, bench, demo) and ``dfget``."""
