"""Registry-mirror requests: which registry a ``/v2/...`` request is for, and what it asks.

Pure functions, no I/O. A request in registry form (no absolute URI) names its
upstream in one of three ways:

* the ``X-Dragonfly-Registry`` header (``scheme://host[:port]``), as Dragonfly's
  containerd ``hosts.toml`` sends it;
* containerd's ``?ns=<host>`` query parameter (https, unless it names the
  default registry, whose scheme is used); ``ns`` is containerd's, not the
  registry's: it is dropped from the upstream URL;
* the **mirror path**, for clients that cannot send a header (podman, skopeo,
  CRI-O read ``registries.conf``, whose mirror ``location`` may carry a
  namespace): ``/v2/damselfly__mirror/<scheme>/<host>[_<port>]/<repository>/...``
  is a request for ``<scheme>://<host>[:<port>]/v2/<repository>/...``. The
  marker holds ``__``, which no Docker Hub namespace can, and is reserved: a
  registry's own repository named ``damselfly__mirror/...`` cannot be pulled
  through the mirror. The host is lowercase, its ``:`` written ``_`` (a
  repository path component admits ``[a-z0-9]`` with ``.``, ``_``, ``__`` or
  ``-`` between; ``:`` would end the name), so the location stays a valid image
  reference: ``127.0.0.1:4001/damselfly__mirror/http/127.0.0.1_5000``.

A request that names none goes to the configured default registry
(``proxy.registryMirror.url``). Names that disagree (a header and a mirror
path naming two registries) are refused, never resolved in favour of one.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from ...errors import ConfigError, InvalidArgument

REGISTRY_HEADER = "X-Dragonfly-Registry"
NS_PARAM = "ns"
PATH_MARKER = "damselfly__mirror"
# Methods a mirror request may use: a mirror reads, it never pushes or deletes.
MIRROR_METHODS = ("GET", "HEAD")

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


_PATH_PREFIX = f"/v2/{PATH_MARKER}/"
_PATH_HOST = re.compile(r"^(?P<host>[a-z0-9](?:[a-z0-9.\-]*[a-z0-9])?)(?:_(?P<port>[0-9]{1,5}))?$")


def mirror_path(registry: str) -> str:
    """The mirror path naming ``registry`` (``scheme://host[:port]`` or ``host[:port]``, https).

    ``http://127.0.0.1:5000`` -> ``damselfly__mirror/http/127.0.0.1_5000``: what follows the
    mirror's ``host:port`` in a ``registries.conf`` location. Raises InvalidArgument for an
    address it cannot carry (IPv6 literals).
    """
    base = normalize_registry(registry)
    parts = urlsplit(base)
    host = (parts.hostname or "").lower()
    segment = host if parts.port is None else f"{host}_{parts.port}"
    if not _PATH_HOST.match(segment):
        raise InvalidArgument(f"{registry!r} cannot be named in a mirror path (use a host name)")
    return f"{PATH_MARKER}/{parts.scheme}/{segment}"


def split_mirror_path(path: str) -> tuple[str | None, str]:
    """``(registry, path)``: the registry a mirror path names and the path to ask it for.

    ``/v2/damselfly__mirror/http/reg_5000/team/app/blobs/x`` ->
    ``("http://reg:5000", "/v2/team/app/blobs/x")``; a path without the marker ->
    ``(None, path)``. A marked path that is malformed raises InvalidArgument: it never
    falls through to the default registry.
    """
    if not (path.startswith(_PATH_PREFIX) or path == _PATH_PREFIX.rstrip("/")):
        return None, path
    parts = path[len(_PATH_PREFIX) :].split("/", 2)
    if len(parts) < 2 or parts[0] not in ("http", "https"):
        want = f"/v2/{PATH_MARKER}/<http|https>/<host>[_<port>]/<repository>/..."
        raise InvalidArgument(f"mirror path {path[:120]!r}: want {want}")
    m = _PATH_HOST.match(parts[1])
    if m is None or (m.group("port") is not None and not 0 < int(m.group("port")) < 65536):
        raise InvalidArgument(f"mirror path names no valid registry host: {parts[1][:80]!r}")
    port = f":{m.group('port')}" if m.group("port") else ""
    rest = parts[2] if len(parts) > 2 else ""
    if rest.split("/", 1)[0] == PATH_MARKER:
        raise InvalidArgument("mirror path names a registry twice")
    return f"{parts[0]}://{m.group('host')}{port}", "/v2/" + rest


@dataclass(frozen=True, slots=True)
class MirrorTarget:
    """Where one mirror request goes: the registry, the path to ask it for, and how it was named."""

    base: str
    path: str
    named_by: str  # "header", "path", "ns" or "default"


def same_registry(a: str, b: str) -> bool:
    """Whether two normalized registry URLs are the same server (Docker Hub's names are one)."""
    hub = ("registry-1.docker.io", "index.docker.io")
    pa, pb = urlsplit(a), urlsplit(b)
    if pa.netloc in hub and pb.netloc in hub:
        return pa.scheme == pb.scheme
    return pa.scheme == pb.scheme and pa.netloc == pb.netloc


def route(
    headers: Mapping[str, str], path: str, query: str, default: str, *, dynamic: bool = True
) -> MirrorTarget:
    """The registry and path this mirror request goes to.

    The header and the mirror path name a registry explicitly: when both are there they
    must agree. containerd's ``ns=`` is a hint it adds to every request: it decides only
    when nothing explicit does. With ``dynamic`` off, only the default registry is served:
    a request that explicitly names another is refused (PermissionError), ``ns=`` ignored.
    """
    base = normalize_registry(default)
    from_path, path = split_mirror_path(path)
    header = headers.get(REGISTRY_HEADER)
    from_header = normalize_registry(header) if header else None
    if from_path and from_header and not same_registry(from_path, from_header):
        raise InvalidArgument(f"{REGISTRY_HEADER} ({from_header}) and the mirror path ({from_path}) disagree")
    named, how = (from_header, "header") if from_header else (from_path, "path")
    if named is None and dynamic:
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == NS_PARAM and value:
                named, how = normalize_registry(value), "ns"
                # ns= carries no scheme: the configured default's wins for its own host.
                if urlsplit(named).netloc == urlsplit(base).netloc:
                    named = base
                break
    if named is None:
        return MirrorTarget(base, path, "default")
    if not dynamic and not same_registry(named, base):
        raise PermissionError(f"this mirror serves {base} only (proxy.registryMirror.dynamic is off)")
    return MirrorTarget(named, path, how)


class MethodNotAllowed(Exception):
    """A mirror request with a method other than GET or HEAD (the proxy answers 405)."""


def compile_allowed(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    """``proxy.registryMirror.allowedRegistries`` compiled; a bad regex is a ConfigError naming it."""
    try:
        return [re.compile(p) for p in patterns]
    except re.error as e:
        key = "proxy.registryMirror.allowedRegistries"
        raise ConfigError(f"{key}: {e.pattern!r} is not a valid regex: {e}") from e


def registry_allowed(base: str, default: str, allowed: Sequence[re.Pattern[str]]) -> bool:
    """Whether a mirror request may go to ``base``: the default always; others when one of
    ``allowed`` matches the host or ``host:port`` whole, or when ``allowed`` is empty and the
    host is not a link-local address (cloud metadata services live there: only named ones)."""
    parts = urlsplit(base)
    names = {parts.hostname or "", parts.netloc}
    if same_registry(base, default) or any(p.fullmatch(n) for p in allowed for n in names):
        return True
    if allowed:
        return False
    try:
        return not ipaddress.ip_address(parts.hostname or "").is_link_local
    except ValueError:
        return True  # a name


def upstream_for(headers: Mapping[str, str], query: str, default: str, *, dynamic: bool = True) -> str:
    """The registry base URL a ``/v2/...`` request without a mirror path goes to."""
    return route(headers, "/v2/", query, default, dynamic=dynamic).base


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
