"""Every error Damselfly raises on purpose derives from :class:`DamselflyError`.

The tree::

    DamselflyError
    ├── ConfigError                 bad or missing configuration
    ├── InvalidArgument (ValueError) a request or flag that cannot be honoured
    ├── NotFound (LookupError)      unknown task, peer, host or piece
    ├── DigestMismatch              a piece or a whole file failed its digest check
    ├── ProtocolError               a malformed frame or message from another party
    ├── StorageError (OSError)      the piece store could not read or write
    ├── SourceError                 the origin failed
    │   ├── SourceStatusError       the origin answered with an error status
    │   └── SourceUnreachable       the origin could not be reached (DNS, refused, TLS)
    ├── PeerError                   a parent failed to serve a piece
    ├── PieceElsewhere              a seed peer gave this piece out already: ask a peer
    ├── SchedulerError              the scheduler refused or is unreachable
    │   ├── NoCandidateParents      nothing to download from and back-to-source is disabled
    │   └── StoreUnavailable        the scheduler's shared store (Redis) cannot be reached
    ├── DaemonUnavailable           the local daemon is not running (dfget)
    ├── DownloadTimeout (TimeoutError)
    ├── ResourceExhausted           a limit was hit; try again later
    └── PermissionDenied            the caller may not do this (authz.py)

Foreign exceptions (grpc, aiohttp, OSError) are translated at the boundary that
catches them, so code above the boundary handles only these.
"""

from __future__ import annotations

from collections.abc import Mapping


class DamselflyError(Exception):
    """Root of all Damselfly errors."""


class ConfigError(DamselflyError):
    pass


class InvalidArgument(DamselflyError, ValueError):
    pass


class NotFound(DamselflyError, LookupError):
    pass


class DigestMismatch(DamselflyError):
    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: digest mismatch, expected {expected}, got {actual}")
        self.what = what
        self.expected = expected
        self.actual = actual


class ProtocolError(DamselflyError):
    pass


class StorageError(DamselflyError, OSError):
    pass


class SourceError(DamselflyError):
    pass


class SourceStatusError(SourceError):
    def __init__(
        self, url: str, status: int, reason: str = "", headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"origin answered {status} {reason}".rstrip() + f" for {url}")
        self.url = url
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})  # the error response's, for Dragonfly's Backend details


class SourceUnreachable(SourceError):
    pass


class PeerError(DamselflyError):
    pass


class PieceElsewhere(DamselflyError):
    """A super-seeding parent refused a piece it already gave to the swarm (not a failure)."""


class SchedulerError(DamselflyError):
    pass


class NoCandidateParents(SchedulerError):
    pass


class StoreUnavailable(SchedulerError):
    pass


class DaemonUnavailable(DamselflyError):
    pass


class DownloadTimeout(DamselflyError, TimeoutError):
    pass


class ResourceExhausted(DamselflyError):
    pass


class PermissionDenied(DamselflyError):
    """The caller may not do this (gRPC ``PERMISSION_DENIED``; who may what: docs/SECURITY.md)."""
