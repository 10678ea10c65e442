"""The daemon's registry mirror and HTTP(S) proxy: container engines pull through the swarm."""

from .proxy import ProxyServer

__all__ = ["ProxyServer"]
