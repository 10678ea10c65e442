"""``registries.conf`` (containers-registries.conf(5), v2): podman, skopeo, buildah and CRI-O.

These clients send no registry header, so the mirror ``location`` names the
registry in its path (:func:`damselfly.daemon.proxy.mirror.mirror_path`)::

    [[registry]]
    prefix = "10.0.0.5:5000"
    location = "10.0.0.5:5000"
    insecure = true                 # the registry itself speaks plain HTTP

    [[registry.mirror]]
    location = "127.0.0.1:4001/damselfly__mirror/http/10.0.0.5_5000"
    insecure = true                 # the daemon's mirror listens on plain HTTP

A pull of ``10.0.0.5:5000/team/app:v1`` then asks the mirror for
``/v2/damselfly__mirror/http/10.0.0.5_5000/team/app/manifests/v1``, which the
daemon sends to ``http://10.0.0.5:5000`` and nowhere else. Mirror entries an
earlier ``init`` wrote for the same mirror address are replaced.
"""

from __future__ import annotations

from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT

from ...daemon.proxy.mirror import PATH_MARKER, mirror_path
from ...errors import InvalidArgument
from . import registry_host, registry_server


def mirror_location(mirror: str, registry: str) -> str:
    """The ``[[registry.mirror]]`` location naming ``registry`` on the daemon at ``mirror``."""
    return f"{mirror}/{mirror_path(registry_server(registry))}"


def _ours(location: object, mirror: str) -> bool:
    if not isinstance(location, str):
        return False
    return location == mirror or location.startswith(f"{mirror}/{PATH_MARKER}/")


def _entry_for(entries: list[Any], host: str) -> Any:
    for entry in entries:
        if entry.get("prefix", entry.get("location")) == host:
            return entry
    return None


def registries_conf(
    existing: str | None, registries: list[str], mirror: str, *, base: str | None = None
) -> str:
    """registries.conf with the mirror first for each registry; everything else kept.

    ``base``: a file whose entries this one overrides (CRI-O's drop-in over
    ``/etc/containers/registries.conf``): a registry it has but ``existing`` lacks
    starts from its entry, so the drop-in keeps that entry's other mirrors and settings.
    """
    try:
        doc = tomlkit.parse(existing or "")
        base_entries = list(tomlkit.parse(base).get("registry", [])) if base else []
    except TOMLKitError as e:
        raise InvalidArgument(f"registries.conf is not valid TOML: {e}") from e
    entries = doc.get("registry")
    parsed = entries is not None  # tomlkit separates tables it made itself, not parsed ones
    if entries is None:
        entries = tomlkit.aot()
        doc.append("registry", entries)
    if not isinstance(entries, AoT):
        raise InvalidArgument("registries.conf: 'registry' must be an array of tables ([[registry]])")
    for reg in registries:
        host = registry_host(reg)
        ours = tomlkit.table()
        ours["location"] = mirror_location(mirror, reg)
        ours["insecure"] = True
        entry = _entry_for(list(entries), host)
        if entry is None:
            entry = tomlkit.table()
            template = _entry_for(base_entries, host)
            for key, value in (template or {}).items():
                entry[key] = value
            if template is None:
                entry["prefix"] = host
                entry["location"] = host
                if registry_server(reg).startswith("http://"):
                    entry["insecure"] = True  # so that a fall-back to the registry speaks HTTP too
            if parsed and len(entries) and not entries[-1].as_string().endswith("\n\n"):
                entries[-1].add(tomlkit.nl())  # a blank line between tables, as people write them
            entries.append(entry)
            entry = entries[-1]
        old = list(entry.get("mirror", []))
        first_is_ours = bool(old) and old[0].get("location") == ours["location"]
        if first_is_ours and sum(_ours(m.get("location"), mirror) for m in old) == 1:
            continue  # already first, and the only one of ours
        mirrors = tomlkit.aot()
        mirrors.append(ours)
        for m in old:
            if not _ours(m.get("location"), mirror):
                mirrors.append(m)
        entry["mirror"] = mirrors
    return tomlkit.dumps(doc)
