"""The ``X-Dragonfly-*`` headers of a proxied request, read as Dragonfly's proxy reads them.

Pure functions over a header mapping; the proxy (:mod:`.proxy`) turns what they
return into a :class:`~damselfly.domain.DownloadSpec` and its answer. Each rule
is Dragonfly's (dragonfly-client/src/proxy/header.rs and mod.rs, client commit
ff17c0b7), so a client written for a Dragonfly proxy gets the same task and the
same answer here:

* ``Tag`` / ``Application``: the task's tag and application (part of a URL task's ID).
* ``Priority``: an integer; absent or not a number, 6 (``LEVEL6``).
* ``Filtered-Query-Params``: comma-separated names, each trimmed; absent, the
  default list (:data:`damselfly.ids.DEFAULT_FILTERED_QUERY_PARAMS`).
* ``Piece-Length``: a byte size as Rust's ``bytesize`` 1.3 parses it (``4194304``,
  ``4mib``, ``4 MiB``, ``4mb`` = 4,000,000); unparsable, ignored. A size outside
  4-64 MiB is refused (400).
* ``Use-P2P``: ``true`` (any case) sends a GET that no proxy rule matches through
  the swarm; anything else leaves the rules to decide (``false`` does not
  bypass a rule that matches).
* ``Content-For-Calculating-Task-ID``: the task ID is the sha256 of this value.
* ``Enable-Task-ID-Based-Blob-Digest``: ``true`` (any case) names a registry blob's
  task by its digest, any other value by its URL; absent, ``proxy.blobTaskIdByDigest``.
* ``Prefetch``: only for a request with ``Range``: ``true``/other sets the
  download's ``prefetch``; absent, ``proxy.prefetch``. (A Damselfly task always
  downloads whole, so a Range request fetches the whole content either way.)

Never honoured for a proxy client: ``Output-Path`` and ``Force-Hard-Link``. In
Dragonfly they make the daemon write a file wherever the header says (as the
daemon's user) and skip the copy that keeps the cached content apart from the
client's file; any client that can reach the proxy could use them, so here
they are ignored (and never sent on to the origin).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ...errors import InvalidArgument
from ...pieces import MAX_PIECE_LENGTH, MIN_PIECE_LENGTH
from ...units import MiB

TAG = "X-Dragonfly-Tag"
APPLICATION = "X-Dragonfly-Application"
PRIORITY = "X-Dragonfly-Priority"
FILTERED_QUERY_PARAMS = "X-Dragonfly-Filtered-Query-Params"
PIECE_LENGTH = "X-Dragonfly-Piece-Length"
USE_P2P = "X-Dragonfly-Use-P2P"
OUTPUT_PATH = "X-Dragonfly-Output-Path"
FORCE_HARD_LINK = "X-Dragonfly-Force-Hard-Link"
CONTENT_FOR_CALCULATING_TASK_ID = "X-Dragonfly-Content-For-Calculating-Task-ID"
ENABLE_TASK_ID_BASED_BLOB_DIGEST = "X-Dragonfly-Enable-Task-ID-Based-Blob-Digest"
PREFETCH = "X-Dragonfly-Prefetch"
IGNORED = (OUTPUT_PATH, FORCE_HARD_LINK)

# Response headers (dragonfly-client/src/proxy/header.rs:94-115).
TASK_ID = "X-Dragonfly-Task-ID"
TASK_DOWNLOAD_FINISHED = "X-Dragonfly-Task-Download-Finished"
SERVER_IP = "X-Dragonfly-Server-IP"
ERROR_TYPE = "X-Dragonfly-Error-Type"
# Values of X-Dragonfly-Error-Type: the origin failed (its status passed on), the
# proxy refused the request, or the download in the daemon failed.
ERROR_BACKEND = "backend"
ERROR_PROXY = "proxy"
ERROR_DFDAEMON = "dfdaemon"

DEFAULT_PRIORITY = 6  # common.v2.Priority.LEVEL6
_I32 = (-(2**31), 2**31 - 1)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_UNSIGNED = re.compile(r"\+?[0-9]+")
_NUMBER = re.compile(r"[0-9.]*")
# bytesize 1.3.3 src/parse.rs: powers of ten and of two, any case.
_UNITS = {
    "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4, "p": 1000**5, "pb": 1000**5,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4, "pi": 1024**5, "pib": 1024**5,
}  # fmt: skip
_U64_MAX = 2**64 - 1


@dataclass(frozen=True, slots=True)
class RequestHeaders:
    """What a proxied request's ``X-Dragonfly-*`` headers ask for (None: header absent)."""

    tag: str = ""
    application: str = ""
    priority: int = DEFAULT_PRIORITY
    filtered_query_params: list[str] | None = None
    piece_length: int | None = None
    use_p2p: bool = False
    content_for_calculating_task_id: str = ""
    enable_task_id_based_blob_digest: bool | None = None
    prefetch: bool | None = None
    ignored: tuple[str, ...] = ()  # the names of headers present and never honoured

    def check(self) -> None:
        """Refuse what Dragonfly's proxy (and its scheduler) would: a piece length out of range."""
        if self.piece_length is not None and not MIN_PIECE_LENGTH <= self.piece_length <= MAX_PIECE_LENGTH:
            raise InvalidArgument(
                f"{PIECE_LENGTH}: {self.piece_length} bytes is outside "
                f"{MIN_PIECE_LENGTH // MiB}-{MAX_PIECE_LENGTH // MiB} MiB (try 4mib .. 64mib)"
            )

    def prefetch_for(self, has_range: bool, default: bool) -> bool:
        """The download's ``prefetch``: only a Range request prefetches; the header wins over the config."""
        if not has_range:
            return False
        return default if self.prefetch is None else self.prefetch


