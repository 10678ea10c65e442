"""dfget's bad input: exit 2 with one line naming the problem, before any daemon is asked.

The endpoint is a socket nobody listens on: had dfget contacted it first, it would have
exited 3 (no daemon) instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from damselfly.cli import dfget_args
from damselfly.cli.exitcodes import ExitCode


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--rate-limit", "fast"], "--rate-limit: not a rate: 'fast'"),
        (["--rate-limit", "0"], "--rate-limit must be above 0"),
        (["--piece-length", "3"], "piece length '3' is out of range"),
        (["--piece-length", "65MiB"], "piece length '65MiB' is out of range"),
        (["--timeout", "soon"], "not a duration: 'soon'"),
    ],
)
def test_bad_input_exits_2_before_the_daemon_is_contacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    argv = ["http://127.0.0.1:9/f", "-O", str(tmp_path / "out"), "-e", str(tmp_path / "none.sock"), *args]
    assert dfget_args.run([*argv, "--no-progress"]) == ExitCode.USAGE == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err and "unexpected" not in err, err
    assert not (tmp_path / "out").exists()
