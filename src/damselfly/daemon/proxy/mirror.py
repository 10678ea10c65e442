"""Registry-mirror requests: which registry a ``/v2/...`` request is for, and what it asks.

Pure functions, no I/O. A request in registry form (no absolute URI) names its
upstream by the ``X-Dragonfly-Registry`` header (``https://host[:port]``), or
by containerd's ``?ns=<host>`` query parameter (https, unless it names the
default registry, whose scheme is used), or else goes to the configured
default mirror. The ``ns`` parameter is containerd's, not the registry's: it is
dropped from the upstream URL.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit

from ...errors import InvalidArgument

REGISTRY_HEADER = "X-Dragonfly-Registry"
NS_PARAM = "ns"

# Docker Hub's canonical name for containerd's ns= and what actually serves /v2/.
_ALIASES = {"docker.io": "https://registry-1.docker.io", "index.docker.io": "https://index.docker.io"}

_BLOB = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def normalize_registry(value: str, *, default_scheme: str = "https") -> str:
    """``host[:port]`` or ``scheme://host[:port]`` -> ``scheme://host[:port]`` (no path, no slash).

    Raises InvalidArgument for anything else, so a header cannot smuggle a
    path, user info or a second URL into the upstream.
    """
    value = value.strip().rstrip("/")
    if "://" not in value:
        alias = _ALIASES.get(value)
        if alias:
            return alias
        value = f"{default_scheme}://{value}"
    try:
        parts = urlsplit(value)
    except ValueError:  # "Invalid IPv6 URL"
        raise InvalidArgument(f"not a registry address: {value!r} (want scheme://host[:port])") from None
    if parts.scheme not in ("http", "https") or not _HOSTPORT.match(parts.netloc) or parts.path:
        raise InvalidArgument(f"not a registry address: {value!r} (want scheme://host[:port])")
    if parts.query or parts.fragment:
        raise InvalidArgument(f"not a registry address: {value!r}")
    return f"{parts.scheme}://{parts.netloc}"


def upstream_for(headers: Mapping[str, str], query: str, default: str, *, dynamic: bool = True) -> str:
    """The registry base URL this mirror request goes to."""
    if dynamic:
        named = headers.get(REGISTRY_HEADER)
        if named:
            return normalize_registry(named)
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == NS_PARAM and value:
                named = normalize_registry(value)
                base = normalize_registry(default)
                # ns= carries no scheme: the configured default's wins for its own host.
                if urlsplit(named).netloc == urlsplit(base).netloc:
                    return base
                return named
    return normalize_registry(default)


def strip_ns(query: str) -> str:
    """The query string without containerd's ``ns`` parameter (order of the rest kept)."""
    if not query:
        return ""
    return urlencode([(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != NS_PARAM])


def upstream_url(base: str, path: str, query: str) -> str:
    """The registry URL for a mirror request's path and query (``ns`` dropped)."""
    q = strip_ns(query)
    return f"{base}{path}" + (f"?{q}" if q else "")


def blob_digest(path: str) -> str | None:
    """``sha256:<hex>`` when ``path`` is ``/v2/<name>/blobs/sha256:<hex>``, else None."""
    m = _BLOB.match(path)
    return m.group("digest") if m else None


# Image manifests (not indexes: which platform a client pulls is its own choice).
IMAGE_MANIFEST_TYPES = frozenset(
    {"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"}
)
MANIFEST_MAX = 4 * 1024 * 1024
_MANIFEST = re.compile(r"^(?P<repo>/v2/.+)/manifests/[^/]+$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def blob_order(url: str, content_type: str, body: bytes) -> tuple[str, str, list[str]] | None:
    """For an image manifest fetched from ``url``: what a blob's URL starts with (up to and
    including ``/blobs/``) and ends with (the manifest URL's query), and the manifest's blobs
    in the order a client pulls them (layers, then the config); None for anything else."""
    parts = urlsplit(url)
    m = _MANIFEST.match(parts.path)
    if m is None or len(body) > MANIFEST_MAX:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    media = content_type.split(";")[0].strip() or str(doc.get("mediaType", ""))
    if media not in IMAGE_MANIFEST_TYPES:
        return None
    layers = doc.get("layers")
    config = doc.get("config")
    entries = [*(layers if isinstance(layers, list) else []), config]
    order = [e.get("digest") for e in entries if isinstance(e, dict)]
    digests = [d for d in order if isinstance(d, str) and _DIGEST.match(d)]
    prefix = f"{parts.scheme}://{parts.netloc}{m.group('repo')}/blobs/"
    return prefix, (f"?{parts.query}" if parts.query else ""), digests
