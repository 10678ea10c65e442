"""``damselfly init containerd|docker|podman|crio|k3s``: point a container engine at the daemon's mirror.

Writes the engine's own configuration, merged with what is there (comments,
order and keys it does not know kept: :mod:`.engines`), and prints a diff of
every file it changed. Each registry named with ``--registry`` (default
``docker.io``; ``host:port`` for HTTPS, ``http://host:port`` for plain HTTP)
reaches that registry and only it through the mirror:

* containerd: ``/etc/containerd/certs.d/<registry>/hosts.toml`` (and
  ``_default``), the mirror as the first host and ``X-Dragonfly-Registry``
  naming the registry (``_default``: containerd's ``?ns=`` names it);
  ``config_path`` in ``/etc/containerd/config.toml`` where its ``version`` reads
  it (2: containerd 1.x, 3: containerd 2.x; a new file gets the installed one's).
* podman (and skopeo, buildah): ``[[registry.mirror]]`` in
  ``/etc/containers/registries.conf``; CRI-O: the same in the drop-in
  ``/etc/containers/registries.conf.d/damselfly.conf``. These clients send no
  header, so the mirror location carries the registry in its path:
  ``127.0.0.1:4001/damselfly__mirror/<scheme>/<host>[_<port>]`` (``:`` written
  ``_``; the daemon asks ``<scheme>://<host>[:<port>]`` for ``/v2/<repository>/...``;
  ``damselfly__mirror`` is reserved, see docs/PROTOCOL.md).
* k3s: ``/etc/rancher/k3s/registries.yaml``, an endpoint with the same path
  (``http://127.0.0.1:4001/v2/damselfly__mirror/...``).
* docker: ``registry-mirrors`` in ``/etc/docker/daemon.json``. Docker uses mirrors
  for Docker Hub only and names no registry: its requests go to the daemon's
  ``proxy.registryMirror.url`` (Docker Hub by default); other registries are not
  mirrored for Docker, and ``init`` says so.

``--root`` writes under another root (tests, images being built). The file
contents are made by pure functions (text in, text out), tested without a disk.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgument
from .engines import registry_host, registry_server
from .engines.containerd import CERTS_D, containerd_certs_dir, containerd_config_toml, containerd_hosts_toml
from .engines.containers import registries_conf
from .engines.k3s import registries_yaml

__all__ = [
    "CERTS_D",
    "KINDS",
    "FileChange",
    "apply",
    "containerd_certs_dir",
    "containerd_config_toml",
    "containerd_hosts_toml",
    "docker_daemon_json",
    "plan",
    "podman_registries_conf",
    "registries_conf",
    "registries_yaml",
    "registry_host",
    "registry_server",
    "run_init",
]

KINDS = ("containerd", "docker", "podman", "crio", "k3s")
REGISTRIES_CONF = "/etc/containers/registries.conf"
CRIO_DROP_IN = "/etc/containers/registries.conf.d/damselfly.conf"
K3S_REGISTRIES = "/etc/rancher/k3s/registries.yaml"
DOCKER_HUB = "docker.io"


@dataclass
class FileChange:
    path: Path
    old: str | None
    new: str

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                (self.old or "").splitlines(keepends=True),
                self.new.splitlines(keepends=True),
                fromfile=str(self.path) if self.old is not None else "/dev/null",
                tofile=str(self.path),
            )
        )


def _check_mirror(mirror: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.\-]+:\d{1,5}", mirror):
        raise InvalidArgument(f"--proxy wants host:port, got {mirror!r}")
    return mirror


def podman_registries_conf(existing: str | None, registries: list[str], mirror: str) -> str:
    """registries.conf with the daemon's mirror first for each registry (see :mod:`.engines.containers`)."""
    return registries_conf(existing, registries, mirror)


# --------------------------------------------------------------------------- docker


def docker_daemon_json(existing: str | None, mirror: str) -> str:
    """daemon.json with ``http://mirror`` first in ``registry-mirrors``; other keys kept."""
    data: dict[str, object] = {}
    if existing and existing.strip():
        try:
            loaded = json.loads(existing)
        except ValueError as e:
            raise InvalidArgument(f"docker daemon.json is not valid JSON: {e}") from e
        if not isinstance(loaded, dict):
            raise InvalidArgument("docker daemon.json must hold a JSON object")
        data = loaded
    url = f"http://{mirror}"
    mirrors = data.get("registry-mirrors", [])
    if not isinstance(mirrors, list):
        raise InvalidArgument("registry-mirrors in daemon.json must be a list")
    if url in mirrors and existing is not None:
        return existing
    data["registry-mirrors"] = [url, *(m for m in mirrors if m != url)]
    return json.dumps(data, indent=2) + "\n"


