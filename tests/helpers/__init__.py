"""Test helpers that start real Damselfly processes (see processes.py)."""
