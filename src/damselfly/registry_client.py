"""Resolve an image in a container registry to the blobs a pull fetches (for preheat).

Why here and not in the proxy: the mirror never parses manifests (it passes
them through); only image preheat needs to know which blobs a pull of
``REPO:TAG`` for one platform will ask for, so it can warm exactly those.

What it speaks: the Docker Registry HTTP API v2 / OCI distribution spec.

* ``GET /v2/<repo>/manifests/<reference>`` with an ``Accept`` for every
  manifest kind we understand (Docker schema 2 manifest and manifest list,
  OCI manifest and index), each as its own header line.
* Auth, as clients do it: try anonymously; on ``401`` read the
  ``WWW-Authenticate`` challenge. ``Basic``: send the credentials. ``Bearer
  realm=...,service=...,scope=...``: ask the realm for a token (with the
  credentials as basic auth when there are some) and send ``Bearer <token>``.
  The ``Authorization`` that worked is returned with the image, so the daemons
  that fetch the blobs can present it to the registry (the origin) and to
  nobody else (see :mod:`damselfly.credentials`).
* A manifest list / OCI index is narrowed to one platform (``os/arch[/variant]``).
* The blobs of an image are its config and its layers: what ``skopeo``,
  ``containerd`` or ``docker pull`` GET from ``/v2/<repo>/blobs/<digest>``.

Pure parts (references, challenges, platform choice, blob lists) are plain
functions; :class:`RegistryClient` does the HTTP with aiohttp.

Errors: a missing repository, tag or platform is :class:`NotFound`; a refused
login or another error status is :class:`SourceStatusError`; an unreachable
registry is :class:`SourceUnreachable`; an unusable reference or manifest is
:class:`InvalidArgument`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .errors import InvalidArgument, NotFound, SourceStatusError, SourceUnreachable

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

DEFAULT_PLATFORM = "linux/amd64"
DOCKER_HUB = "https://registry-1.docker.io"
_DOCKER_HUB_NAMES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
# A manifest is small; a registry answering megabytes is not answering a manifest.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_MANIFEST_PATH = re.compile(r"^/v2/(?P<repo>.+)/manifests/(?P<ref>[^/]+)$")
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


# --------------------------------------------------------------------------- references


@dataclass(frozen=True, slots=True)
class ImageRef:
    """``registry`` (``scheme://host[:port]``), ``repository`` and a tag or ``sha256:`` digest."""

    registry: str
    repository: str
    reference: str

    @property
    def manifest_url(self) -> str:
        return f"{self.registry}/v2/{self.repository}/manifests/{self.reference}"

    def blob_url(self, digest: str) -> str:
        """The URL a registry client (and the mirror, upstream) GETs for a blob."""
        return f"{self.registry}/v2/{self.repository}/blobs/{digest}"

    def __str__(self) -> str:
        sep = "@" if self.reference.startswith("sha256:") else ":"
        return f"{urlsplit(self.registry).netloc}/{self.repository}{sep}{self.reference}"


def _check(registry: str, repository: str, reference: str, what: str) -> ImageRef:
    if not _REPO.fullmatch(repository):
        raise InvalidArgument(f"{what}: {repository!r} is not a repository name (lowercase, like team/app)")
    if not (_DIGEST.fullmatch(reference) or _TAG.fullmatch(reference)):
        raise InvalidArgument(f"{what}: {reference!r} is neither a tag nor a sha256 digest")
    return ImageRef(registry, repository, reference)


def parse_manifest_url(url: str) -> ImageRef:
    """``scheme://host[:port]/v2/<repo>/manifests/<tag|digest>`` (the PreheatImage URL form)."""
    parts = urlsplit(url)
    m = _MANIFEST_PATH.match(parts.path)
    if parts.scheme not in ("http", "https") or not parts.netloc or not m or parts.query:
        raise InvalidArgument(
            f"not an image manifest URL: {url!r} (want https://REGISTRY/v2/REPO/manifests/TAG)"
        )
    if "@" in parts.netloc:
        raise InvalidArgument("put credentials in username/password, not in the image URL")
    return _check(f"{parts.scheme}://{parts.netloc}", m.group("repo"), m.group("ref"), url)


def parse_reference(ref: str, *, scheme: str = "https") -> ImageRef:
    """``[scheme://]REGISTRY/REPO[:TAG|@DIGEST]`` (as users type it) -> :class:`ImageRef`.

    A first component without a dot, colon or ``localhost`` is a Docker Hub
    repository (``alpine`` is ``docker.io/library/alpine``); no tag means ``latest``.
    A manifest URL (``.../v2/REPO/manifests/TAG``) is accepted as is.
    """
    ref = ref.strip()
    if "://" in ref:
        scheme, _, ref = ref.partition("://")
        if scheme not in ("http", "https"):
            raise InvalidArgument(f"image {ref!r}: scheme must be http or https, not {scheme!r}")
        if "/v2/" in ref:
            return parse_manifest_url(f"{scheme}://{ref}")
    name, digest = ref, ""
    if "@" in ref:
        name, _, digest = ref.partition("@")
    tag = ""
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, repository = first, rest
    else:
        host, repository = "docker.io", name
    if host in _DOCKER_HUB_NAMES:
        registry = DOCKER_HUB
        if "/" not in repository:
            repository = f"library/{repository}"
    else:
        registry = f"{scheme}://{host}"
    return _check(registry, repository, digest or tag or "latest", ref)


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]``, e.g. ``linux/amd64``, ``linux/arm64/v8``."""
    parts = text.strip().lower().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidArgument(f"platform {text!r}: want os/arch[/variant], e.g. linux/amd64")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else "")


# --------------------------------------------------------------------------- documents


@dataclass(frozen=True, slots=True)
class BlobRef:
    """One blob a pull fetches: ``digest``, ``size`` (bytes), ``media_type``, and its ``url``."""

    digest: str
    size: int
    media_type: str
    url: str


def select_manifest(index: Mapping[str, Any], platform: Platform) -> Mapping[str, Any]:
    """The descriptor for ``platform`` in a manifest list / OCI index.

    The variant must match when one is asked for; when none is, an entry
    without a variant wins over one with (``linux/arm64`` picks ``v8`` only if
    that is all there is). Attestation entries (``unknown/unknown``) never match.
    """
    entries = [d for d in index.get("manifests") or [] if isinstance(d, Mapping)]
    matches = []
    for d in entries:
        p = d.get("platform") or {}
        if str(p.get("os", "")).lower() != platform.os:
            continue
        if str(p.get("architecture", "")).lower() != platform.architecture:
            continue
        variant = str(p.get("variant", "")).lower()
        if platform.variant and variant != platform.variant:
            continue
        matches.append((variant != "", d))
    if not matches:
        have = sorted({_platform_name(d) for d in entries}) or ["none"]
        raise NotFound(f"the image has no manifest for {platform} (it has: {', '.join(have)})")
    matches.sort(key=lambda m: m[0])
    return matches[0][1]


def _platform_name(descriptor: Mapping[str, Any]) -> str:
    p = descriptor.get("platform") or {}
    return "/".join(str(p[k]) for k in ("os", "architecture", "variant") if p.get(k))


def blobs_of(manifest: Mapping[str, Any], ref: ImageRef) -> list[BlobRef]:
    """The config and layers of an image manifest, in pull order, each with its blob URL."""
    out: list[BlobRef] = []
    descriptors: list[Any] = [manifest.get("config"), *(manifest.get("layers") or [])]
    for d in descriptors:
        if not isinstance(d, Mapping):
            raise InvalidArgument(f"{ref}: manifest has a malformed config or layer descriptor")
        digest = str(d.get("digest", ""))
        if not _DIGEST.fullmatch(digest):
            raise InvalidArgument(f"{ref}: unsupported blob digest {digest!r} (want sha256:<64 hex>)")
        if any(b.digest == digest for b in out):
            continue  # one blob used twice is fetched once
        out.append(
            BlobRef(digest, int(d.get("size", 0) or 0), str(d.get("mediaType", "")), ref.blob_url(digest))
        )
    return out


def media_type_of(doc: Mapping[str, Any], header: str) -> str:
    """A manifest's media type: its own ``mediaType`` field, else the Content-Type, else its shape."""
    declared = str(doc.get("mediaType") or "") or header.split(";", 1)[0].strip()
    if declared in MANIFEST_TYPES or declared == DOCKER_SCHEMA1:
        return declared
    if doc.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1
    if "manifests" in doc:
        return OCI_INDEX
    if "layers" in doc:
        return OCI_MANIFEST
    return declared


