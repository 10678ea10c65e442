"""``damselfly init containerd|docker|podman``: point a container engine at the daemon's mirror.

Writes the engine's own configuration, merged with what is there, and prints
a diff of every file it changed:

* containerd: ``/etc/containerd/certs.d/<registry>/hosts.toml`` (and
  ``_default``), with the mirror as the first host and ``X-Dragonfly-Registry``
  naming the registry; ``config_path`` in ``/etc/containerd/config.toml``.
* docker: ``registry-mirrors`` in ``/etc/docker/daemon.json`` (Docker uses
  mirrors for Docker Hub only).
* podman: a ``[[registry.mirror]]`` in ``/etc/containers/registries.conf``.
  Podman sends no registry header, so its mirror requests go to the daemon's
  default registry (``proxy.registryMirror.url``).

``--root`` writes under another root (tests, images being built). The file
contents are made by pure functions (text in, text out), tested without a disk.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgument

KINDS = ("containerd", "docker", "podman")
CERTS_D = "/etc/containerd/certs.d"
_CRI_REGISTRY = '[plugins."io.containerd.grpc.v1.cri".registry]'


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


def registry_server(registry: str) -> str:
    """``docker.io`` -> ``https://registry-1.docker.io``; ``host`` -> ``https://host``; URLs kept."""
    registry = registry.strip().rstrip("/")
    if "://" in registry:
        return registry
    if registry in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        return "https://registry-1.docker.io"
    return f"https://{registry}"


def registry_host(registry: str) -> str:
    """The name containerd and podman use for a registry (``docker.io``, ``host:port``)."""
    host = registry.split("://", 1)[-1].rstrip("/")
    return "docker.io" if host in ("index.docker.io", "registry-1.docker.io") else host


def _check_mirror(mirror: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9.\-]+:\d{1,5}", mirror):
        raise InvalidArgument(f"--proxy wants host:port, got {mirror!r}")
    return mirror


# --------------------------------------------------------------------------- containerd


def _host_block(mirror: str, registry_url: str | None) -> str:
    lines = [f'[host."http://{mirror}"]', '  capabilities = ["pull", "resolve"]']
    if registry_url:
        lines += [f'  [host."http://{mirror}".header]', f'    X-Dragonfly-Registry = ["{registry_url}"]']
    return "\n".join(lines) + "\n"


def containerd_hosts_toml(existing: str | None, mirror: str, registry_url: str | None) -> str:
    """hosts.toml with the mirror as the first host; other hosts and ``server`` kept."""
    block = _host_block(mirror, registry_url)
    if existing is None or not existing.strip():
        head = f'server = "{registry_url}"\n\n' if registry_url else ""
        return head + block
    if f'[host."http://{mirror}"]' in existing:
        return existing
    lines = existing.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if line.lstrip().startswith("[host.")), None)
    if first is None:
        text = existing if existing.endswith("\n") else existing + "\n"
        return text + "\n" + block
    return "".join(lines[:first]) + block + "\n" + "".join(lines[first:])


def containerd_config_toml(existing: str | None, certs_dir: str = CERTS_D) -> str:
    """config.toml with the CRI registry ``config_path`` set (kept if already set)."""
    if existing is None or not existing.strip():
        return f'version = 2\n\n{_CRI_REGISTRY}\n  config_path = "{certs_dir}"\n'
    try:
        data = tomllib.loads(existing)
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"containerd config.toml is not valid TOML: {e}") from e
    registry = data.get("plugins", {}).get("io.containerd.grpc.v1.cri", {}).get("registry")
    if isinstance(registry, dict) and registry.get("config_path"):
        return existing
    if isinstance(registry, dict):
        lines = existing.splitlines(keepends=True)
        for i, line in enumerate(lines):
            if line.strip() == _CRI_REGISTRY:
                lines.insert(i + 1, f'  config_path = "{certs_dir}"\n')
                return "".join(lines)
        raise InvalidArgument(
            "containerd config.toml sets the CRI registry in a form this tool cannot edit; "
            f'add config_path = "{certs_dir}" under {_CRI_REGISTRY} yourself'
        )
    text = existing if existing.endswith("\n") else existing + "\n"
    return text + f'\n{_CRI_REGISTRY}\n  config_path = "{certs_dir}"\n'


