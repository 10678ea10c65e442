"""Credentials go to the origin and nowhere else.

A download's request headers may carry the user's credentials for the origin
(a registry token, basic auth, a cookie). The daemon that holds them uses
them against the origin; everything it sends elsewhere (the scheduler, other
peers, logs) goes through :func:`without_credentials` first.
"""

from __future__ import annotations

from collections.abc import Mapping

CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "x-registry-auth",
        "x-amz-security-token",
        "x-goog-iam-authorization-token",
    }
)


def is_credential(name: str) -> bool:
    return name.lower() in CREDENTIAL_HEADERS


def without_credentials(headers: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``headers`` with every credential header removed."""
    return {k: v for k, v in headers.items() if not is_credential(k)}


def redact(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` for logging: credential values replaced by ``<redacted>``."""
    return {k: ("<redacted>" if is_credential(k) else v) for k, v in headers.items()}
