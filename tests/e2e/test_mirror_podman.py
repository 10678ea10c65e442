"""podman pulls through the mirror configured with CONTAINERS_REGISTRIES_CONF."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from damselfly.testbed.registry import Image, Registry

from .harness import Swarm, blob_log, need, registries_conf


def podman(root: Path, conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CONTAINERS_REGISTRIES_CONF=str(conf))
    argv = [
        "podman", "--root", str(root / "graph"), "--runroot", str(root / "run"), "--storage-driver", "vfs",
        "--events-backend", "file", "--cgroup-manager", "cgroupfs", "--tmpdir", str(root / "tmp"), *args,
    ]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)


def test_podman_pull_through_mirror(tmp_root: Path, registry: Registry, image: Image) -> None:
    need("podman")
    root = tmp_root / "podman"
    root.mkdir()
    (tmp_root / "none.conf").write_text("")
    probe = podman(root, tmp_root / "none.conf", "info", "--format", "{{.Store.GraphDriverName}}")
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run in this sandbox: {probe.stderr.strip()[-300:]}")
    swarm = Swarm(tmp_root / "swarm", registry, peers=1)
    try:
        conf = registries_conf(tmp_root / "registries.conf", registry.host, swarm.proxy(0))
        before = registry.blob_bytes()
        ref = f"{registry.host}/team/app:v1"
        res = podman(root, conf, "pull", "--quiet", ref)
        assert res.returncode == 0, res.stderr + swarm.logs()
        inspect = podman(root, conf, "image", "inspect", ref)
        assert inspect.returncode == 0, inspect.stderr
        info = json.loads(inspect.stdout)[0]
        assert info["Digest"] == image.manifest.digest
        assert len(info["RootFS"]["Layers"]) == len(image.layers)
        assert all(swarm.holds_blob(0, b.digest) for b in image.blobs), swarm.logs()
        assert registry.blob_bytes() - before == image.blob_bytes, blob_log(registry) + swarm.logs()
    finally:
        swarm.close()
        podman(root, tmp_root / "none.conf", "system", "reset", "--force")
