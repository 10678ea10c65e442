"""Mirror routing: the registry a request names (header, ?ns=, mirror path) and nothing else."""

from __future__ import annotations

import re

import pytest

from damselfly.daemon.proxy import mirror
from damselfly.errors import ConfigError, InvalidArgument

HUB = "https://index.docker.io"
BLOB = "/blobs/sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("registry", "path"),
    [
        ("http://127.0.0.1:5000", "damselfly__mirror/http/127.0.0.1_5000"),
        ("ghcr.io", "damselfly__mirror/https/ghcr.io"),
        ("https://My-Reg.Example.com:8443", "damselfly__mirror/https/my-reg.example.com_8443"),
        ("docker.io", "damselfly__mirror/https/registry-1.docker.io"),
    ],
)
def test_mirror_path_round_trips(registry: str, path: str) -> None:
    assert mirror.mirror_path(registry) == path
    named, rest = mirror.split_mirror_path(f"/v2/{path}/team/app{BLOB}")
    assert named == mirror.normalize_registry(registry).lower()
    assert rest == f"/v2/team/app{BLOB}"


def test_mirror_path_is_a_valid_image_reference_path() -> None:
    """Each component fits the distribution reference grammar (lowercase, no ':')."""
    component = re.compile(r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*")
    for reg in ("http://127.0.0.1:5000", "https://reg-1.example.com:443", "quay.io"):
        assert all(component.fullmatch(c) for c in mirror.mirror_path(reg).split("/"))


def test_ipv6_registry_cannot_be_named_in_a_path() -> None:
    with pytest.raises(InvalidArgument):
        mirror.mirror_path("http://[::1]:5000")


@pytest.mark.parametrize(
    "bad",
    [
        "/v2/damselfly__mirror/",
        "/v2/damselfly__mirror/ftp/host/app/manifests/v1",
        "/v2/damselfly__mirror/http/",
        "/v2/damselfly__mirror/http/Host/app/manifests/v1",
        "/v2/damselfly__mirror/http/host:5000/app/manifests/v1",
        "/v2/damselfly__mirror/http/host_99999/app/manifests/v1",
        "/v2/damselfly__mirror/http/user@host/app/manifests/v1",
        "/v2/damselfly__mirror/http/a_1/damselfly__mirror/http/b_2/app/manifests/v1",
    ],
)
def test_malformed_mirror_path_is_refused_not_sent_to_the_default(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        mirror.route({}, bad, "", HUB)


def test_route_header_path_ns_default() -> None:
    path = f"/v2/damselfly__mirror/http/10.0.0.7_5000/team/app{BLOB}"
    by_path = mirror.route({}, path, "", HUB)
    assert (by_path.base, by_path.path, by_path.named_by) == (
        "http://10.0.0.7:5000",
        f"/v2/team/app{BLOB}",
        "path",
    )
    by_header = mirror.route({"X-Dragonfly-Registry": "http://10.0.0.7:5000"}, "/v2/team/app", "ns=x.io", HUB)
    assert (by_header.base, by_header.named_by) == ("http://10.0.0.7:5000", "header")
    # Header and path agreeing is fine; disagreeing is refused, never settled in favour of one.
    assert mirror.route({"X-Dragonfly-Registry": "http://10.0.0.7:5000"}, path, "", HUB).base == by_path.base
    with pytest.raises(InvalidArgument):
        mirror.route({"X-Dragonfly-Registry": "https://ghcr.io"}, path, "", HUB)
    # An explicit name wins over containerd's ns= hint.
    assert mirror.route({}, path, "ns=ghcr.io", HUB).base == "http://10.0.0.7:5000"
    assert mirror.route({}, "/v2/team/app", "ns=ghcr.io", HUB).named_by == "ns"
    default = mirror.route({}, "/v2/library/alpine/manifests/3", "", HUB)
    assert (default.base, default.named_by) == (HUB, "default")
    # A repository that merely looks like the marker's neighbour is an ordinary name.
    assert mirror.route({}, "/v2/damselfly/app/manifests/1", "", HUB).path == "/v2/damselfly/app/manifests/1"


def test_dynamic_off_serves_the_default_only() -> None:
    path = "/v2/damselfly__mirror/https/ghcr.io/o/app/manifests/1"
    with pytest.raises(PermissionError):
        mirror.route({}, path, "", HUB, dynamic=False)
    # Naming the default itself (any of Docker Hub's names) is fine.
    hub_path = "/v2/damselfly__mirror/https/registry-1.docker.io/library/a/manifests/1"
    assert mirror.route({}, hub_path, "", HUB, dynamic=False).path == "/v2/library/a/manifests/1"


def test_allowed_registries() -> None:
    allowed = mirror.compile_allowed([r"ghcr\.io", r"10\.0\.0\.7:5000"])
    assert mirror.registry_allowed("https://ghcr.io", HUB, allowed)
    assert mirror.registry_allowed("http://10.0.0.7:5000", HUB, allowed)
    assert not mirror.registry_allowed("http://10.0.0.7:5001", HUB, allowed)
    assert not mirror.registry_allowed("http://169.254.169.254", HUB, allowed)
    assert not mirror.registry_allowed("https://ghcr.io.evil.example", HUB, allowed)  # matched whole
    assert mirror.registry_allowed("https://registry-1.docker.io", HUB, allowed)  # the default always
    assert mirror.registry_allowed("http://anything:1", HUB, [])  # empty: any...
    assert mirror.registry_allowed("http://10.0.0.7:5000", HUB, [])
    assert not mirror.registry_allowed("http://169.254.169.254", HUB, [])  # ...but cloud metadata
    assert not mirror.registry_allowed("http://[fe80::1]:80", HUB, [])
    named = mirror.compile_allowed([r"169\.254\.169\.254"])
    assert mirror.registry_allowed("http://169.254.169.254", HUB, named)
    with pytest.raises(ConfigError, match="allowedRegistries"):
        mirror.compile_allowed(["("])
