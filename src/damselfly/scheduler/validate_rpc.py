"""The request checks Dragonfly's scheduler makes before it handles anything.

Dragonfly's Go scheduler runs the protoc-gen-validate rules of its API
(A:pkg/apis/scheduler/v2/scheduler.proto, A:pkg/apis/common/v2/common.proto) on
every unary request and on every message of a stream (go-grpc-middleware's
validator, G:pkg/rpc/scheduler/server/server.go:71-84); a violation is
``INVALID_ARGUMENT`` and, on AnnouncePeer, ends the stream. These functions apply
the rules that keep the scheduler's state sound, worded as the generated
validators word them (``invalid <Message>.<Field>: <reason>``), and raise
:class:`~damselfly.errors.InvalidArgument`.

Rules Damselfly does not apply, and why (docs/INTEROP.md §2.0):

- ``Piece.cost`` / ``Piece.created_at`` required, and a reschedule's
  ``candidate_parents`` being full ``Peer`` messages: Damselfly daemons before the
  Dragonfly-dialogue change send neither; the scheduler needs none of them.
- ``Host`` rules (``ip`` an IP address, ports in [1024, 65535)): a Damselfly host may
  advertise a name, and test daemons listen where they are told.
- ``StatTaskRequest.host_id``: Damselfly's preheat CLI asks for a task's state
  without being a host; the scheduler does not use the field.
"""

from __future__ import annotations

import ipaddress
import re

from ..api import common_pb2, scheduler_pb2
from ..errors import InvalidArgument
from ..pieces import MAX_PIECE_LENGTH, MIN_PIECE_LENGTH

# A:pkg/apis/common/v2/common.proto:631-635 (Download.digest), :842-845 (Piece.digest).
DIGEST_PATTERN = (
    "^(md5:[a-fA-F0-9]{32}|sha1:[a-fA-F0-9]{40}|sha256:[a-fA-F0-9]{64}|sha512:[a-fA-F0-9]{128}"
    "|blake3:[a-fA-F0-9]{64}|crc32:[a-fA-F0-9]+)$"
)
_DIGEST = re.compile(DIGEST_PATTERN)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# Go field names of the AnnouncePeerRequest oneof members, for the messages.
_GO_NAMES = {
    "register_peer_request": "RegisterPeerRequest",
    "download_piece_finished_request": "DownloadPieceFinishedRequest",
    "download_piece_back_to_source_finished_request": "DownloadPieceBackToSourceFinishedRequest",
    "download_piece_failed_request": "DownloadPieceFailedRequest",
    "download_piece_back_to_source_failed_request": "DownloadPieceBackToSourceFailedRequest",
    "reschedule_peer_request": "ReschedulePeerRequest",
}


