"""Shared fixtures: real processes (scheduler, daemons, origin, dfget) and a loop-blocking guard.

Helpers live in ``tests/helpers``; the fixtures here own what they start and
stop it by PID at teardown.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from helpers.processes import Procs, short_tempdir


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir under /tmp with a short path (unix sockets), removed afterwards."""
    path = short_tempdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def procs(short_tmp: Path) -> Iterator[Procs]:
    """Start processes with ``procs.scheduler()``, ``procs.daemon(...)``, ``procs.origin(dir)``;
    every one is stopped by PID when the test ends."""
    p = Procs(short_tmp)
    try:
        yield p
    finally:
        p.close()


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing") and " took " in message:
            self.messages.append(message)


@pytest.fixture
async def no_loop_blocking() -> AsyncIterator[None]:
    """Fail the test if any callback held the event loop for more than 0.25 s.

    asyncio's debug mode reports such callbacks on the ``asyncio`` logger; we
    collect them and fail at teardown, so blocking calls in async code surface
    as test failures rather than as mysterious latency.
    """
    loop = asyncio.get_running_loop()
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    old_debug, old_slow = loop.get_debug(), loop.slow_callback_duration
    loop.set_debug(True)
    loop.slow_callback_duration = 0.25
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        loop.set_debug(old_debug)
        loop.slow_callback_duration = old_slow
    if handler.messages:
        pytest.fail("the event loop was blocked:\n" + "\n".join(handler.messages[:5]))