# --------------------------------------------------------------------------- auth


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lowercase: "basic" or "bearer"
    params: dict[str, str] = field(default_factory=dict)


def parse_challenge(header: str) -> Challenge | None:
    """``WWW-Authenticate: Bearer realm="...",service="...",scope="..."`` -> :class:`Challenge`."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {
        k.lower(): (q if q else bare).replace('\\"', '"') for k, q, bare in _CHALLENGE_PARAM.findall(rest)
    }
    return Challenge(scheme.lower(), params)


def basic_authorization(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def ssl_context(
    certificate_chain: Iterable[bytes] = (), *, insecure_skip_verify: bool = False
) -> ssl.SSLContext:
    """TLS for the registry: the system's CAs plus ``certificate_chain`` (DER or PEM certificates)."""
    ctx = ssl.create_default_context()
    if insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    for cert in certificate_chain:
        try:
            if cert.lstrip().startswith(b"-----BEGIN"):
                ctx.load_verify_locations(cadata=cert.decode("ascii"))
            else:
                ctx.load_verify_locations(cadata=cert)
        except (ssl.SSLError, ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"certificate_chain holds something that is not a certificate: {e}") from e
    return ctx


# --------------------------------------------------------------------------- client


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """What a pull of ``ref`` for ``platform`` fetches, and the Authorization that opened it."""

    ref: ImageRef
    manifest_digest: str
    platform: str  # "" when the reference named a single-platform manifest
    blobs: list[BlobRef]
    authorization: str = ""  # "" for an anonymous registry; a credential: origin only, never logged

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs)


