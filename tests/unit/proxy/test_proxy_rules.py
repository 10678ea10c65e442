"""Pure decisions of the proxy: rules, upstream registry, blob paths, ranges, forwarded headers."""

from __future__ import annotations

import pytest

from damselfly.config import ProxyRuleConfig
from damselfly.daemon.proxy import mirror
from damselfly.daemon.proxy.rules import Route, compile_rules, decide
from damselfly.daemon.proxy.stream import RangeNotSatisfiable, Span, parse_range
from damselfly.daemon.proxy.upstream import forward_headers, response_headers
from damselfly.errors import ConfigError, InvalidArgument

DIGEST = "sha256:" + "ab" * 32
DEFAULT = [ProxyRuleConfig(regx="blobs/sha256.*")]


def test_only_blob_gets_go_p2p_by_default() -> None:
    rules = compile_rules(DEFAULT)
    blob = f"https://r.example/v2/library/x/blobs/{DIGEST}"
    assert decide("GET", blob, rules).route is Route.P2P
    assert decide("HEAD", blob, rules).route is Route.DIRECT
    assert decide("GET", "https://r.example/v2/library/x/manifests/latest", rules).route is Route.DIRECT
    assert decide("GET", "https://r.example/v2/", rules).route is Route.DIRECT


def test_use_p2p_routes_only_unmatched_gets() -> None:
    rules = compile_rules([*DEFAULT, ProxyRuleConfig(regx=r"internal\.example/", direct=True)])
    plain = "https://files.example/a.bin"
    assert decide("GET", plain, rules).route is Route.DIRECT
    assert decide("GET", plain, rules, use_p2p=True) == decide("GET", plain, [], use_p2p=True)
    assert decide("GET", plain, rules, use_p2p=True).route is Route.P2P
    assert decide("HEAD", plain, rules, use_p2p=True).route is Route.DIRECT
    # A rule that matched decides: Damselfly's "direct" rules stay direct.
    assert decide("GET", "https://internal.example/x", rules, use_p2p=True).route is Route.DIRECT


def test_first_matching_rule_decides_and_rewrites() -> None:
    rules = compile_rules(
        [
            ProxyRuleConfig(regx=r"internal\.example/.*\.tar", direct=True),
            ProxyRuleConfig(regx=r"files\.example/", useTLS=True),
            ProxyRuleConfig(regx=r"old\.example/", redirect="new.example:8443"),
            ProxyRuleConfig(regx=r"cdn\.example/", redirect="https://mirror.example/base"),
        ]
    )
    d = decide("GET", "http://internal.example/a.tar", rules)
    assert d.route is Route.DIRECT
    d = decide("GET", "http://files.example/a.bin?x=1", rules)
    assert (d.route, d.url) == (Route.P2P, "https://files.example/a.bin?x=1")
    assert decide("GET", "http://old.example/p", rules).url == "http://new.example:8443/p"
    assert decide("GET", "http://cdn.example/p/q", rules).url == "https://mirror.example/base/p/q"
    assert decide("GET", "http://other.example/p", rules).route is Route.DIRECT


def test_bad_rule_regex_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        compile_rules([ProxyRuleConfig(regx="(")])


