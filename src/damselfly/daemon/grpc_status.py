"""How a failed download ends a gRPC call: one mapping for every daemon service (docs/PROTOCOL.md)."""

from __future__ import annotations

import contextlib
import errno
import json
from collections.abc import AsyncGenerator
from typing import Any

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
    StorageError,
)

# The trailer gRPC carries a status's details in (binary, base64 on the wire).
DETAILS_KEY = "grpc-status-details-bin"
# Response headers of an origin's error that stay out of the details: a session cookie the
# request's own credentials earned is not passed on to whoever asked (a peer, a scheduler).
_PRIVATE_HEADERS = frozenset({"set-cookie", "set-cookie2"})


def backend_details(exc: BaseException) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata for a download the origin refused, as Dragonfly's dfdaemon sends it:
    ``grpc-status-details-bin`` holding JSON ``errordetails.v2.Backend{message, header,
    status_code}`` (C:dragonfly-client/src/grpc/dfdaemon_download.rs:395-420; the Rust dfget
    prints the origin's status and headers from it, C:dragonfly-client/src/bin/dfget/main.rs:
    511-530; Damselfly's dfget maps it to exit code 4). Empty for any other failure."""
    if not isinstance(exc, SourceStatusError):
        return ()
    # Names in lower case, as the Rust client's http::HeaderMap gives them.
    header = {k.lower(): v for k, v in exc.headers.items() if k.lower() not in _PRIVATE_HEADERS}
    message = f"{exc.status} {exc.reason}".rstrip()  # as the Rust backend's: "404 Not Found"
    backend = {"message": message, "header": header, "status_code": exc.status}
    return ((DETAILS_KEY, json.dumps(backend, separators=(",", ":")).encode()),)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status a failed download ends with (see docs/PROTOCOL.md)."""
    if isinstance(exc, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, DigestMismatch):
        return grpc.StatusCode.DATA_LOSS, str(exc)
    if isinstance(exc, DownloadTimeout | TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc) or "download timed out"
    if isinstance(exc, SourceStatusError):
        return grpc.StatusCode.INTERNAL, str(exc)  # as Dragonfly's, with backend_details
    if isinstance(exc, SourceUnreachable):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, NoCandidateParents):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, StorageError):
        # The daemon's own disk; out of space is what RESOURCE_EXHAUSTED is for.
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        code = grpc.StatusCode.RESOURCE_EXHAUSTED if full else grpc.StatusCode.INTERNAL
        return code, str(exc)
    if isinstance(exc, DamselflyError):
        return grpc.StatusCode.INTERNAL, str(exc)
    return grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}"


async def write_stream(context: Any, messages: AsyncGenerator[Any, None]) -> None:
    """Send ``messages`` on a server-streaming call with ``context.write``, closing them here.

    A servicer written as an async generator is left suspended at a message when its
    caller goes (deadline, hang-up): grpc cancels the send, not the generator, which the
    garbage collector closes later in another task and context ("Task exception was never
    retrieved", a context variable reset in the wrong context). Written this way the
    cancel arrives in the call's own task and the messages' generator is closed at once,
    its ``finally`` blocks run where they began (generators it iterates must close theirs
    the same way). A write to a caller already gone ends the call quietly."""
    async with contextlib.aclosing(messages) as stream:
        async for msg in stream:
            try:
                await context.write(msg)
            except Exception:
                if context.cancelled() or context.done():
                    return  # the caller is gone: nobody to tell
                raise
