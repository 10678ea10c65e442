"""Piece math and digests: no I/O.

Piece length follows Dragonfly: the next power of two of content_length / 500,
clamped to [4 MiB, 64 MiB], unless the request sets one. Every piece carries a
``crc32:<decimal>`` digest (IEEE polynomial, what :func:`zlib.crc32` computes).
Whole-file digests are ``sha256:<hex>``, ``sha512:<hex>`` or ``crc32:<decimal>``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from .checksum import crc32
from .errors import DigestMismatch, InvalidArgument
from .units import MiB

MIN_PIECE_LENGTH = 4 * MiB
MAX_PIECE_LENGTH = 64 * MiB
TARGET_PIECE_COUNT = 500
TINY_LIMIT = 128  # bytes: Dragonfly's "tiny" size scope


def check_piece_length(length: int) -> int:
    """``length`` if it is within Dragonfly's range, else :class:`InvalidArgument` naming the range.

    Every side holds to it (dfget, the proxy's header, both daemon services, the scheduler):
    a tiny piece length makes a task of millions of pieces (each with its own metadata and
    request), a huge one a piece no link sends within its deadline."""
    if not MIN_PIECE_LENGTH <= length <= MAX_PIECE_LENGTH:
        raise InvalidArgument(
            f"piece length {length} is out of range: it must be from {MIN_PIECE_LENGTH} (4 MiB) "
            f"to {MAX_PIECE_LENGTH} (64 MiB) bytes"
        )
    return length


def piece_length_for(content_length: int, requested: int | None = None) -> int:
    """The piece length a task of ``content_length`` bytes uses (``requested`` as it is: the
    edges that take one from a caller hold it to :func:`check_piece_length` first)."""
    if requested:
        if requested <= 0:
            raise InvalidArgument("piece length must be positive")
        return requested
    target = max(1, content_length // TARGET_PIECE_COUNT)
    length = 1 << (target - 1).bit_length()
    return min(MAX_PIECE_LENGTH, max(MIN_PIECE_LENGTH, length))


def piece_count(content_length: int, piece_length: int) -> int:
    return (content_length + piece_length - 1) // piece_length


@dataclass(frozen=True, slots=True)
class PieceSpan:
    """Where piece ``number`` lives in the content."""

    number: int
    offset: int
    length: int


def piece_span(number: int, content_length: int, piece_length: int) -> PieceSpan:
    offset = number * piece_length
    if number < 0 or offset >= content_length:
        raise InvalidArgument(f"piece {number} is out of range for {content_length} bytes")
    return PieceSpan(number, offset, min(piece_length, content_length - offset))


def crc32_digest(data: bytes | memoryview | bytearray, running: int = 0) -> str:
    return f"crc32:{crc32(data, running)}"


def format_crc32(value: int) -> str:
    return f"crc32:{value}"


class _Crc32Hasher:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        self.value = crc32(data, self.value)

    def hexdigest(self) -> str:
        return str(self.value)

    def copy(self) -> _Crc32Hasher:
        twin = _Crc32Hasher()
        twin.value = self.value
        return twin


@dataclass(frozen=True, slots=True)
class Digest:
    """A whole-content digest such as ``sha256:ab12...``."""

    algorithm: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        algorithm, sep, value = text.strip().partition(":")
        algorithm = algorithm.lower()
        if not sep or not value:
            raise InvalidArgument(f"digest {text!r} must look like sha256:<hex>, sha512:<hex> or crc32:<n>")
        if algorithm in ("sha256", "sha512"):
            size = 64 if algorithm == "sha256" else 128
            value = value.lower()
            if len(value) != size or any(c not in "0123456789abcdef" for c in value):
                raise InvalidArgument(f"{algorithm} digest must be {size} hex digits, got {value!r}")
        elif algorithm == "crc32":
            if not value.isdigit() or int(value) >= 2**32:
                raise InvalidArgument(f"crc32 digest must be a decimal number below 2^32, got {value!r}")
            value = str(int(value))
        else:
            raise InvalidArgument(f"unsupported digest algorithm {algorithm!r}; use sha256, sha512 or crc32")
        return cls(algorithm, value)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value}"

    def hasher(self) -> Hasher:
        return new_hasher(self.algorithm)


class Hasher(Protocol):
    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...
    def copy(self) -> Hasher: ...


def new_hasher(algorithm: str) -> Hasher:
    """A fresh hasher for ``sha256``, ``sha512`` or ``crc32`` (hexdigest is decimal for crc32)."""
    if algorithm == "crc32":
        return _Crc32Hasher()
    if algorithm in ("sha256", "sha512"):
        return hashlib.new(algorithm)
    raise InvalidArgument(f"unsupported digest algorithm {algorithm!r}")


def file_digest(path: str, algorithm: str, *, chunk: int = 4 * MiB) -> Digest:
    """Digest of a whole file, read in ``chunk``-sized blocks into one reused buffer."""
    hasher = new_hasher(algorithm)
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            hasher.update(view[:n])
    return Digest(algorithm, hasher.hexdigest())


def verify_file(path: str, expected: Digest, what: str | None = None) -> None:
    """Raise :class:`DigestMismatch` when ``path`` does not hash to ``expected``."""
    actual = file_digest(path, expected.algorithm)
    if actual.value != expected.value:
        raise DigestMismatch(what or path, str(expected), str(actual))
