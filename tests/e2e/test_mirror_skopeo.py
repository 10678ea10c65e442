"""skopeo pulls through the daemon's registry mirror; the registry serves each blob once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from damselfly.testbed.registry import Image, Registry

from .harness import Swarm, assert_dir_image, blob_log, registries_conf, skopeo_pull


def test_skopeo_pull_through_mirror(tmp_root: Path, registry: Registry, image: Image) -> None:
    swarm = Swarm(tmp_root / "swarm", registry, peers=1)
    try:
        conf = registries_conf(tmp_root / "registries.conf", registry.host, swarm.proxy(0))
        before = registry.blob_bytes()
        res = skopeo_pull(f"{registry.host}/team/app:v1", tmp_root / "out", conf)
        assert res.returncode == 0, res.stderr + swarm.logs()
        assert_dir_image(tmp_root / "out", image)
        assert all(swarm.holds_blob(0, b.digest) for b in image.blobs)
        # skopeo falls back to the registry silently: count what the registry sent.
        assert registry.blob_bytes() - before == image.blob_bytes, blob_log(registry) + swarm.logs()
        # A second pull is served from the swarm's store: the registry sends no blob byte.
        res = skopeo_pull(f"{registry.host}/team/app:v1", tmp_root / "out2", conf)
        assert res.returncode == 0, res.stderr
        assert_dir_image(tmp_root / "out2", image)
        assert registry.blob_bytes() - before == image.blob_bytes, blob_log(registry) + swarm.logs()
    finally:
        swarm.close()


@pytest.mark.parametrize("seed", [True, False], ids=["seed-peer", "no-seed-peer"])
def test_three_daemons_pull_at_once_registry_serves_each_blob_once(
    tmp_root: Path, registry: Registry, image: Image, seed: bool
) -> None:
    # Without a seed peer one daemon goes back to the registry and the others take the
    # blob from it: still once.
    swarm = Swarm(tmp_root / "swarm", registry, peers=3, seed=seed)
    try:
        before = registry.blob_bytes()
        procs = []
        for i in range(3):
            conf = registries_conf(tmp_root / f"r{i}.conf", registry.host, swarm.proxy(i))
            argv = ["skopeo", "--registries-conf", str(conf), "copy", "--quiet",
                    f"docker://{registry.host}/team/app:v1", f"dir:{tmp_root / f'out{i}'}",
                    "--src-tls-verify=false"]  # fmt: skip
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err + swarm.logs()
        for i in range(3):
            assert_dir_image(tmp_root / f"out{i}", image)
            assert all(swarm.holds_blob(i, b.digest) for b in image.blobs)
        assert registry.blob_bytes() - before == image.blob_bytes, blob_log(registry) + swarm.logs()
    finally:
        swarm.close()
