"""The foreground supervisor of ``damselfly up``: how each ending is reached, named and cleaned up.

No processes: a fake set of children stands in for the cluster, a fake sleep
for the poll, and ``signal.raise_signal`` for Ctrl-C.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from damselfly.errors import InvalidArgument
from damselfly.runtime.children import ChildFailed, ChildProcess
from damselfly.runtime.supervisor import (
    Ending,
    Interrupted,
    interrupt_on_signals,
    run_in_foreground,
)


@dataclass
class _Popen:
    returncode: int | None = None
    pid: int = 4242

    def poll(self) -> int | None:
        return self.returncode


def _child(tmp_path: Path, name: str, returncode: int | None = None) -> ChildProcess:
    log = tmp_path / f"{name}.log"
    log.write_text("starting\nboom: out of cheese\n")
    return ChildProcess(name, ["x"], log, None, cast(Any, _Popen(returncode)))


@dataclass
class FakeChildren:
    """Records what the supervisor asked; ``dead_after`` polls, ``dead`` has exited."""

    dead: ChildProcess | None = None
    dead_after: int = 0
    start_error: BaseException | None = None
    polls: int = 0
    stops: list[float] = field(default_factory=list)
    signals_at_stop: list[Any] = field(default_factory=list)

    def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error

    def first_dead(self) -> ChildProcess | None:
        self.polls += 1
        return self.dead if self.polls > self.dead_after else None

    def stop(self, grace: float = 10.0) -> dict[str, int | None]:
        self.stops.append(grace)
        self.signals_at_stop.append(signal.getsignal(signal.SIGINT))
        return {}


def _run(children: FakeChildren, sleep: Any = lambda s: None) -> tuple[Ending, list[str], int]:
    said: list[str] = []
    ready = []
    ending = run_in_foreground(
        children, on_ready=lambda: ready.append(1), say=said.append, grace=3.0, poll_s=0.5, sleep=sleep
    )
    return ending, said, len(ready)


def test_a_child_that_dies_is_named_with_its_log_and_the_rest_are_stopped(tmp_path: Path) -> None:
    naps: list[float] = []
    children = FakeChildren(dead=_child(tmp_path, "seed", -9), dead_after=2)
    ending, said, ready = _run(children, sleep=naps.append)
    assert ending is Ending.CHILD_DIED and ready == 1
    assert naps == [0.5, 0.5]
    assert said[0].startswith(f"seed exited with code -9; see {tmp_path / 'seed.log'}\n")
    assert "out of cheese" in said[0] and said[0].endswith("\nstopping the others")
    assert children.stops and set(children.stops) == {3.0}
    assert children.signals_at_stop[0] == signal.SIG_IGN  # a second Ctrl-C cannot cut the cleanup short


def test_a_signal_while_watching_stops_everything(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGINT)
    children = FakeChildren(dead=None, dead_after=10**9)
    ending, said, ready = _run(children, sleep=lambda s: signal.raise_signal(signal.SIGINT))
    assert ending is Ending.STOPPED and ready == 1
    assert said == ["stopping", "stopped"]
    assert children.stops
    assert signal.getsignal(signal.SIGINT) == before  # handlers restored on the way out


def test_a_child_that_fails_to_start_is_said_and_nothing_is_announced(tmp_path: Path) -> None:
    late = ChildFailed(_child(tmp_path, "seed", 1), "seed exited with code 1 before it was ready")
    children = FakeChildren(start_error=late)
    ending, said, ready = _run(children)
    assert ending is Ending.START_FAILED and ready == 0
    assert said == [str(late)]
    assert children.stops  # whatever started is stopped


def test_a_cluster_that_cannot_be_laid_out_is_a_usage_error() -> None:
    children = FakeChildren(start_error=InvalidArgument("socket path too long"))
    ending, said, ready = _run(children)
    assert ending is Ending.BAD_SETUP and ready == 0
    assert said == ["socket path too long"]


def test_interrupt_on_signals_raises_once_then_ignores_then_restores() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with interrupt_on_signals():
        with pytest.raises(Interrupted) as caught:
            signal.raise_signal(signal.SIGTERM)
        assert caught.value.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
        signal.raise_signal(signal.SIGINT)  # ignored: nothing raised
    assert {sig: signal.getsignal(sig) for sig in before} == before
