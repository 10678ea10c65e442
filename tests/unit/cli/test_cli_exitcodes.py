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


def test_the_documented_numbers_stay_put() -> None:
    """README's tables (dfget, dfcache, preheat, up) promise these numbers to scripts."""
    assert {name: int(code) for name, code in ExitCode.__members__.items()} == {
        "OK": 0,
        "UNEXPECTED": 1,
        "FAILED": 1,
        "USAGE": 2,
        "DAEMON_UNAVAILABLE": 3,
        "SCHEDULER_UNAVAILABLE": 3,
        "ORIGIN": 4,
        "DIGEST_MISMATCH": 5,
        "TIMEOUT": 6,
        "OUTPUT": 7,
        "NO_PARENT": 8,
        "CANCELLED": 130,
    }


def test_up_exits_0_when_stopped_1_when_a_child_fails_2_for_a_bad_layout() -> None:
    from damselfly.cli.up import EXIT_CODES
    from damselfly.runtime.supervisor import Ending

    assert {ending: int(code) for ending, code in EXIT_CODES.items()} == {
        Ending.STOPPED: 0,
        Ending.CHILD_DIED: 1,
        Ending.START_FAILED: 1,
        Ending.BAD_SETUP: 2,
    }


@pytest.mark.parametrize(
    ("details_bin", "expected"),
    [
        (b'{"message":"404 Not Found","header":{},"status_code":404}', ExitCode.ORIGIN),
        (b'{"message":"connection refused","header":{}}', ExitCode.ORIGIN),  # a Backend without a status
        (b"", ExitCode.UNEXPECTED),
        (b"\x08\x0d\x12\x03bad", ExitCode.UNEXPECTED),  # a google.rpc.Status, not Dragonfly's JSON
        (b'{"unrelated":1}', ExitCode.UNEXPECTED),
    ],
)
def test_internal_with_dragonflys_backend_details_is_the_origins_refusal(details_bin, expected):
    # Damselfly's and Dragonfly's daemons end a download the origin refused with INTERNAL and
    # errordetails.v2.Backend as JSON in grpc-status-details-bin.
    f = failure_from_status(
        "INTERNAL", "origin answered 404 Not Found for http://h/x", details_bin=details_bin
    )
    assert f.code is expected
