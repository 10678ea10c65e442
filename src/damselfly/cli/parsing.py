"""Parsing and checking dfget's arguments: pure functions, no network.

Everything here runs before dfget contacts the daemon, so that a typo fails in
milliseconds with a message that names the bad argument.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import InvalidArgument, StorageError
from ..pieces import MAX_PIECE_LENGTH, MIN_PIECE_LENGTH, Digest
from ..units import HOURS, MILLISECONDS, MINUTES, SECONDS, human_size, parse_size

DEFAULT_ENDPOINT = "/var/lib/damselfly/dfdaemon.sock"
ENDPOINT_ENV = "DAMSELFLY_ENDPOINT"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": MILLISECONDS, "s": SECONDS, "m": MINUTES, "h": HOURS}
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an RFC 9110 token


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"2h"``, ``"1h30m"``, ``"500ms"`` or plain seconds -> seconds (> 0)."""
    t = text.strip().lower()
    try:
        value = float(t)
    except ValueError:
        pos, total = 0, 0.0
        for m in _DURATION_PART.finditer(t):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if pos != len(t) or not t:
            raise InvalidArgument(f"not a duration: {text!r} (try 90s, 30m, 2h, 1h30m)") from None
        value = total
    if value <= 0:
        raise InvalidArgument(f"duration must be positive, got {text!r}")
    return value


def parse_piece_length(text: str) -> int:
    """A piece length such as ``4MiB``, within Dragonfly's range (4 MiB to 64 MiB): a
    scheduler, Dragonfly's or Damselfly's, refuses a download that asks for another."""
    try:
        size = parse_size(text)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    if not MIN_PIECE_LENGTH <= size <= MAX_PIECE_LENGTH:
        raise InvalidArgument(
            f"piece length {text!r} is out of range: it must be from {human_size(MIN_PIECE_LENGTH)} "
            f"to {human_size(MAX_PIECE_LENGTH)}"
        )
    return size


def parse_header(text: str) -> tuple[str, str]:
    """``"Authorization: Bearer x"`` -> ``("Authorization", "Bearer x")``."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or not _HEADER_NAME.match(name):
        raise InvalidArgument(f"header {text!r} must look like 'Name: value'")
    return name, value.strip()


def parse_headers(items: list[str]) -> dict[str, str]:
    """Repeated ``-H`` flags; a name given twice keeps its values joined by ``, `` (RFC 9110)."""
    headers: dict[str, str] = {}
    lower_to_name: dict[str, str] = {}
    for item in items:
        name, value = parse_header(item)
        existing = lower_to_name.get(name.lower())
        if existing is None:
            lower_to_name[name.lower()] = name
            headers[name] = value
        else:
            headers[existing] = f"{headers[existing]}, {value}"
    return headers


def parse_digest(text: str | None) -> str:
    """Validate ``--digest``; returns the normalised form, or ``""`` when none was given."""
    if not text:
        return ""
    return str(Digest.parse(text))


def check_url(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port that is not a number in range raises ValueError)
    except ValueError as e:
        raise InvalidArgument(f"URL {url!r} is not valid: {e}") from None
    if parts.scheme.lower() not in ("http", "https"):
        if not parts.scheme:
            raise InvalidArgument(f"URL {url!r} has no scheme; use http://... or https://...")
        raise InvalidArgument(f"URL scheme {parts.scheme!r} is not supported; use http or https")
    if not parts.hostname:
        raise InvalidArgument(f"URL {url!r} has no host")
    return url


def check_output(output: str) -> Path:
    """The absolute output path; raises :class:`StorageError` when it cannot be written."""
    path = Path(os.path.abspath(os.path.expanduser(output)))
    if output.endswith(os.sep) or path.is_dir():
        raise StorageError(f"output {path} is a directory; give a file path, e.g. {path}/file")
    parent = path.parent
    if not parent.exists():
        raise StorageError(f"output folder {parent} does not exist")
    if not parent.is_dir():
        raise StorageError(f"output folder {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StorageError(f"cannot write to output folder {parent}")
    return path


def normalize_endpoint(endpoint: str) -> Path:
    """``/path``, ``unix:///path`` or ``unix:/path`` -> the absolute socket path."""
    text = endpoint.strip()
    if text.startswith("unix://"):
        text = text[len("unix://") :]
    elif text.startswith("unix:"):
        text = text[len("unix:") :]
    if not text:
        raise InvalidArgument(f"endpoint {endpoint!r} names no socket path")
    if "://" in text:
        raise InvalidArgument(f"endpoint {endpoint!r} must be a unix socket path (or unix:///path)")
    return Path(os.path.abspath(os.path.expanduser(text)))


def default_endpoint() -> str:
    return os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