def docker_notes(registries: list[str]) -> list[str]:
    """What ``init docker`` cannot do for these registries, one line each."""
    notes = [
        "Docker sends mirror requests for Docker Hub only and names no registry: they go to the "
        "daemon's proxy.registryMirror.url, which must be Docker Hub (the default, https://index.docker.io)."
    ]
    for reg in registries:
        if registry_host(reg) != DOCKER_HUB:
            notes.append(
                f"{registry_host(reg)}: not mirrored for Docker (Docker pulls it directly); "
                "use containerd, podman or CRI-O with `damselfly init`, or the HTTPS proxy."
            )
    return notes


# --------------------------------------------------------------------------- plan and apply


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _under(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


def installed_containerd_major() -> int | None:
    """The major version of the ``containerd`` on PATH, None when there is none or it will not say."""
    exe = shutil.which("containerd")
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10, check=False)
        out = res.stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\sv?(\d+)\.\d+", out)
    return int(m.group(1)) if m else None


def plan(
    kind: str, *, root: Path, mirror: str, registries: list[str], containerd_major: int | None = None
) -> list[FileChange]:
    """The files ``init kind`` writes, with their old and new contents.

    ``containerd_major``: the containerd a new config.toml is written for (default: the
    installed one, else 1.x).
    """
    mirror = _check_mirror(mirror)
    for reg in registries:
        registry_server(reg)
    if kind == "containerd":
        cfg_path = _under(root, "/etc/containerd/config.toml")
        cfg_old = _read(cfg_path)
        major = containerd_major if containerd_major is not None else installed_containerd_major()
        cfg_new = containerd_config_toml(cfg_old, new_version=3 if (major or 1) >= 2 else 2)
        certs = containerd_certs_dir(cfg_new)
        changes = [FileChange(cfg_path, cfg_old, cfg_new)]
        for reg in registries:
            p = _under(root, f"{certs}/{registry_host(reg)}/hosts.toml")
            old = _read(p)
            changes.append(FileChange(p, old, containerd_hosts_toml(old, mirror, registry_server(reg))))
        p = _under(root, f"{certs}/_default/hosts.toml")
        old = _read(p)
        changes.append(FileChange(p, old, containerd_hosts_toml(old, mirror, None)))
        return changes
    if kind == "docker":
        p = _under(root, "/etc/docker/daemon.json")
        old = _read(p)
        return [FileChange(p, old, docker_daemon_json(old, mirror))]
    if kind == "podman":
        p = _under(root, REGISTRIES_CONF)
        old = _read(p)
        return [FileChange(p, old, registries_conf(old, registries, mirror))]
    if kind == "crio":
        p = _under(root, CRIO_DROP_IN)
        old = _read(p)
        base = _read(_under(root, REGISTRIES_CONF))
        return [FileChange(p, old, registries_conf(old, registries, mirror, base=base))]
    if kind == "k3s":
        p = _under(root, K3S_REGISTRIES)
        old = _read(p)
        return [FileChange(p, old, registries_yaml(old, registries, mirror))]
    raise InvalidArgument(f"unknown engine {kind!r}: use one of {', '.join(KINDS)}")


def apply(changes: list[FileChange]) -> None:
    for c in changes:
        if c.changed:
            c.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = c.path.with_name(c.path.name + ".damselfly-tmp")
            tmp.write_text(c.new)
            tmp.replace(c.path)


def next_steps(kind: str) -> str:
    return {
        "containerd": "Restart containerd (systemctl restart containerd); ctr needs --hosts-dir "
        "/etc/containerd/certs.d.",
        "docker": "Restart Docker (systemctl restart docker).",
        "podman": "Podman, skopeo and buildah read registries.conf on every run; nothing to restart.",
        "crio": "Reload CRI-O (systemctl reload crio) so that it reads registries.conf.d again.",
        "k3s": "Restart k3s (systemctl restart k3s, or k3s-agent): it writes containerd's hosts on start.",
    }[kind]


def run_init(kind: str, *, root: Path, mirror: str, registries: list[str], dry_run: bool = False) -> int:
    try:
        changes = plan(kind, root=root, mirror=mirror, registries=registries)
        if not dry_run:
            apply(changes)
    except (InvalidArgument, OSError) as e:
        print(f"damselfly init {kind}: {e}", file=sys.stderr)
        return 2
    for c in changes:
        if not c.changed:
            print(f"unchanged {c.path}")
            continue
        print(f"{'would write' if dry_run else 'wrote'} {c.path}")
        print(c.diff(), end="")
    if kind == "docker":
        for note in docker_notes(registries):
            print(f"note: {note}")
    if not dry_run and any(c.changed for c in changes):
        print(next_steps(kind))
    return 0