def containerd_certs_dir(config_text: str | None) -> str:
    if config_text:
        try:
            data = tomllib.loads(config_text)
        except tomllib.TOMLDecodeError:
            return CERTS_D
        reg = data.get("plugins", {}).get("io.containerd.grpc.v1.cri", {}).get("registry", {})
        if isinstance(reg, dict) and isinstance(reg.get("config_path"), str) and reg["config_path"]:
            return str(reg["config_path"]).split(":")[0]
    return CERTS_D


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


# --------------------------------------------------------------------------- podman


def _mirror_block(mirror: str) -> str:
    return f'[[registry.mirror]]\nlocation = "{mirror}"\ninsecure = true\n'


def podman_registries_conf(existing: str | None, registries: list[str], mirror: str) -> str:
    """registries.conf (v2) with the mirror first for each registry; everything else kept."""
    text = existing or ""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgument(f"registries.conf is not valid TOML: {e}") from e
    for reg in registries:
        host = registry_host(reg)
        entries = data.get("registry", [])
        match = next(
            (e for e in entries if e.get("prefix", e.get("location")) == host or e.get("location") == host),
            None,
        )
        if match is not None and any(m.get("location") == mirror for m in match.get("mirror", [])):
            continue
        if match is None:
            if text and not text.endswith("\n"):
                text += "\n"
            text += (
                ("\n" if text else "")
                + f'[[registry]]\nprefix = "{host}"\nlocation = "{host}"\n\n'
                + _mirror_block(mirror)
            )
        else:
            text = _insert_podman_mirror(text, host, mirror)
        data = tomllib.loads(text)
    return text


def _insert_podman_mirror(text: str, host: str, mirror: str) -> str:
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == "[[registry]]"]
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        for j in range(start + 1, end):
            s = lines[j].strip()
            if s.startswith("[") and s != "[[registry.mirror]]":
                end = j
                break
        block = "".join(lines[start:end])
        if not re.search(rf'^\s*(prefix|location)\s*=\s*"{re.escape(host)}"', block, re.M):
            continue
        first_mirror = next((j for j in range(start, end) if lines[j].strip() == "[[registry.mirror]]"), end)
        ours = _mirror_block(mirror) + "\n"
        if first_mirror == end and lines[end - 1 : end] and not lines[end - 1].endswith("\n"):
            lines[end - 1] += "\n"
        lines.insert(first_mirror, ours)
        return "".join(lines)
    raise InvalidArgument(f"cannot find the [[registry]] table of {host} in registries.conf")


# --------------------------------------------------------------------------- plan and apply


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _under(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


def plan(kind: str, *, root: Path, mirror: str, registries: list[str]) -> list[FileChange]:
    """The files ``init kind`` writes, with their old and new contents."""
    mirror = _check_mirror(mirror)
    if kind == "containerd":
        cfg_path = _under(root, "/etc/containerd/config.toml")
        cfg_old = _read(cfg_path)
        cfg_new = containerd_config_toml(cfg_old)
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
        p = _under(root, "/etc/containers/registries.conf")
        old = _read(p)
        return [FileChange(p, old, podman_registries_conf(old, registries, mirror))]
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
        "docker": "Restart Docker (systemctl restart docker). Docker mirrors Docker Hub only; "
        "for other registries use containerd or the HTTPS proxy.",
        "podman": "Podman reads registries.conf on every run; nothing to restart.",
    }[kind]


def run_init(kind: str, *, root: Path, mirror: str, registries: list[str], dry_run: bool = False) -> int:
    import sys

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
    if not dry_run and any(c.changed for c in changes):
        print(next_steps(kind))
    return 0