def parse_bytesize(value: str) -> int | None:
    """``value`` as Rust's ``bytesize`` 1.3.3 parses a size; None where it fails.

    A plain unsigned integer is bytes; else digits and dots, optional blanks, then
    a unit (``b``, ``k``/``kb``... decimal, ``ki``/``kib``... binary, any case), the
    product truncated to whole bytes.
    """
    if _UNSIGNED.fullmatch(value) and int(value) <= _U64_MAX:
        return int(value)
    number = _NUMBER.match(value)
    digits = number.group() if number else ""
    try:
        amount = float(digits) if digits and digits.count(".") <= 1 and digits != "." else None
    except ValueError:
        amount = None
    if amount is None:
        return None
    factor = _UNITS.get(value[len(digits) :].lstrip().lower())
    if factor is None:
        return None
    product = amount * factor
    return _U64_MAX if product >= _U64_MAX else int(product)  # Rust's `as u64` saturates


def _flag(value: str | None) -> bool | None:
    return None if value is None else value.lower() == "true"


def _priority(value: str | None) -> int:
    if value is None or not _INTEGER.fullmatch(value):
        return DEFAULT_PRIORITY
    number = int(value)
    return number if _I32[0] <= number <= _I32[1] else DEFAULT_PRIORITY


def read(headers: Mapping[str, str]) -> RequestHeaders:
    """The ``X-Dragonfly-*`` request headers of one request (``headers`` looked up case-insensitively)."""
    filtered = headers.get(FILTERED_QUERY_PARAMS)
    piece_length = headers.get(PIECE_LENGTH)
    return RequestHeaders(
        tag=headers.get(TAG, ""),
        application=headers.get(APPLICATION, ""),
        priority=_priority(headers.get(PRIORITY)),
        filtered_query_params=None if filtered is None else [p.strip() for p in filtered.split(",")],
        piece_length=None if piece_length is None else parse_bytesize(piece_length),
        use_p2p=bool(_flag(headers.get(USE_P2P))),
        content_for_calculating_task_id=headers.get(CONTENT_FOR_CALCULATING_TASK_ID, ""),
        enable_task_id_based_blob_digest=_flag(headers.get(ENABLE_TASK_ID_BASED_BLOB_DIGEST)),
        prefetch=_flag(headers.get(PREFETCH)),
        ignored=tuple(name for name in IGNORED if name in headers),
    )
