"""``ListTaskEntries``: what the origin says of a URL, asked as Dragonfly's HTTP backend asks.

Dragonfly answers this RPC (both daemon services) with its backend's ``stat``
(dragonfly-client/src/grpc/dfdaemon_upload.rs:789-871; the HTTP backend,
dragonfly-client-backend/src/http.rs:386-650, client commit ff17c0b7):

* ``GET`` with ``Range: bytes=0-0`` (a GET, not a HEAD: a signed URL is signed
  for its method); a 206's total comes from ``Content-Range``, whose header is
  then rewritten to look like the whole object's (``Content-Length``: the total);
  any other status's ``Content-Length`` is taken as it is;
* a 416 (some servers, for empty files) is asked again without the Range; a
  chunked answer without a length is asked again with ``HEAD``;
* whatever the status, the answer carries it, the headers and the length (0
  when unknown), and no entries (an HTTP URL is not a directory); an origin that
  cannot be reached gives an empty answer, not an error. Only a URL no backend
  serves is an error (``INTERNAL``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from ..errors import InvalidArgument

_DROP = frozenset(("range", "if-range", "host", "connection", "keep-alive"))


@dataclass(frozen=True, slots=True)
class OriginStat:
    """The origin's answer for a URL; all unknown when it could not be asked."""

    content_length: int | None = None
    response_header: dict[str, str] = field(default_factory=dict)
    status_code: int | None = None


def stat_from_answer(status: int, headers: Mapping[str, str]) -> OriginStat:
    """Length and headers from one answer, a 206 to ``bytes=0-0`` made to look whole."""
    header = {k: v for k, v in headers.items()}
    length: int | None = None
    lower = {k.lower(): k for k in header}
    if status == 206:
        content_range = header.pop(lower["content-range"], "") if "content-range" in lower else ""
        _, _, total = content_range.rpartition("/")
        length = int(total) if total.isdigit() else None
        if length is not None:
            header.pop(lower.get("content-length", ""), None)
            header["Content-Length"] = str(length)
    elif "content-length" in lower and header[lower["content-length"]].strip().isdigit():
        length = int(header[lower["content-length"]].strip())
    return OriginStat(length, header, status)


def _chunked_without_length(headers: Mapping[str, str]) -> bool:
    names = {k.lower() for k in headers}
    return "transfer-encoding" in names and "content-length" not in names


async def stat_url(
    session: aiohttp.ClientSession, url: str, request_header: Mapping[str, str], *, timeout: float
) -> OriginStat:
    """Ask the origin about ``url`` (see the module docstring). Raises InvalidArgument for a non-HTTP URL."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise InvalidArgument(f"no backend for {url!r}: this daemon fetches http:// and https:// URLs")
    headers = {k: v for k, v in request_header.items() if k.lower() not in _DROP}
    ranged = {**headers, "Range": "bytes=0-0"}
    limit = aiohttp.ClientTimeout(total=timeout)
    try:
        status, answer = await _ask(session, "GET", url, ranged, limit)
        if status == 416:
            status, answer = await _ask(session, "GET", url, headers, limit)
        elif _chunked_without_length(answer):
            status, answer = await _ask(session, "HEAD", url, ranged, limit)
    except (aiohttp.ClientError, TimeoutError, OSError):
        return OriginStat()
    return stat_from_answer(status, answer)


async def _ask(
    session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], timeout: Any
) -> tuple[int, dict[str, str]]:
    """One request; its status and headers (a body, if any, is left unread: only one byte was asked)."""
    async with session.request(method, url, headers=headers, timeout=timeout, allow_redirects=True) as resp:
        return resp.status, {k: v for k, v in resp.headers.items()}
