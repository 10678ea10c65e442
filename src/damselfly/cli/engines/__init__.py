"""The container engines' own config files, as ``damselfly init`` writes them.

Pure functions, text in and text out: each parses what is there with a library
that keeps comments, key order and keys it does not know (tomlkit, PyYAML for
k3s), changes only what points the engine at the daemon's mirror, and raises
InvalidArgument (one line) for a file it cannot read. :mod:`..init_cmd` reads
and writes the files.
"""

from __future__ import annotations


def registry_server(registry: str) -> str:
    """``docker.io`` -> ``https://registry-1.docker.io``; ``host`` -> ``https://host``; URLs kept."""
    registry = registry.strip().rstrip("/")
    if "://" in registry:
        return registry
    if registry in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        return "https://registry-1.docker.io"
    return f"https://{registry}"


def registry_host(registry: str) -> str:
    """The name engines give a registry in image references (``docker.io``, ``host:port``)."""
    host = registry.split("://", 1)[-1].rstrip("/")
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host
