"""Task IDs as Dragonfly computes them: a Damselfly peer and a Dragonfly peer share a task.

The first vectors are Dragonfly's own, from the Rust client's unit tests
(``dragonfly-client-util/src/id_generator/mod.rs``, ``should_generate_task_id``,
dragonflyoss/client commit ff17c0b7); the URL-normalization vectors follow the
same module's rules (WHATWG URL serialization through the ``url`` crate, query
parameters filtered by exact name and the rest re-encoded as a form, a bare
``/`` path trimmed) and ``src/http/query_params.rs`` for the default list.
"""

from __future__ import annotations

import hashlib

import pytest

from damselfly import ids
from damselfly.domain import DownloadSpec

# (url, piece_length, tag, application, filtered_query_params, revision) -> task ID
DRAGONFLY_URL_VECTORS = [
    (("https://example.com", 1024, "foo", "bar", [], "v1.0"),
     "5844f27a257287e9b734256bb25603d8005422ced8c0377f15063ec11963b25f"),
    (("https://example.com", None, "foo", "bar", [], ""),
     "06408fbf247ddaca478f8cb9565fe5591c28efd0994b8fea80a6a87d3203c5ca"),
    (("https://example.com", None, "foo", "", [], ""),
     "3c3f230ef9f191dd2821510346a7bc138e4894bee9aee184ba250a3040701d2a"),
    (("https://example.com", None, "", "bar", [], ""),
     "c9f9261b7305c24371244f9f149f5d4589ed601348fdf22d7f6f4b10658fdba2"),
    (("https://example.com", 1024, "", "", [], ""),
     "9f7c9aafbc6f30f8f41a96ca77eeae80c5b60964b3034b0ee43ccf7b2f9e52b8"),
    (("https://example.com?foo=foo&bar=bar", None, "", "", ["foo", "bar"], ""),
     "457b4328cde278e422c9e243f7bfd1e97f511fec43a80f535cf6b0ef6b086776"),
    (("https://example.com", None, "", "", [], "v1.0"),
     "b171331534b80e0bf91da38ebbfcdbf4d177898f4b9beac44f14733e3f004d4e"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "expected"), DRAGONFLY_URL_VECTORS)
def test_url_task_ids_match_dragonflys_vectors(
    args: tuple[str, int | None, str, str, list[str], str], expected: str
) -> None:
    url, piece_length, tag, application, filtered, revision = args
    got = ids.task_id(
        url,
        tag=tag,
        application=application,
        piece_length=piece_length,
        filtered_query_params=filtered,
        revision=revision,
    )
    assert got == expected


def test_content_task_id_matches_dragonflys_vector_and_ignores_tag_and_application() -> None:
    expected = "e2d0fe1585a63ec6009c8016ff8dda8b17719a637405a4e23c0ff81339148249"
    assert ids.content_task_id("This is a test file") == expected
    spec = DownloadSpec(
        url="https://example.com/x",
        tag="t",
        application="a",
        content_for_calculating_task_id="This is a test file",
    )
    assert ids.download_task_id(spec) == expected


def test_blob_digest_matches_dragonflys_vector() -> None:
    hexdigest = "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef"
    url = f"https://registry.example.com/v2/myorg/myrepo/blobs/sha256:{hexdigest}"
    assert ids.blob_digest(url) == hexdigest
    assert ids.blob_digest(url + "?ns=docker.io") == hexdigest
    assert ids.blob_digest("https://registry.example.com/v2/myorg/myrepo/manifests/latest") is None
    assert ids.blob_digest("https://registry.example.com/v2/r/blobs/sha256:1234") is None  # wrong length


# url, filtered params (None: Dragonfly's default list) -> the URL a task ID hashes
NORMALIZATION_VECTORS = [
    # WHATWG serialization: scheme and host lower-cased, default port dropped, dot segments resolved.
    ("HTTPS://Example.COM:443/a/../b", None, "https://example.com/b"),
    # A bare "/" path is trimmed; a longer path keeps its trailing slash.
    ("https://example.com/", None, "https://example.com"),
    ("https://example.com/dir/", None, "https://example.com/dir/"),
    # Signature parameters go by exact name; the rest keep their order, re-encoded as a form.
    ("https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&versionId=2&X-Amz-Date=1", None,
     "https://b.s3.amazonaws.com/k?versionId=2"),
    ("https://example.com/k?x-amz-signature=abc", None, "https://example.com/k?x-amz-signature=abc"),
    ("https://example.com/k?a=b%20c&d=~e*", [], "https://example.com/k?a=b+c&d=%7Ee*"),
    ("https://example.com/k?flag&e=", [], "https://example.com/k?flag=&e="),
    # Nothing left: no "?" at all.
    ("https://example.com/?Expires=1&Signature=2", None, "https://example.com"),
    ("https://example.com/k?", [], "https://example.com/k"),
    # containerd's ?ns= is on Dragonfly's default list.
    ("https://127.0.0.1:4001/v2/library/alpine/blobs/sha256:ab?ns=docker.io", None,
     "https://127.0.0.1:4001/v2/library/alpine/blobs/sha256:ab"),
]  # fmt: skip


@pytest.mark.parametrize(("url", "filtered", "expected"), NORMALIZATION_VECTORS)
def test_urls_are_normalized_as_dragonfly_hashes_them(
    url: str, filtered: list[str] | None, expected: str
) -> None:
    assert ids.filter_url(url, filtered) == expected


def test_url_task_id_hashes_the_normalized_url_then_the_type() -> None:
    url = "https://example.com/k?Signature=s&a=1"
    manual = hashlib.sha256(b"https://example.com/k?a=1" + b"tag" + b"app" + b"4194304" + b"STANDARD")
    got = ids.task_id(url, tag="tag", application="app", piece_length=4 * 1024 * 1024)
    assert got == manual.hexdigest()


def test_host_and_peer_ids_follow_dragonflys_shape() -> None:
    assert ids.host_id("127.0.0.1", "localhost") == "127.0.0.1-localhost"
    assert ids.host_id("127.0.0.1", "localhost", seed=True) == "127.0.0.1-localhost-seed"
    peer = ids.peer_id("127.0.0.1", "localhost", seed=True)
    assert peer.startswith("127.0.0.1-localhost-") and peer.endswith("-seed")
    assert len(peer.split("-")) == 2 + 5 + 1  # ip, hostname, a uuid's five groups, seed
