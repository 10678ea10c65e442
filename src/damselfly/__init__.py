"""Damselfly: P2P file and container-image distribution in the line of Dragonfly."""

__version__ = "0.1.0"
