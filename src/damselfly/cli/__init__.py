"""The command line: ``damselfly`` (servers, up, get, cache, preheat, init, ca, bench) and ``dfget``."""
