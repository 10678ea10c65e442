"""dfcache's exit codes and messages, and how a task is shown."""

from __future__ import annotations

import pytest

from damselfly.cli.cache.persistent_tasks import CacheTaskStat, failure_from_status, render
from damselfly.cli.exitcodes import ExitCode


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        ("NOT_FOUND", "persistent cache task abc is not known to the scheduler", ExitCode.ORIGIN),
        ("FAILED_PRECONDITION", "no live host holds persistent cache task abc", ExitCode.NO_PARENT),
        ("DATA_LOSS", "digest mismatch", ExitCode.DIGEST_MISMATCH),
        ("DEADLINE_EXCEEDED", "", ExitCode.TIMEOUT),
        ("INVALID_ARGUMENT", "output folder /x does not exist", ExitCode.OUTPUT),
        ("INVALID_ARGUMENT", "/x is not a regular file", ExitCode.USAGE),
        ("UNAVAILABLE", "failed to connect to all addresses", ExitCode.DAEMON_UNAVAILABLE),
        ("UNAVAILABLE", "scheduler at 1.2.3.4:8002: UNAVAILABLE", ExitCode.UNEXPECTED),
        ("INTERNAL", "boom", ExitCode.UNEXPECTED),
    ],
)
def test_status_to_exit_code(code: str, details: str, expected: ExitCode) -> None:
    failure = failure_from_status(code, details, what="export")
    assert failure.code == expected
    assert failure.message  # never an empty line


def test_not_found_says_what_failed_and_keeps_the_daemon_message() -> None:
    f = failure_from_status("NOT_FOUND", "persistent cache task 00ff is not known\nmore", what="export")
    assert f.message == "export: persistent cache task 00ff is not known"


def test_render_shows_replicas_and_expiry() -> None:
    s = CacheTaskStat(
        id="ab" * 32, state="Succeeded", content_length=10 * 1024 * 1024, piece_length=4 * 1024 * 1024,
        piece_count=3, replicas_wanted=3, persistent_replicas=2, replicas=4, ttl_s=7200, created_at=1000.0,
        tag="v1",
    )  # fmt: skip
    text = render(s, now=1000.0 + 1800)
    assert "2 of 3 persistent; 4 cop(ies) in all" in text
    assert "ttl       2h, expires in 1.5h" in text
    assert "tag       v1" in text and "ab" * 32 in text