@dataclass(slots=True)
class _Auth:
    username: str
    password: str
    authorization: str = ""
    tried: set[str] = field(default_factory=set)


class RegistryClient:
    """Manifest resolution against one registry per call; the aiohttp session is its own.

    Owner of the session: the client; :meth:`close` ends it. Use as an async
    context manager or call ``close`` from the owner's shutdown.
    """

    def __init__(self, *, timeout: float = 30.0, session: aiohttp.ClientSession | None = None) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, auto_decompress=True)
            self._own_session = True
        return self._session

    async def resolve(
        self,
        ref: ImageRef,
        *,
        platform: str = DEFAULT_PLATFORM,
        username: str = "",
        password: str = "",
        headers: Mapping[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> ResolvedImage:
        """Fetch ``ref``'s manifest (narrowed to ``platform`` if it is a list) and list its blobs.

        An ``Authorization`` in ``headers`` is tried first (a token the caller
        already holds); a challenge the registry then sends is answered with
        ``username``/``password`` as usual.
        """
        want = parse_platform(platform or DEFAULT_PLATFORM)
        extra = dict(headers or {})
        given = next((v for k, v in extra.items() if k.lower() == "authorization"), "")
        auth = _Auth(username, password, authorization=given)
        doc, media_type, digest = await self._manifest(ref, ref.reference, auth, extra, tls)
        chosen = ""
        for _ in range(2):  # an index can point at an index; two levels is plenty
            if media_type not in INDEX_TYPES:
                break
            descriptor = select_manifest(doc, want)
            chosen = _platform_name(descriptor) or str(want)
            child = str(descriptor.get("digest", ""))
            if not _DIGEST.fullmatch(child):
                raise InvalidArgument(f"{ref}: manifest list entry has an unsupported digest {child!r}")
            doc, media_type, digest = await self._manifest(ref, child, auth, extra, tls)
        if media_type == DOCKER_SCHEMA1:
            raise InvalidArgument(f"{ref}: Docker schema 1 manifests are not supported; push it again")
        if media_type not in (OCI_MANIFEST, DOCKER_MANIFEST):
            raise InvalidArgument(f"{ref}: not an image manifest (media type {media_type!r})")
        return ResolvedImage(ref, digest, chosen, blobs_of(doc, ref), auth.authorization)

    async def _manifest(
        self, ref: ImageRef, reference: str, auth: _Auth, headers: dict[str, str], tls: ssl.SSLContext | None
    ) -> tuple[dict[str, Any], str, str]:
        url = f"{ref.registry}/v2/{ref.repository}/manifests/{reference}"
        status, body, resp_headers = await self._get(url, ref, auth, headers, tls)
        if status == 404:
            raise NotFound(f"{ref.repository}:{reference} not found at {ref.registry}{_registry_error(body)}")
        if status != 200:
            raise SourceStatusError(url, status, _registry_error(body).lstrip(": "))
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise InvalidArgument(f"{ref}: the registry's manifest is not JSON: {e}") from e
        if not isinstance(doc, dict):
            raise InvalidArgument(f"{ref}: the registry's manifest is not a JSON object")
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        if _DIGEST.fullmatch(reference) and actual != reference:
            raise InvalidArgument(f"{ref}: manifest {reference} arrived with digest {actual}")
        digest = resp_headers.get("Docker-Content-Digest", "") or actual
        return doc, media_type_of(doc, resp_headers.get("Content-Type", "")), digest

    async def _get(
        self, url: str, ref: ImageRef, auth: _Auth, headers: dict[str, str], tls: ssl.SSLContext | None
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """GET ``url``, answering one auth challenge (basic or bearer) if the registry asks."""
        for _ in range(3):
            status, body, resp_headers = await self._request(url, headers, auth.authorization, tls)
            if status != 401:
                return status, body, resp_headers
            challenge = parse_challenge(resp_headers.get("WWW-Authenticate", ""))
            if challenge is None or challenge.scheme in auth.tried:
                break
            auth.tried.add(challenge.scheme)
            if challenge.scheme == "basic":
                if not auth.username:
                    break
                auth.authorization = basic_authorization(auth.username, auth.password)
            elif challenge.scheme == "bearer":
                auth.authorization = "Bearer " + await self._token(challenge, ref, auth, tls)
            else:
                raise SourceStatusError(url, 401, f"unsupported auth scheme {challenge.scheme!r}")
        what = "refused the credentials" if auth.username else "needs credentials (username/password)"
        raise SourceStatusError(url, 401, f"the registry {what}")

    async def _token(
        self, challenge: Challenge, ref: ImageRef, auth: _Auth, tls: ssl.SSLContext | None
    ) -> str:
        realm = challenge.params.get("realm", "")
        if urlsplit(realm).scheme not in ("http", "https"):
            raise SourceStatusError(
                ref.manifest_url, 401, f"bearer challenge without a usable realm: {realm!r}"
            )
        params = {"scope": challenge.params.get("scope") or f"repository:{ref.repository}:pull"}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        headers = {}
        if auth.username:
            headers["Authorization"] = basic_authorization(auth.username, auth.password)
        try:
            async with self._get_session().get(
                realm, params=params, headers=headers, ssl=_ssl_arg(tls)
            ) as resp:
                body = await resp.content.read(MAX_MANIFEST_BYTES)
                status = resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise SourceUnreachable(f"token server {realm}: {type(e).__name__}: {e}") from e
        if status in (401, 403):
            raise SourceStatusError(realm, status, "the token server refused the credentials")
        if status != 200:
            raise SourceStatusError(realm, status, "token request failed")
        try:
            answer = json.loads(body)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise SourceStatusError(realm, status, "the token server answered without a token")
        return token

    async def _request(
        self, url: str, headers: Mapping[str, str], authorization: str, tls: ssl.SSLContext | None
    ) -> tuple[int, bytes, Mapping[str, str]]:
        # Repeated Accept lines, one per type: a registry may not split one joined header.
        out: list[tuple[str, str]] = [("Accept", t) for t in MANIFEST_TYPES]
        out += [(k, v) for k, v in headers.items() if k.lower() not in ("accept", "authorization")]
        if authorization:
            out.append(("Authorization", authorization))
        try:
            async with self._get_session().get(url, headers=out, ssl=_ssl_arg(tls)) as resp:
                body = await resp.content.read(MAX_MANIFEST_BYTES + 1)
                if len(body) > MAX_MANIFEST_BYTES:
                    raise InvalidArgument(f"{url}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
                return resp.status, body, resp.headers
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise SourceUnreachable(f"registry {urlsplit(url).netloc}: {type(e).__name__}: {e}") from e


def _ssl_arg(tls: ssl.SSLContext | None) -> ssl.SSLContext | bool:
    return tls if tls is not None else True


def _registry_error(body: bytes) -> str:
    """``: MANIFEST_UNKNOWN manifest unknown`` from a registry's JSON error body, or ""."""
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return f": {first.get('code', '')} {first.get('message', '')}".rstrip()
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""
