"""Task, host and peer identifiers (Dragonfly v2 conventions).

* Task ID: sha256 over the URL with filtered query parameters removed, then the
  tag, the application and the piece length when one is set. Two requests for
  the same content with different signatures (S3 ``X-Amz-*``...) are one task.
* Host ID: ``ip-hostname``; a seed peer's host ID ends in ``-seed``.
* Peer ID: ``ip-hostname-uuid``; a seed peer's ends in ``-seed``.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

if TYPE_CHECKING:
    from .domain import DownloadSpec

# Query parameters that carry signatures or expiry, not identity, on the
# object stores users put behind Dragonfly: S3, GCS, OSS (Alibaba), OBS
# (Huawei), COS (Tencent). Matched case-insensitively by prefix or name.
DEFAULT_FILTERED_QUERY_PARAMS: tuple[str, ...] = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "X-Amz-User-Agent",
    "X-Goog-Algorithm",
    "X-Goog-Credential",
    "X-Goog-Date",
    "X-Goog-Expires",
    "X-Goog-SignedHeaders",
    "X-Goog-Signature",
    "OSSAccessKeyId",
    "Expires",
    "Signature",
    "security-token",
    "X-Obs-Date",
    "X-Obs-Security-Token",
    "AccessKeyId",
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
    "x-cos-security-token",
)

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def filter_url(url: str, filtered_query_params: Iterable[str] | None = None) -> str:
    """Return ``url`` without the filtered query parameters (order of the rest kept)."""
    names = DEFAULT_FILTERED_QUERY_PARAMS if filtered_query_params is None else tuple(filtered_query_params)
    if not names:
        return url
    lowered = {n.lower() for n in names}
    parts = urlsplit(url)
    if not parts.query:
        return url
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in lowered]
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment))


def task_id(
    url: str,
    *,
    tag: str = "",
    application: str = "",
    piece_length: int | None = None,
    filtered_query_params: Iterable[str] | None = None,
) -> str:
    """The ID of the task that downloads ``url`` with these options."""
    h = hashlib.sha256()
    h.update(filter_url(url, filtered_query_params).encode())
    h.update(tag.encode())
    h.update(application.encode())
    if piece_length:
        h.update(str(piece_length).encode())
    return h.hexdigest()


def blob_task_id(digest: str, *, tag: str = "", application: str = "") -> str:
    """Task ID for content addressed by digest (a registry blob), independent of the registry."""
    h = hashlib.sha256()
    h.update(digest.encode())
    h.update(tag.encode())
    h.update(application.encode())
    return h.hexdigest()


def download_task_id(spec: DownloadSpec) -> str:
    """The task ID a download request names: by blob digest when it carries one, else by URL."""
    if spec.content_for_calculating_task_id:
        return blob_task_id(spec.content_for_calculating_task_id, tag=spec.tag, application=spec.application)
    return task_id(
        spec.url,
        tag=spec.tag,
        application=spec.application,
        piece_length=spec.piece_length,
        filtered_query_params=spec.filtered_query_params,
    )


def is_task_id(value: str) -> bool:
    """Whether ``value`` has the shape of a task ID (64 lowercase hex digits)."""
    return bool(_SHA256_HEX.fullmatch(value))


def host_id(ip: str, hostname: str, *, seed: bool = False) -> str:
    return f"{ip}-{hostname}" + ("-seed" if seed else "")


def peer_id(ip: str, hostname: str, *, seed: bool = False) -> str:
    return f"{ip}-{hostname}-{uuid.uuid4()}" + ("-seed" if seed else "")