def _go_field(name: str) -> str:
    """``host_id`` -> ``HostId``, as protoc-gen-go names a field."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _invalid(message: str, field: str, reason: str) -> str:
    return f"invalid {message}.{field}: {reason}"


def _embedded(message: str, field: str, cause: str) -> str:
    return f"invalid {message}.{field}: embedded message failed validation | caused by: {cause}"


def _min_len(message: str, field: str) -> str:
    return _invalid(message, field, "value length must be at least 1 runes")


def check_ids(request: object, message: str, *fields: str) -> None:
    """Each named string field must be non-empty (``min_len: 1``)."""
    for name in fields:
        if not getattr(request, name):
            raise InvalidArgument(_min_len(message, _go_field(name)))


def uri_error(url: str) -> str | None:
    """Why ``url`` fails ``string.uri`` (Go's ``url.Parse`` and ``IsAbs``), or None."""
    if _CONTROL.search(url):
        return "value must be a valid URI | caused by: net/url: invalid control character in URL"
    if url.startswith(":"):
        return "value must be a valid URI | caused by: missing protocol scheme"
    before_query = url.split("?", 1)[0].split("#", 1)[0]
    if _BAD_ESCAPE.search(before_query):
        return "value must be a valid URI | caused by: invalid URL escape"
    if not _SCHEME.match(url):
        return "value must be absolute"
    return None


def download_error(d: common_pb2.Download) -> str | None:
    """The first rule of ``common.v2.Download`` that ``d`` breaks
    (A:pkg/apis/common/v2/common.proto:627-727), or None."""
    reason = uri_error(d.url)
    if reason is not None:
        return _invalid("Download", "Url", reason)
    if d.type not in common_pb2.TaskType.values():
        return _invalid("Download", "Type", "value must be one of the defined enum values")
    if d.priority not in common_pb2.Priority.values():
        return _invalid("Download", "Priority", "value must be one of the defined enum values")
    if d.digest and not _DIGEST.fullmatch(d.digest):
        return _invalid("Download", "Digest", f'value does not match regex pattern "{DIGEST_PATTERN}"')
    if d.piece_length and not MIN_PIECE_LENGTH <= d.piece_length <= MAX_PIECE_LENGTH:
        return _invalid(
            "Download", "PieceLength", f"value must be inside range [{MIN_PIECE_LENGTH}, {MAX_PIECE_LENGTH}]"
        )
    if d.remote_ip:
        try:
            ipaddress.ip_address(d.remote_ip)
        except ValueError:
            return _invalid("Download", "RemoteIp", "value must be a valid IP address")
    return None


def piece_error(p: common_pb2.Piece) -> str | None:
    """The rules of ``common.v2.Piece`` Damselfly applies: the digest's form."""
    if p.digest and not _DIGEST.fullmatch(p.digest):
        return _invalid("Piece", "Digest", f'value does not match regex pattern "{DIGEST_PATTERN}"')
    return None


def _member_error(kind: str, m: object) -> str | None:
    """What the oneof member ``m`` (named ``kind``) breaks, in its own message's words."""
    name = _GO_NAMES[kind]
    if isinstance(m, scheduler_pb2.RegisterPeerRequest):
        if not m.HasField("download"):
            return _invalid(name, "Download", "value is required")
        reason = download_error(m.download)
        return _embedded(name, "Download", reason) if reason else None
    if isinstance(
        m, scheduler_pb2.DownloadPieceFinishedRequest | scheduler_pb2.DownloadPieceBackToSourceFinishedRequest
    ):
        if not m.HasField("piece"):
            return _invalid(name, "Piece", "value is required")
        reason = piece_error(m.piece)
        return _embedded(name, "Piece", reason) if reason else None
    if isinstance(m, scheduler_pb2.DownloadPieceFailedRequest):
        return None if m.parent_id else _min_len(name, "ParentId")
    if isinstance(m, scheduler_pb2.DownloadPieceBackToSourceFailedRequest):
        return None if m.WhichOneof("response") else _invalid(name, "Response", "value is required")
    if isinstance(m, scheduler_pb2.ReschedulePeerRequest):
        for i, parent in enumerate(m.candidate_parents):
            if not parent.id:
                return _embedded(name, f"CandidateParents[{i}]", _min_len("Peer", "Id"))
    return None


def check_announce_peer(request: scheduler_pb2.AnnouncePeerRequest) -> str:
    """Check one AnnouncePeer message; returns which request it carries."""
    if not (request.host_id and request.task_id and request.peer_id):
        check_ids(request, "AnnouncePeerRequest", "host_id", "task_id", "peer_id")
    kind: str | None = request.WhichOneof("request")
    if kind is None:
        raise InvalidArgument(_invalid("AnnouncePeerRequest", "Request", "value is required"))
    if kind in _GO_NAMES:
        reason = _member_error(kind, getattr(request, kind))
        if reason is not None:
            raise InvalidArgument(_embedded("AnnouncePeerRequest", _GO_NAMES[kind], reason))
    return kind


def check_announce_host(request: scheduler_pb2.AnnounceHostRequest) -> None:
    """``AnnounceHostRequest.host`` is required and names its host."""
    if not request.HasField("host"):
        raise InvalidArgument(_invalid("AnnounceHostRequest", "Host", "value is required"))
    if not request.host.id:
        raise InvalidArgument(_embedded("AnnounceHostRequest", "Host", _min_len("Host", "Id")))
