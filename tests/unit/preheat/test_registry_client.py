"""Manifest resolution against an in-process fake registry on a real loopback socket.

The fake speaks the parts of distribution's API that matter here: manifests by
tag or digest with content negotiation, a ``WWW-Authenticate`` challenge
(basic, or bearer with a separate token endpoint) and JSON error bodies. The
real docker-registry is exercised by tests/e2e/test_preheat.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from damselfly import registry_client as rc
from damselfly.errors import InvalidArgument, NotFound, SourceStatusError, SourceUnreachable

USER, PASSWORD, TOKEN = "alice", "pw", "tok-123"


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _image_manifest(seed: str, media_type: str = rc.OCI_MANIFEST) -> bytes:
    def d(name: str) -> str:
        return _digest(f"{seed}-{name}".encode())

    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": d("config"),
            "size": 10,
        },
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d("l0"), "size": 100},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d("l1"), "size": 200},
        ],
    }
    return json.dumps(doc).encode()


@dataclass
class FakeRegistry:
    auth: str = ""  # "", "basic" or "bearer"
    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)
    accepts: list[list[str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    url: str = ""

    def add(self, repo: str, tag: str, media_type: str, body: bytes) -> str:
        digest = _digest(body)
        self.manifests[(repo, tag)] = (media_type, body)
        self.manifests[(repo, digest)] = (media_type, body)
        return digest

    def _authorized(self, request: web.Request) -> bool:
        got = request.headers.get("Authorization", "")
        if self.auth == "basic":
            return got == rc.basic_authorization(USER, PASSWORD)
        if self.auth == "bearer":
            return got == f"Bearer {TOKEN}"
        return True

    async def manifest(self, request: web.Request) -> web.Response:
        repo, ref = request.match_info["repo"], request.match_info["ref"]
        if not self._authorized(request):
            if self.auth == "basic":
                challenge = 'Basic realm="fake"'
            else:
                challenge = (
                    f'Bearer realm="{self.url}/token",service="fake-registry",scope="repository:{repo}:pull"'
                )
            err = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
            return web.json_response(err, status=401, headers={"WWW-Authenticate": challenge})
        self.accepts.append(request.headers.getall("Accept", []))
        found = self.manifests.get((repo, ref))
        if found is None:
            err = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
            return web.json_response(err, status=404)
        media_type, body = found
        return web.Response(
            body=body, headers={"Content-Type": media_type, "Docker-Content-Digest": _digest(body)}
        )

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests.append(dict(request.query))
        got = request.headers.get("Authorization", "")
        if got != "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode():
            return web.json_response({"details": "bad credentials"}, status=401)
        return web.json_response({"token": TOKEN, "expires_in": 300})


@pytest.fixture
async def fake() -> AsyncIterator[FakeRegistry]:
    reg = FakeRegistry()
    app = web.Application()
    app.router.add_get("/v2/{repo:.+}/manifests/{ref}", reg.manifest)
    app.router.add_get("/token", reg.token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    reg.url = f"http://127.0.0.1:{port}"
    try:
        yield reg
    finally:
        await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[rc.RegistryClient]:
    async with rc.RegistryClient(timeout=10) as c:
        yield c


def _ref(fake: FakeRegistry, repo: str = "team/app", tag: str = "v1") -> rc.ImageRef:
    return rc.parse_manifest_url(f"{fake.url}/v2/{repo}/manifests/{tag}")


# --------------------------------------------------------------------------- pure parts


def test_parse_reference_forms() -> None:
    r = rc.parse_reference("127.0.0.1:5000/team/app:v1", scheme="http")
    assert (r.registry, r.repository, r.reference) == ("http://127.0.0.1:5000", "team/app", "v1")
    assert r.manifest_url == "http://127.0.0.1:5000/v2/team/app/manifests/v1"
    assert r.blob_url("sha256:" + "a" * 64) == "http://127.0.0.1:5000/v2/team/app/blobs/sha256:" + "a" * 64
    hub = rc.parse_reference("alpine")
    assert (hub.registry, hub.repository, hub.reference) == (rc.DOCKER_HUB, "library/alpine", "latest")
    assert rc.parse_reference("docker.io/grafana/grafana:10").repository == "grafana/grafana"
    pinned = rc.parse_reference("localhost/app@sha256:" + "b" * 64)
    assert pinned.registry == "https://localhost" and pinned.reference == "sha256:" + "b" * 64
    assert rc.parse_reference("https://reg.example/v2/a/b/manifests/x") == rc.ImageRef(
        "https://reg.example", "a/b", "x"
    )
    for bad in ("reg.example/Team/App:v1", "reg.example/app:bad tag", "ftp://reg.example/app"):
        with pytest.raises(InvalidArgument):
            rc.parse_reference(bad)
    with pytest.raises(InvalidArgument, match="credentials"):
        rc.parse_manifest_url("https://u:p@reg.example/v2/app/manifests/v1")


def test_parse_platform_and_challenge() -> None:
    assert rc.parse_platform("linux/arm64/v8") == rc.Platform("linux", "arm64", "v8")
    assert str(rc.parse_platform("Linux/AMD64")) == "linux/amd64"
    with pytest.raises(InvalidArgument):
        rc.parse_platform("amd64")
    c = rc.parse_challenge('Bearer realm="https://auth.example/token",service="registry.example",scope="a,b"')
    assert c == rc.Challenge(
        "bearer", {"realm": "https://auth.example/token", "service": "registry.example", "scope": "a,b"}
    )
    assert rc.parse_challenge('Basic realm="x"') == rc.Challenge("basic", {"realm": "x"})
    assert rc.parse_challenge("") is None


def _index(*platforms: dict[str, str]) -> dict[str, Any]:
    return {
        "manifests": [
            {"digest": _digest(json.dumps(p).encode()), "platform": p, "mediaType": rc.OCI_MANIFEST}
            for p in platforms
        ]
    }


def test_select_manifest_by_platform_and_variant() -> None:
    amd = {"os": "linux", "architecture": "amd64"}
    arm_v8 = {"os": "linux", "architecture": "arm64", "variant": "v8"}
    arm = {"os": "linux", "architecture": "arm64"}
    unknown = {"os": "unknown", "architecture": "unknown"}
    idx = _index(unknown, amd, arm_v8)
    assert rc.select_manifest(idx, rc.parse_platform("linux/amd64"))["platform"] == amd
    assert rc.select_manifest(idx, rc.parse_platform("linux/arm64"))["platform"] == arm_v8
    assert rc.select_manifest(_index(arm_v8, arm), rc.parse_platform("linux/arm64"))["platform"] == arm
    with pytest.raises(NotFound, match=r"linux/arm64/v7 .*linux/amd64, linux/arm64/v8"):
        rc.select_manifest(idx, rc.parse_platform("linux/arm64/v7"))


def test_blobs_of_lists_config_then_layers_once_each() -> None:
    ref = rc.ImageRef("https://r.example", "team/app", "v1")
    doc = json.loads(_image_manifest("x"))
    doc["layers"].append(doc["layers"][0])  # one blob used twice
    blobs = rc.blobs_of(doc, ref)
    assert [b.digest for b in blobs] == [
        doc["config"]["digest"],
        *(lay["digest"] for lay in doc["layers"][:2]),
    ]
    assert blobs[1].url == ref.blob_url(blobs[1].digest) and blobs[1].size == 100
    doc["layers"][0]["digest"] = "md5:abc"
    with pytest.raises(InvalidArgument, match="unsupported blob digest"):
        rc.blobs_of(doc, ref)


# --------------------------------------------------------------------------- over HTTP


async def test_anonymous_manifest_with_every_accept_line(
    fake: FakeRegistry, client: rc.RegistryClient
) -> None:
    body = _image_manifest("anon")
    digest = fake.add("team/app", "v1", rc.OCI_MANIFEST, body)
    image = await client.resolve(_ref(fake))
    assert image.manifest_digest == digest and image.authorization == "" and image.platform == ""
    assert [b.size for b in image.blobs] == [10, 100, 200]
    assert fake.accepts == [list(rc.MANIFEST_TYPES)]  # one Accept line per type, not one joined line


async def test_bearer_token_dance(fake: FakeRegistry, client: rc.RegistryClient) -> None:
    fake.auth = "bearer"
    fake.add("team/app", "v1", rc.DOCKER_MANIFEST, _image_manifest("b", rc.DOCKER_MANIFEST))
    image = await client.resolve(_ref(fake), username=USER, password=PASSWORD)
    assert image.authorization == f"Bearer {TOKEN}"
    assert fake.token_requests == [{"scope": "repository:team/app:pull", "service": "fake-registry"}]
    with pytest.raises(SourceStatusError, match="token server refused") as e:
        await client.resolve(_ref(fake), username=USER, password="nope")
    assert e.value.status == 401
    with pytest.raises(SourceStatusError, match="token server refused"):
        await client.resolve(_ref(fake))  # anonymous token refused by this token server


async def test_basic_auth(fake: FakeRegistry, client: rc.RegistryClient) -> None:
    fake.auth = "basic"
    fake.add("team/app", "v1", rc.OCI_MANIFEST, _image_manifest("basic"))
    image = await client.resolve(_ref(fake), username=USER, password=PASSWORD)
    assert image.authorization == rc.basic_authorization(USER, PASSWORD)
    with pytest.raises(SourceStatusError, match="needs credentials"):
        await client.resolve(_ref(fake))
    with pytest.raises(SourceStatusError, match="refused the credentials"):
        await client.resolve(_ref(fake), username=USER, password="wrong")


async def test_manifest_list_picks_the_platform(fake: FakeRegistry, client: rc.RegistryClient) -> None:
    amd = _image_manifest("amd")
    arm = _image_manifest("arm")
    amd_digest = fake.add("team/app", "amd", rc.OCI_MANIFEST, amd)
    arm_digest = fake.add("team/app", "arm", rc.OCI_MANIFEST, arm)
    index = {
        "schemaVersion": 2,
        "mediaType": rc.DOCKER_MANIFEST_LIST,
        "manifests": [
            {"digest": amd_digest, "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": arm_digest, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ],
    }
    fake.add("team/app", "v1", rc.DOCKER_MANIFEST_LIST, json.dumps(index).encode())
    image = await client.resolve(_ref(fake), platform="linux/arm64")
    assert image.manifest_digest == arm_digest and image.platform == "linux/arm64/v8"
    assert [b.digest for b in image.blobs] == rc_digests(arm)
    default = await client.resolve(_ref(fake))
    assert default.manifest_digest == amd_digest and default.platform == "linux/amd64"
    with pytest.raises(NotFound, match="no manifest for windows/amd64"):
        await client.resolve(_ref(fake), platform="windows/amd64")


def rc_digests(body: bytes) -> list[str]:
    doc = json.loads(body)
    return [doc["config"]["digest"], *(lay["digest"] for lay in doc["layers"])]


async def test_missing_tag_and_tampered_manifest(fake: FakeRegistry, client: rc.RegistryClient) -> None:
    with pytest.raises(NotFound, match=r"team/app:v9 not found .*MANIFEST_UNKNOWN"):
        await client.resolve(_ref(fake, tag="v9"))
    good = _image_manifest("good")
    claimed = _digest(b"something else")
    fake.manifests[("team/app", claimed)] = (rc.OCI_MANIFEST, good)
    with pytest.raises(InvalidArgument, match="arrived with digest"):
        await client.resolve(_ref(fake, tag=claimed))
    fake.add("team/app", "old", rc.DOCKER_SCHEMA1, json.dumps({"schemaVersion": 1}).encode())
    with pytest.raises(InvalidArgument, match="schema 1"):
        await client.resolve(_ref(fake, tag="old"))


async def test_unreachable_registry(client: rc.RegistryClient) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SourceUnreachable):
        await client.resolve(rc.parse_manifest_url(f"http://127.0.0.1:{port}/v2/a/manifests/v1"))


async def test_a_token_the_caller_holds_is_tried_first(fake: FakeRegistry, client: rc.RegistryClient) -> None:
    fake.auth = "bearer"
    fake.add("team/app", "v1", rc.OCI_MANIFEST, _image_manifest("held"))
    image = await client.resolve(_ref(fake), headers={"authorization": f"Bearer {TOKEN}"})
    assert image.authorization == f"Bearer {TOKEN}" and fake.token_requests == []
