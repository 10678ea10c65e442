"""``damselfly init`` against the engines' real files: containerd's own default configs (1.6 as the
installed containerd writes it, 1.7 and 2.1 as those versions write them), k3s, CRI-O; the
results read back by containerd and podman themselves where they are installed."""

from __future__ import annotations

import difflib
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from tests.helpers.processes import short_tempdir
from typer.testing import CliRunner

from damselfly.cli import init_cmd as ic
from damselfly.cli.engines.containerd import containerd_config_toml
from damselfly.cli.engines.containers import registries_conf
from damselfly.cli.engines.k3s import registries_yaml
from damselfly.cli.main import app
from damselfly.errors import InvalidArgument

DATA = Path(__file__).parent / "data"
MIRROR = "127.0.0.1:4001"
V2 = ("plugins", "io.containerd.grpc.v1.cri", "registry")
V3 = ("plugins", "io.containerd.cri.v1.images", "registry")
TRANSFER = ("plugins", "io.containerd.transfer.v1.local")


def _at(data: dict[str, object], path: tuple[str, ...]) -> object:
    node: object = data
    for key in path:
        assert isinstance(node, dict), path
        node = node[key]
    return node


def _changed_lines(old: str, new: str) -> list[str]:
    return [
        line for line in difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["containerd-1.6-default.toml", "containerd-1.7-default.toml"])
def test_containerd_1x_default_config_gets_only_config_path(name: str) -> None:
    old = (DATA / name).read_text()
    new = containerd_config_toml(old)
    assert _changed_lines(old, new) == ['-      config_path = ""', f'+      config_path = "{ic.CERTS_D}"']
    data = tomllib.loads(new)
    assert _at(data, V2) == {
        "config_path": ic.CERTS_D,
        "auths": {},
        "configs": {},
        "headers": {},
        "mirrors": {},
    }
    assert containerd_config_toml(new) == new
    assert ic.containerd_certs_dir(new) == ic.CERTS_D


def test_containerd_2x_default_config_uses_the_v3_tables_only() -> None:
    old = (DATA / "containerd-2.1-default.toml").read_text()
    new = containerd_config_toml(old)
    assert _changed_lines(old, new) == [
        "-      config_path = ''", f"+      config_path = '{ic.CERTS_D}'",
        "-    config_path = ''", f"+    config_path = '{ic.CERTS_D}'",
    ]  # fmt: skip
    data = tomllib.loads(new)
    assert _at(data, V3) == {"config_path": ic.CERTS_D}
    assert _at(data, TRANSFER)["config_path"] == ic.CERTS_D  # type: ignore[index]
    # Never the 1.x section in a version 3 file (containerd 2.x would ignore it).
    assert "registry" not in _at(data, ("plugins", "io.containerd.grpc.v1.cri"))  # type: ignore[operator]
    assert containerd_config_toml(new) == new


def test_containerd_config_keeps_comments_unknown_keys_and_a_set_path() -> None:
    old = (
        (DATA / "containerd-2.1-default.toml")
        .read_text()
        .replace("[cgroup]", "# ops: keep this note\n[cgroup]\n  my_own_key = 'x'", 1)
    )
    new = containerd_config_toml(old)
    assert "# ops: keep this note" in new and "my_own_key = 'x'" in new
    # A path the operator set is kept; the transfer service gets its first directory only.
    custom = old.replace(
        "[plugins.'io.containerd.cri.v1.images'.registry]\n      config_path = ''",
        "[plugins.'io.containerd.cri.v1.images'.registry]\n"
        "      config_path = '/opt/certs.d:/etc/docker/certs.d'",
    )
    out = tomllib.loads(containerd_config_toml(custom))
    assert _at(out, V3) == {"config_path": "/opt/certs.d:/etc/docker/certs.d"}
    assert _at(out, TRANSFER)["config_path"] == "/opt/certs.d"  # type: ignore[index]
    assert ic.containerd_certs_dir(containerd_config_toml(custom)) == "/opt/certs.d"


