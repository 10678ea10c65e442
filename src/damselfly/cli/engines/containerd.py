"""containerd: ``config.toml`` (``config_path`` for the CRI registry) and ``certs.d/*/hosts.toml``.

Where ``config_path`` lives depends on the config's schema version, which
containerd reads from the file's ``version`` key:

* ``version = 3`` (containerd 2.x): ``plugins."io.containerd.cri.v1.images".registry``,
  and ``plugins."io.containerd.transfer.v1.local"`` (the transfer service pulls for
  CRI in 2.x and reads its own ``config_path``);
* ``version = 2`` (containerd 1.x): ``plugins."io.containerd.grpc.v1.cri".registry``;
* no version (1, containerd 1.x's legacy form): ``plugins.cri.registry``; a file that
  holds no table yet gets the installed containerd's current version instead.

A ``config_path`` already set is kept (hosts files go to its first directory).
"""

from __future__ import annotations

from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import Table

from ...errors import InvalidArgument

CERTS_D = "/etc/containerd/certs.d"
REGISTRY_HEADER = "X-Dragonfly-Registry"

# version -> the tables (key paths) whose config_path names the hosts directory
_CONFIG_PATHS: dict[int, list[tuple[str, ...]]] = {
    1: [("plugins", "cri", "registry")],
    2: [("plugins", "io.containerd.grpc.v1.cri", "registry")],
    3: [
        ("plugins", "io.containerd.cri.v1.images", "registry"),
        ("plugins", "io.containerd.transfer.v1.local"),
    ],
}


def _parse(text: str, what: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except TOMLKitError as e:
        raise InvalidArgument(f"{what} is not valid TOML: {e}") from e


def _table(parent: Any, key: str, what: str) -> Any:
    """``parent[key]``, made (as a table whose header names only its leaves) when missing."""
    if key not in parent:
        parent[key] = tomlkit.table(is_super_table=True)
    child = parent[key]
    if not isinstance(child, dict):
        raise InvalidArgument(f"{what}: {key!r} is not a table")
    return child


def config_version(doc: Any) -> int:
    version = doc.get("version", 1)
    if not isinstance(version, int) or version not in _CONFIG_PATHS:
        raise InvalidArgument(f"containerd config.toml: version {version!r} is not 1, 2 or 3")
    return int(version)


def containerd_config_toml(existing: str | None, certs_dir: str = CERTS_D, *, new_version: int = 2) -> str:
    """config.toml with ``config_path`` set where its version reads it (kept if already set).

    ``new_version``: the schema for a file that has no table yet (2 for containerd 1.x,
    3 for 2.x: what the installed containerd writes itself).
    """
    text = existing or ""
    doc = _parse(text, "containerd config.toml")
    if "version" not in doc and not any(isinstance(v, Table) for v in doc.values()):
        doc = _parse(f"version = {new_version}\n{text}", "containerd config.toml")
    version = config_version(doc)
    current = ""
    for path in _CONFIG_PATHS[version]:
        node: Any = doc
        for key in path:
            node = _table(node, key, "containerd config.toml")
        value = node.get("config_path", "")
        if not isinstance(value, str):
            raise InvalidArgument(f"containerd config.toml: {'.'.join(path)}.config_path is not a string")
        if value:
            current = current or value
            continue
        # One directory: the 2.x transfer service ignores a ':'-separated list.
        node["config_path"] = tomlkit.string((current or certs_dir).split(":")[0], literal=version == 3)
        current = current or certs_dir
    return tomlkit.dumps(doc)


def containerd_certs_dir(config_text: str | None) -> str:
    """The hosts directory a config names (the first of a ``:``-separated list), else the default."""
    if config_text:
        try:
            doc = tomlkit.parse(config_text)
            node: Any = doc
            for key in _CONFIG_PATHS[config_version(doc)][0]:
                node = node.get(key, {})
            value = node.get("config_path", "")
        except (TOMLKitError, InvalidArgument, AttributeError):
            return CERTS_D
        if isinstance(value, str) and value:
            return value.split(":")[0]
    return CERTS_D


def containerd_hosts_toml(existing: str | None, mirror: str, registry_url: str | None) -> str:
    """hosts.toml with the mirror as the first host; ``server``, other hosts and comments kept.

    ``registry_url`` names the registry in ``X-Dragonfly-Registry`` (None for ``_default``,
    where the mirror learns it from containerd's ``?ns=``).
    """
    text = existing or ""
    doc = _parse(text, "hosts.toml")
    if registry_url and "server" not in doc:
        doc = _parse(f"server = {tomlkit.string(registry_url).as_string()}\n{text}", "hosts.toml")
    key = f"http://{mirror}"
    ours = tomlkit.table()
    ours["capabilities"] = ["pull", "resolve"]
    if registry_url:
        header = tomlkit.table()
        header[REGISTRY_HEADER] = [registry_url]
        ours["header"] = header
    hosts = doc.get("host")
    if hosts is not None and not isinstance(hosts, dict):
        raise InvalidArgument("hosts.toml: 'host' is not a table")
    old = hosts.get(key) if hosts else None
    if old is not None and old.get("header", {}).get(REGISTRY_HEADER) == ours.get("header", {}).get(
        REGISTRY_HEADER
    ):
        return tomlkit.dumps(doc)  # already ours, as it should be: left as it is
    merged = tomlkit.table(is_super_table=True)
    merged.add(key, ours)
    for name, table in (hosts or {}).items():
        if name != key:
            merged.add(name, table)
    if hosts is not None:
        doc.remove("host")
    doc.add("host", merged)
    return tomlkit.dumps(doc)
