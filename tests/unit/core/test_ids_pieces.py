import hashlib
import zlib

import pytest

from damselfly import ids, pieces
from damselfly.errors import InvalidArgument
from damselfly.units import GiB, MiB, parse_size


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 4 * MiB), (1, 4 * MiB), (1 * GiB, 4 * MiB), (4 * GiB, 16 * MiB), (100 * GiB, 64 * MiB)],
)
def test_piece_length_follows_dragonfly(length, expected):
    assert pieces.piece_length_for(length) == expected


def test_piece_length_request_wins():
    assert pieces.piece_length_for(1 * GiB, 1 * MiB) == 1 * MiB


def test_piece_spans_cover_content_exactly():
    length, plen = 10 * MiB + 3, 4 * MiB
    n = pieces.piece_count(length, plen)
    spans = [pieces.piece_span(i, length, plen) for i in range(n)]
    assert n == 3 and sum(s.length for s in spans) == length and spans[-1].length == 2 * MiB + 3
    with pytest.raises(InvalidArgument):
        pieces.piece_span(3, length, plen)


def test_task_id_ignores_signature_params_but_not_others():
    a = ids.task_id("https://b.s3/k?X-Amz-Signature=1&X-Amz-Date=2&v=1")
    b = ids.task_id("https://b.s3/k?X-Amz-Signature=9&v=1")
    c = ids.task_id("https://b.s3/k?v=2")
    assert a == b != c
    assert ids.task_id("http://x/f", tag="t") != ids.task_id("http://x/f")
    assert ids.task_id("http://x/f", piece_length=MiB) != ids.task_id("http://x/f")
    assert ids.is_task_id(a) and not ids.is_task_id("../etc")


def test_host_and_peer_ids():
    assert ids.host_id("10.0.0.1", "h") == "10.0.0.1-h"
    assert ids.host_id("10.0.0.1", "h", seed=True).endswith("-seed")
    p = ids.peer_id("10.0.0.1", "h", seed=True)
    assert (
        p.startswith("10.0.0.1-h-") and p.endswith("-seed") and p != ids.peer_id("10.0.0.1", "h", seed=True)
    )


def test_digest_parse_and_verify(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    for algo, value in [
        ("sha256", hashlib.sha256(b"x" * 100).hexdigest()),
        ("sha512", hashlib.sha512(b"x" * 100).hexdigest()),
        ("crc32", str(zlib.crc32(b"x" * 100))),
    ]:
        d = pieces.Digest.parse(f"{algo.upper()}:{value.upper()}")
        pieces.verify_file(str(f), d)
    for bad in ["sha256", "md5:abc", "sha256:zz", "crc32:-1", "sha256:" + "a" * 63]:
        with pytest.raises(InvalidArgument):
            pieces.Digest.parse(bad)
    assert pieces.crc32_digest(b"abc") == f"crc32:{zlib.crc32(b'abc')}"


def test_parse_size():
    assert parse_size("1GiB") == GiB and parse_size("256MiB") == 256 * MiB and parse_size("10MB") == 10**7
    with pytest.raises(ValueError):
        parse_size("lots")


def test_credentials_never_leave():
    from damselfly.credentials import redact, without_credentials

    h = {"Authorization": "Bearer x", "cookie": "c", "Accept": "a", "X-Registry-Auth": "r"}
    assert without_credentials(h) == {"Accept": "a"}
    assert redact(h)["Authorization"] == "<redacted>" and redact(h)["Accept"] == "a"
