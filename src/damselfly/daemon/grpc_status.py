"""How a failed download ends a gRPC call: one mapping for every daemon service (docs/PROTOCOL.md)."""

from __future__ import annotations

import grpc

from ..errors import (
    DamselflyError,
    DigestMismatch,
    DownloadTimeout,
    InvalidArgument,
    NoCandidateParents,
    NotFound,
    SourceStatusError,
    SourceUnreachable,
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status a failed download ends with (see docs/PROTOCOL.md)."""
    if isinstance(exc, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, DigestMismatch):
        return grpc.StatusCode.DATA_LOSS, str(exc)
    if isinstance(exc, DownloadTimeout | TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "download timed out"
    if isinstance(exc, SourceStatusError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, SourceUnreachable):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, NoCandidateParents):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, DamselflyError):
        return grpc.StatusCode.INTERNAL, str(exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"