def test_containerd_config_versions_new_legacy_and_bad() -> None:
    assert _at(tomllib.loads(containerd_config_toml(None)), V2) == {"config_path": ic.CERTS_D}
    fresh3 = containerd_config_toml("# written by hand\n", new_version=3)
    assert fresh3.startswith("version = 3\n# written by hand\n")
    assert _at(tomllib.loads(fresh3), V3) == {"config_path": ic.CERTS_D}
    # No version key but tables: containerd 1.x reads it as version 1 (plugins by short name).
    legacy = containerd_config_toml('[plugins.cri]\n  sandbox_image = "pause:3.6"\n')
    assert _at(tomllib.loads(legacy), ("plugins", "cri", "registry")) == {"config_path": ic.CERTS_D}
    with pytest.raises(InvalidArgument, match="version 4"):
        containerd_config_toml("version = 4\n")
    with pytest.raises(InvalidArgument, match="not valid TOML"):
        containerd_config_toml("not = [toml")


@pytest.mark.skipif(
    shutil.which("containerd") is None, reason="containerd not installed (.ci/run installs it)"
)
def test_installed_containerd_reads_the_config_init_writes(tmp_path: Path) -> None:
    default = subprocess.run(["containerd", "config", "default"], capture_output=True, text=True, check=True)
    written = tmp_path / "config.toml"
    written.write_text(containerd_config_toml(default.stdout))
    dump = subprocess.run(
        ["containerd", "--config", str(written), "config", "dump"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert dump.returncode == 0, dump.stderr
    assert _at(tomllib.loads(dump.stdout), V2)["config_path"] == ic.CERTS_D  # type: ignore[index]
    assert ic.installed_containerd_major() in (1, 2)


def test_hosts_toml_keeps_comments_and_other_hosts() -> None:
    old = (
        '# ours too\nserver = "https://ghcr.io"\n\n'
        '[host."https://m:5000"]\n  capabilities = ["pull"]  # fast\n'
    )
    new = ic.containerd_hosts_toml(old, MIRROR, "https://ghcr.io")
    assert "# ours too" in new and "# fast" in new
    assert list(tomllib.loads(new)["host"]) == [f"http://{MIRROR}", "https://m:5000"]
    # An entry of ours naming another registry is corrected, not kept.
    fixed = ic.containerd_hosts_toml(
        new.replace('https://ghcr.io"]', 'https://wrong.io"]'), MIRROR, "https://ghcr.io"
    )
    assert tomllib.loads(fixed)["host"][f"http://{MIRROR}"]["header"]["X-Dragonfly-Registry"] == [
        "https://ghcr.io"
    ]


def test_k3s_registries_yaml() -> None:
    old = (
        "mirrors:\n  docker.io:\n    endpoint:\n      - https://m.example\n"
        "  quay.io:\n    endpoint: [https://q.example]\n"
        "configs:\n  m.example:\n    auth: {username: u, password: p}\n"
    )
    new = registries_yaml(old, ["docker.io", "http://10.0.0.5:5000"], MIRROR)
    data = yaml.safe_load(new)
    assert data["mirrors"]["docker.io"]["endpoint"] == [
        f"http://{MIRROR}/v2/damselfly__mirror/https/registry-1.docker.io", "https://m.example"
    ]  # fmt: skip
    assert data["mirrors"]["10.0.0.5:5000"]["endpoint"] == [
        f"http://{MIRROR}/v2/damselfly__mirror/http/10.0.0.5_5000"
    ]
    assert data["mirrors"]["quay.io"] == {"endpoint": ["https://q.example"]}
    assert data["configs"] == {"m.example": {"auth": {"username": "u", "password": "p"}}}
    assert registries_yaml(new, ["docker.io", "http://10.0.0.5:5000"], MIRROR) == new
    # An older endpoint of this mirror (no path: the daemon's default registry) is replaced.
    again = yaml.safe_load(
        registries_yaml("mirrors:\n  ghcr.io:\n    endpoint: [http://127.0.0.1:4001]\n", ["ghcr.io"], MIRROR)
    )
    assert again["mirrors"]["ghcr.io"]["endpoint"] == [f"http://{MIRROR}/v2/damselfly__mirror/https/ghcr.io"]
    with pytest.raises(InvalidArgument):
        registries_yaml("mirrors: [1, 2]\n", ["ghcr.io"], MIRROR)
    with pytest.raises(InvalidArgument):
        registries_yaml("mirrors: {a: [\n", ["ghcr.io"], MIRROR)


def test_registries_conf_replaces_an_older_mirror_of_ours_and_keeps_the_rest() -> None:
    old = (
        "# system file\n"
        '[[registry]]\nprefix = "ghcr.io"\nlocation = "ghcr.io"\n\n'
        # an earlier init's entry: no path, so the daemon's default registry (the wrong one)
        f'[[registry.mirror]]\nlocation = "{MIRROR}"\ninsecure = true\n\n'
        '[[registry.mirror]]\nlocation = "m.example/ghcr"\n'
    )
    new = registries_conf(old, ["ghcr.io"], MIRROR)
    entry = tomllib.loads(new)["registry"][0]
    assert [m["location"] for m in entry["mirror"]] == [
        f"{MIRROR}/damselfly__mirror/https/ghcr.io",
        "m.example/ghcr",
    ]
    assert new.startswith("# system file\n")
    plain = tomllib.loads(registries_conf(None, ["http://10.0.0.5:5000"], MIRROR))["registry"][0]
    assert plain["insecure"] is True and plain["prefix"] == "10.0.0.5:5000"
    with pytest.raises(InvalidArgument):
        registries_conf(None, ["http://[::1]:5000"], MIRROR)


def test_cli_crio_drop_in_k3s_and_docker_notes(tmp_path: Path) -> None:
    runner = CliRunner()
    system = tmp_path / "etc/containers/registries.conf"
    system.parent.mkdir(parents=True)
    system.write_text(
        '[[registry]]\nprefix = "ghcr.io"\nlocation = "ghcr.io"\n\n'
        '[[registry.mirror]]\nlocation = "m.example"\n'
    )
    res = runner.invoke(app, ["init", "crio", "--root", str(tmp_path), "--registry", "ghcr.io"])
    assert res.exit_code == 0, res.output
    drop_in = tmp_path / "etc/containers/registries.conf.d/damselfly.conf"
    entry = tomllib.loads(drop_in.read_text())["registry"][0]
    # The drop-in replaces the system file's ghcr.io entry: it carries that entry's mirror on.
    assert [m["location"] for m in entry["mirror"]] == [
        f"{MIRROR}/damselfly__mirror/https/ghcr.io",
        "m.example",
    ]
    assert "systemctl reload crio" in res.output
    assert "m.example" in system.read_text() and "damselfly" not in system.read_text()  # untouched
    res = runner.invoke(app, ["init", "k3s", "--root", str(tmp_path), "--registry", "http://10.0.0.5:5000"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load((tmp_path / "etc/rancher/k3s/registries.yaml").read_text())["mirrors"][
        "10.0.0.5:5000"
    ]
    res = runner.invoke(
        app, ["init", "docker", "--root", str(tmp_path), "--registry", "docker.io", "--registry", "ghcr.io"]
    )
    assert res.exit_code == 0, res.output
    assert "proxy.registryMirror.url" in res.output
    assert "ghcr.io: not mirrored for Docker" in res.output
    assert "docker.io: not mirrored" not in res.output


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed (.ci/run installs it)")
def test_podman_reads_the_registries_conf_init_writes() -> None:
    tmp_path = short_tempdir("dfinit-")  # podman wants a short runroot
    try:
        _podman_reads(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _podman_reads(tmp_path: Path) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(registries_conf(None, ["http://127.0.0.1:5000", "ghcr.io"], MIRROR))
    env = dict(os.environ, CONTAINERS_REGISTRIES_CONF=str(conf))
    argv = [
        "podman", "--root", str(tmp_path / "g"), "--runroot", str(tmp_path / "r"), "--storage-driver", "vfs",
        "--events-backend", "file", "--cgroup-manager", "cgroupfs", "--tmpdir", str(tmp_path / "t"),
        "info", "--format", "{{json .Registries}}",
    ]  # fmt: skip
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    if res.returncode != 0:
        pytest.skip(f"podman cannot run here: {res.stderr.strip()[-200:]}")
    import json

    regs = json.loads(res.stdout)
    assert [m["Location"] for m in regs["127.0.0.1:5000"]["Mirrors"]] == [
        f"{MIRROR}/damselfly__mirror/http/127.0.0.1_5000"
    ]
    assert regs["127.0.0.1:5000"]["Insecure"] is True
    assert [m["Location"] for m in regs["ghcr.io"]["Mirrors"]] == [
        f"{MIRROR}/damselfly__mirror/https/ghcr.io"
    ]
