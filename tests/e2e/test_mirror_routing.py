"""Each registry ``damselfly init`` names is reached, and only it, through the daemon's mirror.

Two real registries hold an image of the same name (``team/app:v1``) with different
content: ``registry`` (plain HTTP, ``host:port``) is the one the client pulls from;
``decoy`` is the daemon's ``proxy.registryMirror.url``, where a mirror request that
lost its registry would land. Clients use the config ``init`` writes (under ``--root``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from damselfly.cli.main import app
from damselfly.testbed.registry import Image, Registry, build_image, free_port, start_registry

from .containerd import Containerd
from .harness import Swarm, assert_dir_image, blob_log, need, skopeo_pull
from .test_mirror_podman import podman
from .tokens import TokenServer


@pytest.fixture
def decoy(tmp_root: Path, registry: Registry) -> Iterator[Registry]:
    reg = start_registry(tmp_root / "decoy")
    other = build_image(tmp_root / "decoy-layout", [1024 * 1024], tag="v1")
    reg.push(other, "team/app")
    yield reg
    reg.stop()


@pytest.fixture
def swarm(tmp_root: Path, registry: Registry, decoy: Registry) -> Iterator[Swarm]:
    s = Swarm(tmp_root / "swarm", registry, peers=1, config={"proxy": {"registryMirror": {"url": decoy.url}}})
    yield s
    s.close()


def init(engine: str, root: Path, mirror: str, registry: str) -> Path:
    res = CliRunner().invoke(
        app, ["init", engine, "--root", str(root), "--proxy", mirror, "--registry", registry]
    )
    assert res.exit_code == 0, res.output
    return root


def repo_requests(reg: Registry, repo: str = "team/app") -> list[str]:
    """The registry's pull requests (GET, HEAD) for ``repo``: the push that filled it is not one."""
    return [
        f"{r.get('method')} {r.get('uri')}"
        for r in reg.requests()
        if r.get("method") in ("GET", "HEAD") and f"/v2/{repo}/" in r.get("uri", "")
    ]


def assert_through_the_mirror(
    swarm: Swarm, registry: Registry, decoy: Registry, image: Image, before: int
) -> None:
    # The blobs went through the daemon (its store holds them as tasks)...
    assert all(swarm.holds_blob(0, b.digest) for b in image.blobs), swarm.logs()
    # ...fetched from the named registry, once each...
    assert registry.blob_bytes() - before == image.blob_bytes, blob_log(registry) + swarm.logs()
    # ...and the daemon's default registry never saw a request for the repository.
    assert repo_requests(decoy) == [], repo_requests(decoy)


def test_skopeo_through_inits_podman_config_reaches_the_plain_http_registry(
    tmp_root: Path, registry: Registry, image: Image, decoy: Registry, swarm: Swarm
) -> None:
    conf = init("podman", tmp_root / "host", swarm.proxy(0), f"http://{registry.host}")
    conf = conf / "etc/containers/registries.conf"
    before = registry.blob_bytes()
    res = skopeo_pull(f"{registry.host}/team/app:v1", tmp_root / "out", conf)
    assert res.returncode == 0, res.stderr + swarm.logs()
    assert_dir_image(tmp_root / "out", image)  # the named registry's image, not the decoy's
    assert_through_the_mirror(swarm, registry, decoy, image, before)


def test_skopeo_through_the_crio_drop_in(
    tmp_root: Path, registry: Registry, image: Image, decoy: Registry, swarm: Swarm
) -> None:
    root = init("crio", tmp_root / "host", swarm.proxy(0), f"http://{registry.host}")
    conf = root / "etc/containers/registries.conf.d/damselfly.conf"
    before = registry.blob_bytes()
    res = skopeo_pull(f"{registry.host}/team/app:v1", tmp_root / "out", conf)
    assert res.returncode == 0, res.stderr + swarm.logs()
    assert_dir_image(tmp_root / "out", image)
    assert_through_the_mirror(swarm, registry, decoy, image, before)


def test_podman_through_inits_config_reaches_the_plain_http_registry(
    tmp_root: Path, registry: Registry, image: Image, decoy: Registry, swarm: Swarm
) -> None:
    need("podman")
    root = tmp_root / "podman"
    root.mkdir()
    conf = init("podman", tmp_root / "host", swarm.proxy(0), f"http://{registry.host}")
    conf = conf / "etc/containers/registries.conf"
    probe = podman(root, conf, "info", "--format", "{{.Store.GraphDriverName}}")
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run in this sandbox: {probe.stderr.strip()[-300:]}")
    try:
        before = registry.blob_bytes()
        ref = f"{registry.host}/team/app:v1"
        res = podman(root, conf, "pull", "--quiet", ref)
        assert res.returncode == 0, res.stderr + swarm.logs()
        info = json.loads(podman(root, conf, "image", "inspect", ref).stdout)[0]
        assert info["Digest"] == image.manifest.digest
        assert_through_the_mirror(swarm, registry, decoy, image, before)
    finally:
        podman(root, conf, "system", "reset", "--force")


@pytest.fixture
def containerd(tmp_root: Path) -> Iterator[Containerd]:
    need("containerd", "ctr")
    c = Containerd(tmp_root / "ctd")
    try:
        why = c.wait()
        if why is not None:
            pytest.skip(f"containerd cannot run in this sandbox: {why}")
        yield c
    finally:
        c.stop()


