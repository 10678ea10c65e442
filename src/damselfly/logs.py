"""Logging that says which task and peer a line is about.

``with log_context(task_id=..., peer_id=...)`` (or :func:`bind`) sets context
variables that every log record made inside it carries; the formatter prints
them as ``task=<first 12 hex> peer=<id>``. asyncio tasks inherit the context of
their creator, so a download's background tasks log with its IDs too.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

_task: contextvars.ContextVar[str] = contextvars.ContextVar("damselfly_task", default="")
_peer: contextvars.ContextVar[str] = contextvars.ContextVar("damselfly_peer", default="")


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        task, peer = _task.get(), _peer.get()
        parts = []
        if task:
            parts.append(f"task={task[:12]}")
        if peer:
            parts.append(f"peer={peer}")
        record.ctx = (" " + " ".join(parts)) if parts else ""
        return True


FORMAT = "%(asctime)s %(levelname)s %(name)s%(ctx)s: %(message)s"


def setup_logging(level: str | int = "INFO", file: str | Path | None = None) -> None:
    """Configure the root logger once: to ``file`` when given, else stderr."""
    handler: logging.Handler
    if file:
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def bind(*, task_id: str | None = None, peer_id: str | None = None) -> None:
    """Set the IDs for the current context (an asyncio task and what it spawns)."""
    if task_id is not None:
        _task.set(task_id)
    if peer_id is not None:
        _peer.set(peer_id)


@contextlib.contextmanager
def log_context(*, task_id: str | None = None, peer_id: str | None = None) -> Iterator[None]:
    tokens = []
    if task_id is not None:
        tokens.append((_task, _task.set(task_id)))
    if peer_id is not None:
        tokens.append((_peer, _peer.set(peer_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)
