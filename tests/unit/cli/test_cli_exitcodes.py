"""How daemon statuses and local errors become dfget exit codes."""

from __future__ import annotations

import pytest

from damselfly.cli.exitcodes import ExitCode, failure_from_error, failure_from_status
from damselfly.errors import (
    DaemonUnavailable,
    DigestMismatch,
    DownloadTimeout,
    InvalidArgument,
    NoCandidateParents,
    SourceStatusError,
    StorageError,
)


@pytest.mark.parametrize(
    ("code", "details", "b2s_disabled", "expected"),
    [
        ("DATA_LOSS", "digest mismatch, expected sha256:aa", False, ExitCode.DIGEST_MISMATCH),
        ("DEADLINE_EXCEEDED", "download timed out after 30 s", False, ExitCode.TIMEOUT),
        ("FAILED_PRECONDITION", "origin answered 404 Not Found for http://h/x", False, ExitCode.ORIGIN),
        ("FAILED_PRECONDITION", "origin answered 404 Not Found for http://h/x", True, ExitCode.ORIGIN),
        ("FAILED_PRECONDITION", "no candidate parents", True, ExitCode.NO_PARENT),
        ("NOT_FOUND", "origin answered 404", False, ExitCode.ORIGIN),
        ("UNAVAILABLE", "cannot reach the origin for http://h/x: connection refused", False, ExitCode.ORIGIN),
        ("UNAVAILABLE", "failed to connect to all addresses", False, ExitCode.DAEMON_UNAVAILABLE),
        ("UNAVAILABLE", "Socket closed", False, ExitCode.DAEMON_UNAVAILABLE),
        ("INVALID_ARGUMENT", "piece length must be positive", False, ExitCode.USAGE),
        ("INVALID_ARGUMENT", "output path /x is a directory", False, ExitCode.OUTPUT),
        ("PERMISSION_DENIED", "cannot write /x", False, ExitCode.OUTPUT),
        ("INTERNAL", "boom", False, ExitCode.UNEXPECTED),
        ("UNKNOWN", "", False, ExitCode.UNEXPECTED),
    ],
)
def test_status_mapping(code: str, details: str, b2s_disabled: bool, expected: ExitCode) -> None:
    failure = failure_from_status(code, details, back_to_source_disabled=b2s_disabled)
    assert failure.code is expected
    assert "\n" not in failure.message and failure.message


def test_daemon_gone_mid_download_says_so() -> None:
    f = failure_from_status("UNAVAILABLE", "Socket closed", started=True)
    assert f.code is ExitCode.DAEMON_UNAVAILABLE and "went away" in f.message


def test_not_running_hint_says_how_to_start_one() -> None:
    f = failure_from_status("UNAVAILABLE", "failed to connect to all addresses")
    assert "damselfly up --data-dir" in f.message and "-e" in f.message


def test_multiline_details_become_one_line() -> None:
    f = failure_from_status("INTERNAL", "first line\nTraceback...\nmore")
    assert f.message.endswith("first line")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (DaemonUnavailable("x"), ExitCode.DAEMON_UNAVAILABLE),
        (DigestMismatch("f", "sha256:a", "sha256:b"), ExitCode.DIGEST_MISMATCH),
        (DownloadTimeout("x"), ExitCode.TIMEOUT),
        (NoCandidateParents("x"), ExitCode.NO_PARENT),
        (SourceStatusError("http://h/x", 500), ExitCode.ORIGIN),
        (StorageError("x"), ExitCode.OUTPUT),
        (InvalidArgument("x"), ExitCode.USAGE),
        (RuntimeError("x"), ExitCode.UNEXPECTED),
    ],
)
def test_error_mapping(exc: BaseException, expected: ExitCode) -> None:
    assert failure_from_error(exc).code is expected


def test_exit_codes_are_distinct() -> None:
    values = [c.value for c in ExitCode]
    assert len(values) == len(set(values))
