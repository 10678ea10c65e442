"""Reading a proxied request's X-Dragonfly-* headers (daemon/proxy/headers.py), rule by rule."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from damselfly.daemon.proxy import headers
from damselfly.errors import InvalidArgument

MiB = 1024 * 1024


# bytesize 1.3.3's own cases (src/parse.rs, tests when_ok / when_err) and Dragonfly's header test
# (dragonfly-client/src/proxy/header.rs, test_get_piece_length: "4mib", "invalid", "0").
@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("0", 0), ("500", 500), ("1K", 1000), ("1Ki", 1024), ("1.5Ki", 1536), ("1KiB", 1024),
        ("1.5KiB", 1536), ("3 MB", 3_000_000), ("4 MiB", 4 * MiB), ("6 GB", 6_000_000_000),
        ("4 GiB", 4 * 1024 * MiB), ("88TB", 88 * 10**12), ("521TiB", 521 * 2**40), ("8 PB", 8 * 10**15),
        ("8P", 8 * 10**15), ("12 PiB", 12 * 2**50), ("4mib", 4 * MiB), ("+7", 7),
        ("", None), ("a124GB", None), ("1.3 42.0 B", None), ("1.3 ... B", None), ("1 000 B", None),
        ("invalid", None), ("4mib ", None), ("1.", None), ("-4mib", None),
    ],
)  # fmt: skip
def test_bytesize_as_rust_parses_it(value: str, size: int | None) -> None:
    assert headers.parse_bytesize(value) == size


def test_read_with_no_dragonfly_header() -> None:
    asked = headers.read(CIMultiDict())
    assert asked == headers.RequestHeaders()
    assert asked.priority == 6 and asked.filtered_query_params is None and asked.ignored == ()


def test_read_every_header() -> None:
    asked = headers.read(
        CIMultiDict(
            {
                "x-dragonfly-tag": "t",
                "X-Dragonfly-Application": "a",
                "X-Dragonfly-Priority": "-2",
                "X-Dragonfly-Filtered-Query-Params": " Signature ,Expires,,ns",
                "X-Dragonfly-Piece-Length": "16mib",
                "X-Dragonfly-Use-P2P": "TRUE",
                "X-Dragonfly-Content-For-Calculating-Task-ID": "name",
                "X-Dragonfly-Enable-Task-ID-Based-Blob-Digest": "yes",
                "X-Dragonfly-Prefetch": "True",
                "X-Dragonfly-Output-Path": "/etc/x",
                "X-Dragonfly-Force-Hard-Link": "true",
            }
        )
    )
    assert asked.tag == "t" and asked.application == "a" and asked.priority == -2
    assert asked.filtered_query_params == ["Signature", "Expires", "", "ns"]  # as Rust splits it
    assert asked.piece_length == 16 * MiB and asked.use_p2p and asked.prefetch is True
    assert asked.content_for_calculating_task_id == "name"
    assert asked.enable_task_id_based_blob_digest is False  # anything but "true"
    assert asked.ignored == (headers.OUTPUT_PATH, headers.FORCE_HARD_LINK)


@pytest.mark.parametrize(("value", "priority"), [("0", 0), ("+3", 3), ("x", 6), ("3.0", 6), (str(2**31), 6)])
def test_priority_is_an_i32_else_level6(value: str, priority: int) -> None:
    assert headers.read(CIMultiDict({headers.PRIORITY: value})).priority == priority


def test_piece_length_range_and_prefetch_rule() -> None:
    headers.RequestHeaders(piece_length=4 * MiB).check()
    headers.RequestHeaders(piece_length=64 * MiB).check()
    for bad in (0, 4 * MiB - 1, 64 * MiB + 1):
        with pytest.raises(InvalidArgument, match="4-64 MiB"):
            headers.RequestHeaders(piece_length=bad).check()
    assert headers.RequestHeaders().prefetch_for(has_range=False, default=True) is False
    assert headers.RequestHeaders().prefetch_for(has_range=True, default=True) is True
    assert headers.RequestHeaders(prefetch=False).prefetch_for(has_range=True, default=True) is False
    assert headers.RequestHeaders(prefetch=True).prefetch_for(has_range=True, default=False) is True
