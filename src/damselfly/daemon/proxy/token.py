"""Registry tokens for clients that name their registry in the mirror path (podman, skopeo).

Such a client probes the mirror's ``/v2/`` once, takes the auth challenge of that
answer for every registry it then reaches through the mirror, and asks the
challenge's token service for the repository name it used, mirror path included
(``repository:damselfly__mirror/https/ghcr.io/owner/app:pull``). Sent to the default
registry's token service, that name gets a token for no repository, and the pull
falls back to the registry, past the swarm. So the mirror keeps the token dance in
step with the registry each request names:

* the mirror answers the ``/v2/`` probe itself with a ``Bearer`` challenge whose
  realm is its own ``/damselfly/token`` (the default registry's auth, like any
  other's, is found there);
* that endpoint reads the registry from the scope's repository name (the default
  registry when it names none), asks that registry's ``/v2/`` for its own
  challenge, and asks its token service for the repository without the mirror path
  (``pull`` only: the mirror never writes), with the client's credentials; the
  answer goes back as the token service sent it;
* a registry that wants HTTP basic auth gets, as the "token", the client's basic
  credentials under a marker (``damselfly-basic.<base64>``) and one with no auth
  ``damselfly-anonymous``; :func:`upstream_authorization` turns them back into what
  the registry wants when a request goes out, so they never leave the daemon.

Pure functions here; :class:`TokenService` does the I/O. Owner of the cache of
registry challenges: :class:`TokenService`.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp
from aiohttp import web

from ...errors import InvalidArgument
from .mirror import registry_allowed, split_mirror_path
from .upstream import ANONYMOUS, BASIC_PREFIX, Upstream

TOKEN_PATH = "/damselfly/token"
PROBE = "/v2/"  # what the proxy routes a client's registry-form /v2/ probe as
_API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}
CHALLENGE_TTL_S = 600.0
BODY_MAX = 1024 * 1024  # a token answer is a few KiB
CHALLENGES_MAX = 256

_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"')
_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def parse_challenge(value: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` -> ``("bearer", {"realm": "x", "service": "y"})``."""
    scheme, _, rest = value.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


def probe_challenge(value: str, mirror_host: str) -> str | None:
    """The probe's ``WWW-Authenticate`` with the realm on this mirror; None to leave it as it is."""
    scheme, params = parse_challenge(value)
    if scheme != "bearer" or "realm" not in params or not _HOSTPORT.match(mirror_host):
        return None
    params["realm"] = f"http://{mirror_host}{TOKEN_PATH}"
    return "Bearer " + ",".join(f'{k}="{v}"' for k, v in params.items())


def split_scope(scope: str) -> tuple[str | None, str]:
    """A token scope's registry (None: the default) and the scope that registry understands.

    ``repository:damselfly__mirror/http/h_5000/team/app:pull,push`` ->
    ``("http://h:5000", "repository:team/app:pull")``. Raises InvalidArgument for a
    malformed mirror path.
    """
    kind, _, rest = scope.partition(":")
    name, _, _actions = rest.rpartition(":")
    if kind != "repository" or not name:
        return None, scope
    registry, path = split_mirror_path(f"/v2/{name}")
    return registry, f"repository:{path.removeprefix('/v2/')}:pull"  # the mirror only reads


def _token_json(token: str) -> web.Response:
    return web.json_response({"token": token, "access_token": token, "expires_in": 300})


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n")


class TokenService:
    """The mirror's answers to the ``/v2/`` probe and ``/damselfly/token`` (see the module doc)."""

    def __init__(self, upstream: Upstream, default: str, allowed: Sequence[re.Pattern[str]]) -> None:
        self.upstream = upstream
        self.default = default
        self.allowed = allowed
        # registry base URL -> (when learned, its /v2/ challenge; "" when it asks for none)
        self._challenges: OrderedDict[str, tuple[float, str]] = OrderedDict()

    async def answer(self, kind: str, request: web.BaseRequest) -> web.Response:
        """``kind``: :data:`PROBE` or :data:`TOKEN_PATH`, as the proxy routed the request."""
        return await (self.probe(request) if kind == PROBE else self.token(request))

    async def _get(self, url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes, str]:
        """GET ``url``: status, its challenge, body (at most :data:`BODY_MAX`) and content type."""
        ssl = self.upstream.tls.for_url(url)
        async with self.upstream.session().get(url, headers=headers, allow_redirects=False, ssl=ssl) as r:
            body = await r.content.read(BODY_MAX + 1)
            if len(body) > BODY_MAX:
                raise aiohttp.ClientPayloadError(f"answer over {BODY_MAX} bytes")
            return r.status, r.headers.get("WWW-Authenticate", ""), body, r.headers.get("Content-Type", "")

    async def _challenge(self, registry: str) -> str:
        known = self._challenges.get(registry)
        if known is None or time.monotonic() - known[0] >= CHALLENGE_TTL_S:
            status, challenge, _, _ = await self._get(f"{registry}/v2/")
            known = (time.monotonic(), challenge if status == 401 else "")
            self._challenges[registry] = known
            self._challenges.move_to_end(registry)
            while len(self._challenges) > CHALLENGES_MAX:
                self._challenges.popitem(last=False)
        return known[1]

    async def probe(self, request: web.BaseRequest) -> web.Response:
        """The ``/v2/`` probe: "ask this mirror's token service", whatever the registry.

        The answer does not depend on the default registry (no I/O): the token service
        finds each registry's own auth when the client comes (bearer, basic or none), and
        an air-gapped host whose default registry cannot be reached still gets a probe
        that clients accept.
        """
        challenge = probe_challenge('Bearer realm="",service="damselfly"', request.host)
        if challenge is None:
            return web.json_response({}, headers=_API_VERSION)
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required", "detail": None}]}
        return web.json_response(body, status=401, headers={**_API_VERSION, "WWW-Authenticate": challenge})

    async def token(self, request: web.BaseRequest) -> web.Response:
        query = parse_qsl(request.rel_url.raw_query_string, keep_blank_values=True)
        try:
            scopes = [split_scope(v) for k, v in query if k == "scope"]
        except InvalidArgument as e:
            return _text(400, str(e))
        named = {r or self.default for r, _ in scopes} or {self.default}
        if len(named) > 1:
            return _text(400, "a token is for one registry; these scopes name several")
        registry = named.pop()
        if not registry_allowed(registry, self.default, self.allowed):
            return _text(403, f"this mirror does not serve {registry} (see registryMirror.allowedRegistries)")
        auth = request.headers.get("Authorization", "")
        try:
            scheme, params = parse_challenge(await self._challenge(registry))
            if scheme == "basic":
                if not auth.startswith("Basic "):
                    return _text(401, f"{registry} wants credentials")
                return _token_json(BASIC_PREFIX + auth.removeprefix("Basic "))
            realm = params.get("realm", "")
            if scheme != "bearer" or urlsplit(realm).scheme not in ("http", "https"):
                return _token_json(ANONYMOUS)
            out = [(k, v) for k, v in query if k not in ("scope", "service")]
            out += [("service", params["service"])] if "service" in params else []
            out += [("scope", s) for _, s in scopes]
            url = realm + ("&" if "?" in realm else "?") + urlencode(out)
            status, _, body, kind = await self._get(url, {"Authorization": auth} if auth else None)
            kind = kind or "application/json"
            return web.Response(status=status, body=body, headers={"Content-Type": kind})
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            return _text(502, f"the token service of {registry} failed: {type(e).__name__}")
