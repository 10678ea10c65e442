"""An origin's refusal as Dragonfly's dfdaemon reports it: errordetails.v2.Backend as JSON in
grpc-status-details-bin (C:dragonfly-client/src/grpc/dfdaemon_download.rs:395-420)."""

from __future__ import annotations

import json

import grpc

from damselfly.cli.exitcodes import ExitCode, failure_from_status
from damselfly.daemon.grpc_status import DETAILS_KEY, backend_details, status_for
from damselfly.errors import DigestMismatch, SourceStatusError, SourceUnreachable


def test_an_origins_error_status_is_internal_with_its_status_and_headers() -> None:
    headers = {"Content-Type": "text/html", "Set-Cookie": "session=abc", "X-Request-Id": "r1"}
    exc = SourceStatusError("http://o/x", 403, "Forbidden", headers)
    assert status_for(exc) == (grpc.StatusCode.INTERNAL, "origin answered 403 Forbidden for http://o/x")
    ((key, raw),) = backend_details(exc)
    assert key == DETAILS_KEY
    # Names in lower case as Rust's HeaderMap gives them; the session cookie stays out.
    assert json.loads(raw) == {
        "message": "403 Forbidden",
        "header": {"content-type": "text/html", "x-request-id": "r1"},
        "status_code": 403,
    }
    # And dfget reads it back as the origin's refusal.
    assert failure_from_status("INTERNAL", str(exc), details_bin=raw).code is ExitCode.ORIGIN


def test_other_failures_carry_no_backend_details() -> None:
    assert backend_details(SourceUnreachable("cannot reach the origin")) == ()
    assert backend_details(DigestMismatch("content", "sha256:aa", "sha256:bb")) == ()
