"""k3s: ``/etc/rancher/k3s/registries.yaml`` (``mirrors: REGISTRY: endpoint: [...]``).

k3s turns each endpoint into a containerd ``hosts.toml`` host; an endpoint with a
path is used as given (containerd's ``override_path``), so the daemon's endpoint
names the registry in its path and the mirror needs no header:
``http://127.0.0.1:4001/v2/damselfly__mirror/https/ghcr.io``. The mirror goes first;
other endpoints, ``configs`` and other registries are kept (YAML comments are not).
"""

from __future__ import annotations

from typing import Any

import yaml

from ...daemon.proxy.mirror import PATH_MARKER
from ...errors import InvalidArgument
from .containers import mirror_location


def mirror_endpoint(mirror: str, registry: str) -> str:
    return f"http://{mirror_location(mirror, registry).replace('/', '/v2/', 1)}"


def registries_yaml(existing: str | None, registries: list[str], mirror: str) -> str:
    from . import registry_host

    try:
        data: Any = yaml.safe_load(existing or "") or {}
    except yaml.YAMLError as e:
        raise InvalidArgument(f"registries.yaml is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise InvalidArgument("registries.yaml must hold a mapping (mirrors:, configs:)")
    mirrors = data.setdefault("mirrors", {}) or {}
    if not isinstance(mirrors, dict):
        raise InvalidArgument("registries.yaml: 'mirrors' must be a mapping")
    data["mirrors"] = mirrors
    ours_prefix = f"http://{mirror}/"
    for reg in registries:
        entry = mirrors.setdefault(registry_host(reg), {}) or {}
        if not isinstance(entry, dict):
            raise InvalidArgument(f"registries.yaml: mirrors.{registry_host(reg)} must be a mapping")
        endpoints = entry.get("endpoint") or []
        if not isinstance(endpoints, list):
            raise InvalidArgument(f"registries.yaml: mirrors.{registry_host(reg)}.endpoint must be a list")
        kept = [
            e for e in endpoints
            if not (isinstance(e, str) and (e.rstrip("/") == ours_prefix.rstrip("/")
                                            or e.startswith(f"{ours_prefix}v2/{PATH_MARKER}/")))
        ]  # fmt: skip
        entry["endpoint"] = [mirror_endpoint(mirror, reg), *kept]
        mirrors[registry_host(reg)] = entry
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
