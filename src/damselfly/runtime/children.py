"""Child processes that announce readiness through a ready file.

Why a module: ``damselfly up``, the benchmarks and the integration tests all
start ``python -m damselfly ...`` children, wait until each has written its
ready file (JSON, written atomically once its listeners are bound; see
:func:`damselfly.process.write_ready_file`), and must stop every one of them by
PID, also when something fails half-way. Doing that in one place keeps them all
honest about cleanup.

Children run in their own session (so a Ctrl-C in the terminal reaches only the
supervisor, which stops them in order) and ask the kernel for SIGTERM if the
supervisor dies (``PR_SET_PDEATHSIG``), so a killed supervisor leaves no orphans.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DamselflyError

_PR_SET_PDEATHSIG = 1


class ChildFailed(DamselflyError):
    """A child process exited, or did not become ready in time."""

    def __init__(self, child: ChildProcess, message: str) -> None:
        super().__init__(message)
        self.child = child


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def python_module_command(module: str, *args: str) -> list[str]:
    """``[sys.executable, -m, module, *args]``: children run the same interpreter as we do."""
    return [sys.executable, "-m", module, *args]


@dataclass
class ChildProcess:
    """One started child: its command, log, ready file and, once ready, what it reported."""

    name: str
    argv: list[str]
    log_path: Path
    ready_file: Path | None
    popen: subprocess.Popen[bytes]
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        return log_tail(self.log_path, lines)

    def wait_ready(self, timeout: float = 30.0) -> dict[str, Any]:
        """Block until the ready file holds JSON; raise :class:`ChildFailed` if the child dies or is late."""
        if self.ready_file is None:
            raise ValueError(f"{self.name} has no ready file")
        deadline = time.monotonic() + timeout
        while True:
            data = read_ready_file(self.ready_file)
            if data is not None:
                self.ready = data
                return data
            code = self.popen.poll()
            if code is not None:
                raise ChildFailed(
                    self,
                    f"{self.name} exited with code {code} before it was ready; "
                    f"see {self.log_path}\n{self.log_tail()}",
                )
            if time.monotonic() > deadline:
                raise ChildFailed(
                    self,
                    f"{self.name} was not ready after {timeout:.0f} s; "
                    f"see {self.log_path}\n{self.log_tail()}",
                )
            time.sleep(0.02)


def read_ready_file(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file, or a note that it is empty/missing."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) if tail else f"(log {path} is empty)"


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    ready_file: Path | None = None,
    env: dict[str, str] | None = None,
) -> ChildProcess:
    """Start ``argv`` with stdout and stderr appended to ``log_path``; a stale ready file is removed first."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if ready_file is not None:
        ready_file.parent.mkdir(parents=True, exist_ok=True)
        ready_file.unlink(missing_ok=True)
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        full_env.update(env)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return ChildProcess(name, list(argv), log_path, ready_file, popen)


def stop_all(children: Iterable[ChildProcess], *, grace: float = 10.0) -> dict[str, int | None]:
    """SIGTERM every live child by PID, wait up to ``grace`` s, SIGKILL the rest; reap all.

    Returns each child's exit code (None if it could not be reaped, which
    should not happen after SIGKILL).
    """
    children = list(children)
    for child in children:
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(timeout=5.0)
    return {child.name: child.popen.returncode for child in children}


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
