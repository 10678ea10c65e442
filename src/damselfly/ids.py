"""Task, host and peer identifiers, as Dragonfly v2 computes them.

Checked against ``dragonfly-client-util/src/id_generator/mod.rs`` and
``src/http/query_params.rs`` of ``dragonflyoss/client`` (commit ff17c0b7), whose
own test vectors ``tests/conformance/test_task_ids.py`` replays:

* URL task: sha256 over the URL (parsed and serialized as WHATWG URLs are, the
  filtered query parameters removed by exact name, the rest re-encoded as a
  form; no query left drops the ``?``; a bare ``/`` path drops its slash), then
  the tag, the application, the repository revision, the piece length when one
  is set, and the task type ``STANDARD``. Two requests for the same content
  with different signatures (S3 ``X-Amz-*``...) are one task.
* Content task (``content_for_calculating_task_id``): sha256 of that content
  alone; tag and application do not count.
* Registry blob with ``enable_task_id_based_blob_digest``: the hex of the
  digest in the blob URL (``.../v2/<name>/blobs/sha256:<hex>``), so one blob
  pulled from two registries is one task.
* Host ID: ``ip-hostname``; a seed peer's host ID ends in ``-seed``.
* Peer ID: ``ip-hostname-uuid``; a seed peer's ends in ``-seed``.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from ada_url import URL

from .errors import InvalidArgument

if TYPE_CHECKING:
    from .domain import DownloadSpec

# Query parameters that carry signatures or expiry, not identity, on the object
# stores users put behind Dragonfly (S3, GCS, OSS, OBS, COS), and containerd's
# ``ns``: Dragonfly's default list, in its order, matched by exact name.
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
    "SecurityToken",
    "AccessKeyId",
    "X-Obs-Date",
    "X-Obs-Security-Token",
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
    "x-cos-security-token",
    "ns",
)

# The task type's name as the ID hashes it (common.v2.TaskType).
STANDARD = "STANDARD"

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# A registry blob URL, as Dragonfly recognizes one (dragonfly-client-util/src/digest/mod.rs).
_BLOB_URL = re.compile(r"(.*)://(.*)/v2/(.*)/blobs/([^?]+)(?:\?.*)?")
# Bytes a form serializes as they are; space becomes "+", every other byte %XX.
_FORM_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-._")


def _form_decode(value: str) -> str:
    return unquote_to_bytes(value.replace("+", " ")).decode("utf-8", "replace")


def _form_encode(value: str) -> str:
    out = []
    for byte in value.encode():
        if byte in _FORM_SAFE:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """``application/x-www-form-urlencoded`` parsing, as the WHATWG URL standard does it."""
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((_form_decode(name), _form_decode(value)))
    return pairs


def filter_url(url: str, filtered_query_params: Iterable[str] | None = None) -> str:
    """``url`` as a task ID hashes it: normalized, without the filtered query parameters.

    ``None`` filters Dragonfly's default list; an empty list filters nothing (but
    the query is still re-encoded, as Dragonfly does).
    """
    names = set(DEFAULT_FILTERED_QUERY_PARAMS if filtered_query_params is None else filtered_query_params)
    try:
        parsed = URL(url)
    except ValueError as e:
        raise InvalidArgument(f"not a valid URL: {url!r}") from e
    kept = [(k, v) for k, v in _query_pairs(parsed.search[1:]) if k not in names]
    parsed.search = "&".join(f"{_form_encode(k)}={_form_encode(v)}" for k, v in kept)
    href = str(parsed.href)
    if href.endswith("/") and parsed.pathname == "/":
        href = href.rstrip("/")
    return href


def task_id(
    url: str,
    *,
    tag: str = "",
    application: str = "",
    piece_length: int | None = None,
    filtered_query_params: Iterable[str] | None = None,
    revision: str = "",
) -> str:
    """The ID of the task that downloads ``url`` with these options (a URL task)."""
    h = hashlib.sha256()
    h.update(filter_url(url, filtered_query_params).encode())
    h.update(tag.encode())
    h.update(application.encode())
    h.update(revision.encode())
    if piece_length:
        h.update(str(piece_length).encode())
    h.update(STANDARD.encode())
    return h.hexdigest()


def content_task_id(content: str) -> str:
    """The ID of a task named by its content (``content_for_calculating_task_id``)."""
    return hashlib.sha256(content.encode()).hexdigest()


def blob_digest(url: str) -> str | None:
    """The sha256 hex of a registry blob URL's digest; None when ``url`` names no sha256 blob.

    Dragonfly also takes sha512 and crc32 digests here; their IDs would not be the
    64 hex digits a Damselfly store accepts, so such blobs stay URL tasks.
    """
    m = _BLOB_URL.fullmatch(url)
    if m is None:
        return None
    algorithm, _, encoded = m.group(4).partition(":")
    if algorithm != "sha256" or not _SHA256_HEX.fullmatch(encoded):
        return None
    return encoded


def download_task_id(spec: DownloadSpec) -> str:
    """The task ID a download request names, by Dragonfly's rules in Dragonfly's order.

    The content named for the ID wins; else, with ``enable_task_id_based_blob_digest``,
    a registry blob URL's digest; else the URL and the options that make it a task
    (dragonfly-client/src/proxy/task.rs:88-104, grpc/dfdaemon_download.rs:346-370).
    """
    if spec.content_for_calculating_task_id:
        return content_task_id(spec.content_for_calculating_task_id)
    if spec.enable_task_id_based_blob_digest:
        encoded = blob_digest(spec.url)
        if encoded is not None:
            return encoded
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
