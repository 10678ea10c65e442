"""Keeping children in the foreground: until a signal or the first death, then stop them all.

Why a module: ``damselfly up`` stays in the foreground over its children, and
the benchmarks run theirs to the end; all must leave no child behind, whether
the user presses Ctrl-C, the service manager sends SIGTERM or a child dies.
Python delivers a signal to the main thread between two bytecodes, so turning
it into an exception (:class:`Interrupted`) leaves any blocking wait at once;
the cleanup that follows runs with the signals ignored, so a second Ctrl-C
cannot cut it short, and the previous handlers come back afterwards.

:func:`run_in_foreground` is ``up``'s whole life: start the cluster, announce
it, watch it, stop it; it returns *how* it ended (:class:`Ending`) and leaves
the exit code to the command.
"""

from __future__ import annotations

import contextlib
import enum
import signal
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Protocol

from ..errors import InvalidArgument
from .children import ChildFailed, ChildProcess

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived inside :func:`interrupt_on_signals`.

    A ``BaseException``, like ``KeyboardInterrupt``, so that ``except
    Exception`` on the way up does not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def ignore_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on (until :func:`interrupt_on_signals` restores the handlers)."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    ignore_signals()
    raise Interrupted(signum)


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Inside: the first SIGINT or SIGTERM raises :class:`Interrupted`; later ones are ignored.

    On leaving, the handlers that were there before come back. Call it from the
    main thread (as ``signal.signal`` requires; the exception is raised there).
    """
    old = {sig: signal.signal(sig, _interrupt) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class Supervised(Protocol):
    """What :func:`run_in_foreground` needs of a set of children (:class:`~.cluster.LocalCluster` has it)."""

    def start(self) -> None: ...

    def first_dead(self) -> ChildProcess | None: ...

    def stop(self, grace: float = 10.0) -> dict[str, int | None]: ...


class Ending(enum.Enum):
    """How :func:`run_in_foreground` ended; every child is stopped in each case."""

    STOPPED = "stopped"  # SIGINT or SIGTERM asked us to stop
    CHILD_DIED = "child died"  # a child exited on its own after all were ready
    START_FAILED = "start failed"  # a child exited, or was late, before it was ready
    BAD_SETUP = "bad setup"  # the children cannot be laid out as asked (InvalidArgument)


def death_notice(child: ChildProcess, lines: int = 20) -> str:
    """``seed exited with code -9; see ROOT/logs/seed.log`` and the log's last lines."""
    return (
        f"{child.name} exited with code {child.popen.returncode}; see {child.log_path}\n"
        f"{child.log_tail(lines)}"
    )


def wait_for_first_death(
    children: Supervised, *, poll_s: float = 0.2, sleep: Callable[[float], None] = time.sleep
) -> ChildProcess:
    """Block until one child has exited and return it (polling: a child's exit raises no signal we use)."""
    while (dead := children.first_dead()) is None:
        sleep(poll_s)
    return dead


def run_in_foreground(
    children: Supervised,
    *,
    on_ready: Callable[[], None],
    say: Callable[[str], None],
    grace: float = 10.0,
    poll_s: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
) -> Ending:
    """Start ``children``, call ``on_ready``, watch them until a signal or a death; stop them all.

    ``say`` gets each line for the user (why it ended, what is being stopped);
    ``grace`` is how long each child has between SIGTERM and SIGKILL.
    """
    with interrupt_on_signals():
        try:
            try:
                children.start()
            except ChildFailed as e:
                say(str(e))
                return Ending.START_FAILED
            except InvalidArgument as e:
                say(str(e))
                return Ending.BAD_SETUP
            on_ready()
            dead = wait_for_first_death(children, poll_s=poll_s, sleep=sleep)
            ignore_signals()
            say(f"{death_notice(dead)}\nstopping the others")
            children.stop(grace)
            return Ending.CHILD_DIED
        except Interrupted:
            say("stopping")
            children.stop(grace)
            say("stopped")
            return Ending.STOPPED
        finally:
            children.stop(grace)  # a no-op when already stopped