def test_upstream_header_then_ns_then_default() -> None:
    default = "https://index.docker.io"
    assert mirror.upstream_for({"X-Dragonfly-Registry": "http://127.0.0.1:5000"}, "ns=x.io", default) == (
        "http://127.0.0.1:5000"
    )
    assert mirror.upstream_for({}, "ns=ghcr.io&foo=1", default) == "https://ghcr.io"
    assert mirror.upstream_for({}, "ns=docker.io", default) == "https://registry-1.docker.io"
    assert mirror.upstream_for({}, "", default) == default
    # ns= names the default registry: its configured scheme is kept (a plain-HTTP registry works).
    assert mirror.upstream_for({}, "ns=127.0.0.1:5000", "http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    # dynamic off: containerd's ns= hint is ignored, an explicit other registry is refused.
    assert mirror.upstream_for({}, "ns=ghcr.io", default, dynamic=False) == default
    with pytest.raises(PermissionError):
        mirror.upstream_for({"X-Dragonfly-Registry": "http://a:1"}, "", default, dynamic=False)


@pytest.mark.parametrize(
    "bad", ["http://a/b", "ftp://a", "http://user@a", "http://a?x", "a/../b", "http://a b", ""]
)
def test_registry_header_cannot_smuggle_paths_or_userinfo(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        mirror.normalize_registry(bad)


def test_upstream_url_drops_only_ns() -> None:
    url = mirror.upstream_url("https://r.io", "/v2/a/manifests/1", "ns=r.io&digest=x")
    assert url == "https://r.io/v2/a/manifests/1?digest=x"
    assert mirror.upstream_url("https://r.io", "/v2/", "ns=r.io") == "https://r.io/v2/"


def test_blob_digest() -> None:
    assert mirror.blob_digest(f"/v2/org/team/app/blobs/{DIGEST}") == DIGEST
    assert mirror.blob_digest(f"/v2/app/manifests/{DIGEST}") is None
    assert mirror.blob_digest("/v2/app/blobs/sha256:XYZ") is None
    assert mirror.blob_digest("/v2/app/blobs/uploads/") is None


def test_parse_range() -> None:
    assert parse_range("bytes=0-9", 100) == Span(0, 9, 100)
    assert parse_range("bytes=90-", 100) == Span(90, 99, 100)
    assert parse_range("bytes=-10", 100) == Span(90, 99, 100)
    assert parse_range("bytes=50-1000", 100) == Span(50, 99, 100)
    assert parse_range("bytes=0-1,5-6", 100) is None  # multi-range: answer the whole content
    assert parse_range("items=0-1", 100) is None
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=100-", 100)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=9-3", 100)


def test_repeated_accept_headers_are_forwarded_one_by_one() -> None:
    headers = [
        ("Host", "127.0.0.1:4001"),
        ("Accept", "application/vnd.oci.image.manifest.v1+json"),
        ("Accept", "application/vnd.docker.distribution.manifest.v2+json"),
        ("Connection", "keep-alive"),
        ("Authorization", "Bearer t"),
        ("X-Dragonfly-Registry", "https://r.io"),
        ("Proxy-Authorization", "Basic x"),
    ]
    out = forward_headers(headers)
    assert out.getall("Accept") == [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
    assert out["Authorization"] == "Bearer t"  # to the registry, and only there
    for gone in ("Host", "Connection", "X-Dragonfly-Registry", "Proxy-Authorization"):
        assert gone not in out
    back = response_headers(
        [("Content-Length", "3"), ("Transfer-Encoding", "chunked"), ("Www-Authenticate", "x")]
    )
    assert dict(back) == {"Content-Length": "3", "Www-Authenticate": "x"}


# ----------------------------------------------------------------- read-ahead order


def _manifest(media: str = "application/vnd.oci.image.manifest.v1+json", **extra: object) -> bytes:
    import json

    doc = {
        "schemaVersion": 2,
        "mediaType": media,
        "config": {"digest": "sha256:" + "c" * 64, "size": 10},
        "layers": [{"digest": "sha256:" + "a" * 64, "size": 1}, {"digest": "sha256:" + "b" * 64, "size": 2}],
        **extra,
    }
    return json.dumps(doc).encode()


def test_blob_order_is_the_layers_then_the_config_under_the_manifests_repository() -> None:
    found = mirror.blob_order("https://reg.example:5000/v2/team/app/manifests/v1?ns=x", "", _manifest())
    assert found == (
        "https://reg.example:5000/v2/team/app/blobs/",
        "?ns=x",
        ["sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64],
    )


def test_blob_order_ignores_indexes_other_documents_and_bad_digests() -> None:
    index = "application/vnd.oci.image.index.v1+json"
    url = "http://r/v2/app/manifests/v1"
    assert mirror.blob_order(url, index, _manifest(media=index)) is None
    assert mirror.blob_order(url, "", b"not json") is None
    assert mirror.blob_order("http://r/v2/app/blobs/sha256:" + "a" * 64, "", _manifest()) is None
    assert mirror.blob_order(url, "", b"x" * (mirror.MANIFEST_MAX + 1)) is None
    bad = _manifest(layers=[{"digest": "sha256:../../etc"}, {"digest": "sha256:" + "d" * 64}])
    assert mirror.blob_order(url, "", bad) == (
        "http://r/v2/app/blobs/",
        "",
        ["sha256:" + "d" * 64, "sha256:" + "c" * 64],
    )
