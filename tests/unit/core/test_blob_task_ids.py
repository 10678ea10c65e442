"""Which rule names a download's task, in Dragonfly's order (ids.download_task_id).

dragonfly-client/src/proxy/task.rs:88-104 (and the same order in grpc/dfdaemon_download.rs and
dfdaemon_upload.rs), client commit ff17c0b7: the content named for the ID; else, with
enable_task_id_based_blob_digest and a blob URL, the digest's hex; else the URL.
"""

from __future__ import annotations

import hashlib

from damselfly import ids
from damselfly.api.convert import download_from_pb, download_to_pb
from damselfly.domain import DownloadSpec

HEX = "b2c366cce7e68013d5441c6326d5a3e1b12aeb5ed58564d0fd3fa089bc29cb6e"
BLOB = f"https://registry.example.com/v2/library/ubuntu/blobs/sha256:{HEX}?ns=docker.io"


def test_blob_digest_names_the_task_only_with_the_flag() -> None:
    assert ids.download_task_id(DownloadSpec(url=BLOB, enable_task_id_based_blob_digest=True)) == HEX
    assert ids.download_task_id(DownloadSpec(url=BLOB)) == ids.task_id(BLOB)
    # Not a blob URL: the URL, flag or not.
    plain = "https://registry.example.com/v2/library/ubuntu/manifests/latest"
    assert ids.download_task_id(
        DownloadSpec(url=plain, enable_task_id_based_blob_digest=True)
    ) == ids.task_id(plain)


def test_content_wins_over_the_blob_digest() -> None:
    spec = DownloadSpec(url=BLOB, enable_task_id_based_blob_digest=True, content_for_calculating_task_id="c")
    assert ids.download_task_id(spec) == hashlib.sha256(b"c").hexdigest()


def test_the_flag_travels_in_common_v2_download() -> None:
    spec = DownloadSpec(url=BLOB, enable_task_id_based_blob_digest=True)
    pb = download_to_pb(spec)
    assert pb.enable_task_id_based_blob_digest
    assert download_from_pb(pb).enable_task_id_based_blob_digest
    assert not download_from_pb(download_to_pb(DownloadSpec(url=BLOB))).enable_task_id_based_blob_digest
