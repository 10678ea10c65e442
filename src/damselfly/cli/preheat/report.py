"""What ``damselfly preheat`` shows: progress lines while it runs, then per-task results.

The results are plain data (:class:`Outcome`, :class:`TaskResult`) filled by
:mod:`.runner`; this module only renders them, as a table on stdout or, with
``--json``, as one JSON document whose keys scripts rely on (``ok``,
``exit_code``, ``error``, ``tasks[]`` with ``name``, ``url``, ``task_id``,
``content_length``, ``hosts``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import TextIO

from ...units import human_size
from ..exitcodes import ExitCode

# One line of progress per task: its name, then (hostname, holds it completely).
Layers = list[tuple[str, list[tuple[str, bool]]]]


@dataclass
class TaskResult:
    """One preheated task as the user sees it at the end."""

    name: str  # URL of a file, digest of an image blob
    url: str
    task_id: str
    hosts: list[str] = field(default_factory=list)  # hostnames holding it
    content_length: int | None = None

    @property
    def finished(self) -> bool:
        return bool(self.hosts)


@dataclass
class Outcome:
    """How a preheat ended: its exit code, the error line (if any), and each task."""

    code: ExitCode
    message: str = ""
    tasks: list[TaskResult] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(
            {
                "ok": self.code == ExitCode.OK,
                "exit_code": self.code,
                "error": self.message,
                "tasks": [
                    {
                        "name": t.name,
                        "url": t.url,
                        "task_id": t.task_id,
                        "content_length": t.content_length,
                        "hosts": t.hosts,
                    }
                    for t in self.tasks
                ],
            },
            indent=2,
        )


def progress_line(layers: Layers) -> str:
    """``2/3 tasks held; sha256:ab12…: host-a, (host-b)`` — parentheses: still downloading."""
    held = sum(1 for _, hosts in layers if any(done for _, done in hosts))
    parts = []
    for name, hosts in layers:
        who = ", ".join(h if done else f"({h})" for h, done in hosts) or "-"
        parts.append(f"{_short(name)}: {who}")
    return f"{held}/{len(layers)} tasks held; " + "; ".join(parts)


def _short(name: str) -> str:
    if name.startswith("sha256:"):
        return name[:19] + "…"
    return name if len(name) <= 60 else "…" + name[-59:]


class ProgressPrinter:
    """Prints a progress line to ``err`` whenever the picture differs from the last one printed."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.last = ""

    def show(self, layers: Layers) -> None:
        line = progress_line(layers)
        if line != self.last:
            self.last = line
            print(f"preheat: {line}", file=self.err, flush=True)


def report(outcome: Outcome, *, json_out: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Print the per-task results and the error (if any); returns the exit code."""
    if json_out:
        print(outcome.to_json(), file=out)
    else:
        for t in outcome.tasks:
            size = human_size(t.content_length) if t.content_length is not None else "?"
            state = "ok" if t.finished else "MISSING"
            hosts = ", ".join(t.hosts) or "-"
            print(f"{state:7} {_short(t.name):22} {size:>10}  task {t.task_id[:16]}  on {hosts}", file=out)
    if outcome.message:
        print(f"preheat failed: {outcome.message}", file=err)
    elif outcome.code == ExitCode.OK:
        print(f"preheat: done, {len(outcome.tasks)} task(s) warm", file=err)
    return outcome.code
