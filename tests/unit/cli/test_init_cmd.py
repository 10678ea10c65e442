"""``damselfly init``: engine configs merged with what is there, idempotent, and valid."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from damselfly.cli import init_cmd as ic
from damselfly.cli.main import app
from damselfly.errors import InvalidArgument

MIRROR = "127.0.0.1:4001"


def test_hosts_toml_new_and_merged_mirror_first() -> None:
    new = tomllib.loads(ic.containerd_hosts_toml(None, MIRROR, "https://ghcr.io"))
    assert new["server"] == "https://ghcr.io"
    host = new["host"][f"http://{MIRROR}"]
    assert host["capabilities"] == ["pull", "resolve"]
    assert host["header"]["X-Dragonfly-Registry"] == ["https://ghcr.io"]
    existing = 'server = "https://ghcr.io"\n\n[host."https://other-mirror:5000"]\n  capabilities = ["pull"]\n'
    merged = ic.containerd_hosts_toml(existing, MIRROR, "https://ghcr.io")
    parsed = tomllib.loads(merged)
    assert list(parsed["host"]) == [f"http://{MIRROR}", "https://other-mirror:5000"]  # ours is tried first
    assert parsed["server"] == "https://ghcr.io"
    assert ic.containerd_hosts_toml(merged, MIRROR, "https://ghcr.io") == merged


def test_containerd_config_gets_config_path_or_keeps_it() -> None:
    cfg = tomllib.loads(ic.containerd_config_toml(None))
    assert cfg["plugins"]["io.containerd.grpc.v1.cri"]["registry"]["config_path"] == ic.CERTS_D
    with_table = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  foo = 1\n[other]\nx = 2\n'
    out = tomllib.loads(ic.containerd_config_toml(with_table))
    assert out["plugins"]["io.containerd.grpc.v1.cri"]["registry"] == {"foo": 1, "config_path": ic.CERTS_D}
    assert out["other"] == {"x": 2}
    custom = 'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/opt/certs.d"\n'
    assert ic.containerd_config_toml(custom) == custom
    assert ic.containerd_certs_dir(custom) == "/opt/certs.d"
    with pytest.raises(InvalidArgument):
        ic.containerd_config_toml("not = [toml")


def test_docker_daemon_json_merges() -> None:
    existing = json.dumps({"log-driver": "json-file", "registry-mirrors": ["https://m.example"]})
    out = json.loads(ic.docker_daemon_json(existing, MIRROR))
    assert out == {"log-driver": "json-file", "registry-mirrors": [f"http://{MIRROR}", "https://m.example"]}
    again = ic.docker_daemon_json(json.dumps(out), MIRROR)
    assert json.loads(again) == out
    with pytest.raises(InvalidArgument):
        ic.docker_daemon_json("[1]", MIRROR)


def test_podman_registries_conf_merges() -> None:
    existing = (
        'unqualified-search-registries = ["docker.io"]\n\n'
        '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n\n'
        '[[registry.mirror]]\nlocation = "other:5000"\n\n'
        '[[registry]]\nlocation = "quay.io"\n'
    )
    out = ic.podman_registries_conf(existing, ["docker.io", "ghcr.io"], MIRROR)
    data = tomllib.loads(out)
    assert data["unqualified-search-registries"] == ["docker.io"]
    by_loc = {r["location"]: r for r in data["registry"]}
    hub = f"{MIRROR}/damselfly__mirror/https/registry-1.docker.io"
    assert [m["location"] for m in by_loc["docker.io"]["mirror"]] == [hub, "other:5000"]
    assert by_loc["docker.io"]["mirror"][0]["insecure"] is True
    assert "mirror" not in by_loc["quay.io"]
    ghcr = f"{MIRROR}/damselfly__mirror/https/ghcr.io"
    assert [m["location"] for m in by_loc["ghcr.io"]["mirror"]] == [ghcr]
    assert ic.podman_registries_conf(out, ["docker.io", "ghcr.io"], MIRROR) == out


def test_cli_writes_under_root_and_is_idempotent(tmp_path: Path) -> None:
    runner = CliRunner()
    hosts = tmp_path / "etc/containerd/certs.d/docker.io/hosts.toml"
    hosts.parent.mkdir(parents=True)
    hosts.write_text('server = "https://registry-1.docker.io"\n')
    res = runner.invoke(app, ["init", "containerd", "--root", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert f"wrote {hosts}" in res.output and "+[host." in res.output
    assert (tmp_path / "etc/containerd/certs.d/_default/hosts.toml").exists()
    res = runner.invoke(app, ["init", "containerd", "--root", str(tmp_path)])
    assert res.exit_code == 0
    assert "wrote" not in res.output and f"unchanged {hosts}" in res.output
    res = runner.invoke(app, ["init", "docker", "--root", str(tmp_path), "--dry-run"])
    assert res.exit_code == 0 and "would write" in res.output
    assert not (tmp_path / "etc/docker/daemon.json").exists()
    res = runner.invoke(app, ["init", "nerdctl", "--root", str(tmp_path)])
    assert res.exit_code == 2


def test_ca_command_prints_a_stable_ca(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["ca", "--data-dir", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert first.output.startswith("-----BEGIN CERTIFICATE-----")
    second = runner.invoke(app, ["ca", "--data-dir", str(tmp_path)])
    assert second.output == first.output
    key = tmp_path / "proxy-ca" / "ca.key"
    assert key.stat().st_mode & 0o077 == 0  # the CA key is private