def _ctr_pull(containerd: Containerd, hosts: Path, ref: str) -> None:
    res = containerd.ctr("images", "pull", "--hosts-dir", str(hosts), "--snapshotter", "native", ref)
    assert res.returncode == 0, res.stderr + res.stdout
    held = set(containerd.ctr("content", "ls", "-q").stdout.split())
    assert held  # content listed


def test_containerd_through_inits_hosts_reaches_the_plain_http_registry(
    tmp_root: Path, registry: Registry, image: Image, decoy: Registry, swarm: Swarm, containerd: Containerd
) -> None:
    root = init("containerd", tmp_root / "host", swarm.proxy(0), f"http://{registry.host}")
    before = registry.blob_bytes()
    ref = f"{registry.host}/team/app:v1"
    _ctr_pull(containerd, root / "etc/containerd/certs.d", ref)
    held = set(containerd.ctr("content", "ls", "-q").stdout.split())
    assert image.manifest.digest in held and all(b.digest in held for b in image.blobs)
    assert_through_the_mirror(swarm, registry, decoy, image, before)


def test_containerd_with_a_mirror_path_host_as_k3s_writes_it(
    tmp_root: Path, registry: Registry, image: Image, decoy: Registry, swarm: Swarm, containerd: Containerd
) -> None:
    """k3s turns an endpoint with a path into a host used as given (``override_path``): the
    endpoint ``init k3s`` writes names the registry by path, with no header."""
    import yaml

    root = init("k3s", tmp_root / "host", swarm.proxy(0), f"http://{registry.host}")
    data = yaml.safe_load((root / "etc/rancher/k3s/registries.yaml").read_text())
    endpoint = data["mirrors"][registry.host]["endpoint"][0]
    hosts = tmp_root / "k3s-certs.d"
    (hosts / registry.host).mkdir(parents=True)
    (hosts / registry.host / "hosts.toml").write_text(
        f'[host."{endpoint}"]\n  capabilities = ["pull", "resolve"]\n  override_path = true\n'
    )
    before = registry.blob_bytes()
    _ctr_pull(containerd, hosts, f"{registry.host}/team/app:v1")
    held = set(containerd.ctr("content", "ls", "-q").stdout.split())
    assert image.manifest.digest in held
    assert_through_the_mirror(swarm, registry, decoy, image, before)


def test_skopeo_path_form_with_the_default_registry_out_of_reach(
    tmp_root: Path, registry: Registry, image: Image
) -> None:
    """An air-gapped host whose default registry (Docker Hub under `damselfly up`) cannot be
    reached: the mirror answers the client's /v2/ probe itself and the named registry is pulled
    through the swarm (a client whose probe fails skips the mirror and pulls directly)."""
    gone = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    swarm = Swarm(tmp_root / "swarm", registry, peers=1, config={"proxy": {"registryMirror": {"url": gone}}})
    try:
        conf = init("podman", tmp_root / "host", swarm.proxy(0), f"http://{registry.host}")
        before = registry.blob_bytes()
        res = skopeo_pull(
            f"{registry.host}/team/app:v1", tmp_root / "out", conf / "etc/containers/registries.conf"
        )
        assert res.returncode == 0, res.stderr + swarm.logs()
        assert_dir_image(tmp_root / "out", image)
        assert all(swarm.holds_blob(0, b.digest) for b in image.blobs), swarm.logs()
        assert registry.blob_bytes() - before == image.blob_bytes, blob_log(registry) + swarm.logs()
    finally:
        swarm.close()


def test_skopeo_by_path_to_a_token_registry_gets_the_token_for_the_right_repository(
    tmp_root: Path, decoy: Registry
) -> None:
    """A registry with bearer tokens (as Docker Hub and ghcr.io): skopeo's token request goes
    through the mirror's token service to the named registry's, for ``team/app`` (not the mirror
    path), and the pull comes through the swarm."""
    tokens = TokenServer(tmp_root / "tokens")
    reg = start_registry(tmp_root / "token-registry", token_auth=tokens.registry_auth())
    swarm = None
    try:
        image = build_image(tmp_root / "layout-t", [2 * 1024 * 1024, 1024 * 1024], tag="v1")
        tokens.requests.clear()
        _push_with_token(reg, image, tokens)
        swarm = Swarm(
            tmp_root / "swarm", reg, peers=1, config={"proxy": {"registryMirror": {"url": decoy.url}}}
        )
        conf = init("podman", tmp_root / "host", swarm.proxy(0), f"http://{reg.host}")
        tokens.requests.clear()
        before = reg.blob_bytes()
        res = skopeo_pull(
            f"{reg.host}/team/app:v1", tmp_root / "out", conf / "etc/containers/registries.conf"
        )
        assert res.returncode == 0, res.stderr + swarm.logs()
        assert_dir_image(tmp_root / "out", image)
        assert "repository:team/app:pull" in tokens.scopes(), tokens.requests
        assert all("damselfly__mirror" not in s for s in tokens.scopes()), tokens.requests
        assert all(swarm.holds_blob(0, b.digest) for b in image.blobs), swarm.logs()
        assert reg.blob_bytes() - before == image.blob_bytes, blob_log(reg) + swarm.logs()
        assert repo_requests(decoy) == []
    finally:
        if swarm is not None:
            swarm.close()
        reg.stop()
        tokens.close()


def _push_with_token(reg: Registry, image: Image, tokens: TokenServer) -> None:
    """skopeo pushes with a token it asks for itself (the test token service grants push)."""
    import subprocess

    res = subprocess.run(
        ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{image.layout}:{image.tag}",
         f"docker://{reg.host}/team/app:{image.tag}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
