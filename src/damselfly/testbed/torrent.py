"""Bencode and a single-file .torrent, for the BitTorrent baseline of ``bench swarm``.

Why here: the baseline (aria2 + opentracker on the same namespaces,
:mod:`damselfly.testbed.aria2`) needs a metainfo file for the benchmark's random
file, and bencode is small enough not to take a dependency for (BEP 3: integers
``i<n>e``, byte strings ``<len>:<bytes>``, lists ``l...e``, dictionaries
``d...e`` with keys sorted as raw bytes).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..units import MiB

Bencodable = int | bytes | str | list[Any] | dict[Any, Any]
DEFAULT_PIECE_LENGTH = 1 * MiB


class BencodeError(ValueError):
    """Bytes that are not one well-formed bencoded value."""


def bencode(value: Bencodable) -> bytes:
    """``value`` bencoded; ``str`` is UTF-8, dictionary keys are sorted as bytes."""
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def _encode(value: Bencodable, out: bytearray) -> None:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        out += b"i%de" % value
    elif isinstance(value, str | bytes):
        raw = value.encode() if isinstance(value, str) else value
        out += b"%d:" % len(raw) + raw
    elif isinstance(value, list):
        out += b"l"
        for item in value:
            _encode(item, out)
        out += b"e"
    elif isinstance(value, dict):
        items = sorted(((k.encode() if isinstance(k, str) else k), v) for k, v in value.items())
        out += b"d"
        for key, item in items:
            _encode(key, out)
            _encode(item, out)
        out += b"e"
    else:
        raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Any:
    """The one value ``data`` holds (strings as bytes, dictionary keys as bytes)."""
    value, end = _decode(data, 0)
    if end != len(data):
        raise BencodeError(f"{len(data) - end} bytes after the value")
    return value


def _decode(data: bytes, i: int) -> tuple[Any, int]:
    if i >= len(data):
        raise BencodeError("truncated")
    c = data[i : i + 1]
    if c == b"i":
        end = data.find(b"e", i)
        if end < 0:
            raise BencodeError("unterminated integer")
        try:
            return int(data[i + 1 : end]), end + 1
        except ValueError:
            raise BencodeError(f"bad integer at {i}") from None
    if c == b"l":
        items, i = [], i + 1
        while data[i : i + 1] != b"e":
            item, i = _decode(data, i)
            items.append(item)
        return items, i + 1
    if c == b"d":
        out, i = {}, i + 1
        while data[i : i + 1] != b"e":
            key, i = _decode(data, i)
            if not isinstance(key, bytes):
                raise BencodeError(f"dictionary key at {i} is not a string")
            out[key], i = _decode(data, i)
        return out, i + 1
    if c.isdigit():
        colon = data.find(b":", i)
        if colon < 0:
            raise BencodeError("unterminated string length")
        n = int(data[i:colon])
        start = colon + 1
        if start + n > len(data):
            raise BencodeError("truncated string")
        return data[start : start + n], start + n
    raise BencodeError(f"unexpected byte {c!r} at {i}")


def piece_hashes(path: Path, piece_length: int) -> bytes:
    """The SHA-1 of each ``piece_length`` piece of the file, concatenated (the ``pieces`` field)."""
    out = bytearray()
    with path.open("rb") as f:
        while block := f.read(piece_length):
            out += hashlib.sha1(block, usedforsecurity=False).digest()
    return bytes(out)


def make_torrent(path: Path, announce: str, piece_length: int = DEFAULT_PIECE_LENGTH) -> bytes:
    """A single-file .torrent for ``path`` with one tracker."""
    if piece_length <= 0 or piece_length % (16 * 1024):
        raise ValueError(f"piece length {piece_length}: a positive multiple of 16 KiB")
    info = {
        "name": path.name,
        "length": path.stat().st_size,
        "piece length": piece_length,
        "pieces": piece_hashes(path, piece_length),
    }
    return bencode({"announce": announce, "info": info, "created by": "damselfly testbed"})


def info_hash(torrent: bytes) -> str:
    """The torrent's info hash (SHA-1 of the bencoded ``info``), in hex."""
    meta = bdecode(torrent)
    return hashlib.sha1(bencode(meta[b"info"]), usedforsecurity=False).hexdigest()
