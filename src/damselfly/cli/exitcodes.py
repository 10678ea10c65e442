"""The exit codes of every Damselfly command, and dfget's one-line messages that go with them.

Why: scripts branch on exit codes, so each failure a user can act on has its
own, stable number (documented in README.md, "Exit codes"), and one number
means the same kind of failure in every command: ``dfget``, ``damselfly cache``,
``damselfly preheat``, ``damselfly up``, ``damselfly scheduler|daemon``. Two
names share a number where two commands say the same thing about different
peers (:attr:`ExitCode.SCHEDULER_UNAVAILABLE` is preheat's
:attr:`ExitCode.DAEMON_UNAVAILABLE`).

The daemon ends a failed download with a gRPC status (docs/PROTOCOL.md, "dfget
to its daemon"); :func:`failure_from_status` turns that into an exit code and a
message. It takes the status *name* so this module needs no grpc import and is
unit-tested plainly.
"""

from __future__ import annotations

import enum
import json

from ..errors import (
    DaemonUnavailable,
    DamselflyError,
    DigestMismatch,
    DownloadTimeout,
    InvalidArgument,
    NoCandidateParents,
    SourceError,
    StorageError,
)


class ExitCode(enum.IntEnum):
    """One table for all commands; the comment after each says which commands use it and for what."""

    OK = 0
    # dfget, cache: a bug or an error the daemon did not classify (INTERNAL, UNKNOWN).
    UNEXPECTED = 1
    # preheat: some download failed; up: a child exited (or was not ready in time).
    FAILED = 1
    # Bad flags or arguments (also click's own usage errors); scheduler|daemon: a bad config file.
    USAGE = 2
    # dfget, cache: no daemon listens on the endpoint.
    DAEMON_UNAVAILABLE = 3
    # preheat: the scheduler cannot be reached.
    SCHEDULER_UNAVAILABLE = 3
    # dfget: the origin answered an error or could not be reached; cache: no such persistent
    # cache task; preheat: the registry or origin refused (missing tag or platform, login).
    ORIGIN = 4
    DIGEST_MISMATCH = 5  # dfget, cache export: the content does not match --digest
    TIMEOUT = 6  # --timeout passed
    OUTPUT = 7  # the output path cannot be written
    # dfget: no peer has the content and --disable-back-to-source forbids the origin;
    # cache: the task is known but no live host holds it.
    NO_PARENT = 8
    CANCELLED = 130  # Ctrl-C (128 + SIGINT), as shells report it


DAEMON_HINT = (
    "start one with `damselfly up --data-dir DIR` (then use -e DIR/dfdaemon.sock) "
    "or `damselfly daemon ...`, or point -e/--endpoint (or DAMSELFLY_ENDPOINT) at its socket"
)


class DfgetFailure(DamselflyError):
    """A failed dfget run: the exit code and the one line to print."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:500]


# Details with which grpc itself reports a transport failure (no daemon, or it went
# away), as opposed to an UNAVAILABLE the daemon sends about the origin.
_TRANSPORT_MARKERS = ("failed to connect to all addresses", "socket closed", "connection reset by peer")


def origin_refused(details_bin: bytes) -> bool:
    """Whether a status's ``grpc-status-details-bin`` holds Dragonfly's ``errordetails.v2.Backend``
    as JSON: how a daemon, Damselfly's or Dragonfly's, says the origin refused the download."""
    try:
        backend = json.loads(details_bin) if details_bin else None
    except ValueError:
        return False
    return isinstance(backend, dict) and "message" in backend


def failure_from_status(
    code_name: str,
    details: str,
    *,
    back_to_source_disabled: bool = False,
    started: bool = False,
    details_bin: bytes = b"",
) -> DfgetFailure:
    """Map the gRPC status that ended a DownloadTask stream to an exit code and message.

    ``code_name`` is ``grpc.StatusCode.X.name`` (e.g. ``"DATA_LOSS"``);
    ``started`` says whether the daemon had answered anything yet; ``details_bin`` is the
    status's binary details (Dragonfly's Backend JSON for an origin's refusal).
    """
    msg = _first_line(details) or code_name.lower().replace("_", " ")
    if origin_refused(details_bin):
        return DfgetFailure(ExitCode.ORIGIN, f"origin error: {msg}")
    lowered = msg.lower()
    transport = "origin" not in lowered and any(m in lowered for m in _TRANSPORT_MARKERS)
    if code_name == "UNAVAILABLE" and transport:
        if started:
            return DfgetFailure(
                ExitCode.DAEMON_UNAVAILABLE, f"the daemon went away during the download ({msg})"
            )
        return DfgetFailure(ExitCode.DAEMON_UNAVAILABLE, f"cannot reach the daemon ({msg}); {DAEMON_HINT}")
    if code_name == "DATA_LOSS":
        return DfgetFailure(ExitCode.DIGEST_MISMATCH, f"digest mismatch: {msg}")
    if code_name == "DEADLINE_EXCEEDED":
        return DfgetFailure(ExitCode.TIMEOUT, f"timed out: {msg}")
    if code_name == "FAILED_PRECONDITION" and back_to_source_disabled and "origin answered" not in lowered:
        return DfgetFailure(
            ExitCode.NO_PARENT,
            f"no peer has this content and back-to-source is disabled: {msg}",
        )
    if code_name in ("NOT_FOUND", "FAILED_PRECONDITION", "UNAVAILABLE"):
        return DfgetFailure(ExitCode.ORIGIN, f"origin error: {msg}")
    if code_name == "INVALID_ARGUMENT":
        if "output" in lowered:
            return DfgetFailure(ExitCode.OUTPUT, f"output path error: {msg}")
        return DfgetFailure(ExitCode.USAGE, f"invalid argument: {msg}")
    if code_name == "PERMISSION_DENIED":
        return DfgetFailure(ExitCode.OUTPUT, f"permission denied: {msg}")
    if code_name == "CANCELLED":
        return DfgetFailure(ExitCode.CANCELLED, f"cancelled: {msg}")
    return DfgetFailure(ExitCode.UNEXPECTED, f"daemon error ({code_name}): {msg}")


def failure_from_error(exc: BaseException) -> DfgetFailure:
    """Map an exception raised on our side of the socket to an exit code and message."""
    if isinstance(exc, DfgetFailure):
        return exc
    text = _first_line(str(exc)) or type(exc).__name__
    mapping: list[tuple[type[BaseException], ExitCode]] = [
        (DaemonUnavailable, ExitCode.DAEMON_UNAVAILABLE),
        (DigestMismatch, ExitCode.DIGEST_MISMATCH),
        (DownloadTimeout, ExitCode.TIMEOUT),
        (NoCandidateParents, ExitCode.NO_PARENT),
        (SourceError, ExitCode.ORIGIN),
        (StorageError, ExitCode.OUTPUT),
        (InvalidArgument, ExitCode.USAGE),
        (KeyboardInterrupt, ExitCode.CANCELLED),
    ]
    for kind, code in mapping:
        if isinstance(exc, kind):
            return DfgetFailure(code, text)
    return DfgetFailure(ExitCode.UNEXPECTED, f"unexpected error: {type(exc).__name__}: {text}")
