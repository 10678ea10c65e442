"""The request checks Dragonfly's scheduler makes (validate_rpc.py), without a server.

Rules from dragonflyoss/api 9e1d31a (A:pkg/apis/common/v2/common.proto:627-727, 829-857;
A:pkg/apis/scheduler/v2/scheduler.proto:28-175); ``string.uri`` is Go's ``url.Parse`` and
``IsAbs`` (A:pkg/apis/common/v2/common.pb.validate.go:3726-3745).
"""

from __future__ import annotations

import pytest

from damselfly.api import common_pb2, scheduler_pb2
from damselfly.errors import InvalidArgument
from damselfly.scheduler.validate_rpc import check_announce_peer, download_error, uri_error

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("https://example.com/a?b=%zz", None),  # the query is not unescaped
        ("s3://bucket/key", None),
        ("hf://owner/model", None),
        ("data/x", "value must be absolute"),
        ("", "value must be absolute"),
        ("//host/path", "value must be absolute"),
        (":x", "value must be a valid URI | caused by: missing protocol scheme"),
        ("http://h/%zz", "value must be a valid URI | caused by: invalid URL escape"),
        ("http://h/\x7f", "value must be a valid URI | caused by: net/url: invalid control character in URL"),
    ],
)
def test_uri_rule(url: str, error: str | None) -> None:
    assert uri_error(url) == error


@pytest.mark.parametrize(
    ("download", "field"),
    [
        (common_pb2.Download(url="http://o/f", piece_length=4 * MiB - 1), "PieceLength"),
        (common_pb2.Download(url="http://o/f", piece_length=64 * MiB + 1), "PieceLength"),
        (common_pb2.Download(url="http://o/f", digest="sha256:" + "a" * 63), "Digest"),
        (common_pb2.Download(url="http://o/f", digest="crc32:12\n"), "Digest"),  # Go's $ is the end
        (common_pb2.Download(url="http://o/f", digest="SHA256:" + "a" * 64), "Digest"),
        (common_pb2.Download(url="http://o/f", remote_ip="localhost"), "RemoteIp"),
        (common_pb2.Download(url="http://o/f", priority=9), "Priority"),  # type: ignore[arg-type]
    ],
)
def test_download_rules(download: common_pb2.Download, field: str) -> None:
    error = download_error(download)
    assert error is not None and error.startswith(f"invalid Download.{field}: ")


@pytest.mark.parametrize(
    "download",
    [
        common_pb2.Download(url="http://o/f"),
        common_pb2.Download(url="http://o/f", piece_length=4 * MiB, digest="crc32:3421780262"),
        common_pb2.Download(url="http://o/f", piece_length=64 * MiB, digest="sha256:" + "A" * 64),
        common_pb2.Download(url="http://o/f", piece_length=0, remote_ip="::1"),  # 0: unset
    ],
)
def test_what_damselfly_and_rust_daemons_send_passes(download: common_pb2.Download) -> None:
    assert download_error(download) is None


def test_announce_peer_message_names_its_request_or_says_what_is_wrong() -> None:
    ok = scheduler_pb2.AnnouncePeerRequest(
        host_id="h",
        task_id="t",
        peer_id="p",
        download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest(),
    )
    assert check_announce_peer(ok) == "download_peer_started_request"
    bad = scheduler_pb2.AnnouncePeerRequest(
        host_id="h",
        task_id="t",
        peer_id="p",
        reschedule_peer_request=scheduler_pb2.ReschedulePeerRequest(candidate_parents=[common_pb2.Peer()]),
    )
    with pytest.raises(InvalidArgument, match=r"ReschedulePeerRequest\.CandidateParents\[0\].*Peer\.Id"):
        check_announce_peer(bad)
    with pytest.raises(InvalidArgument, match=r"^invalid AnnouncePeerRequest\.TaskId: "):
        check_announce_peer(scheduler_pb2.AnnouncePeerRequest(host_id="h", peer_id="p"))
