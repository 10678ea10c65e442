"""skopeo pulls through the daemon's registry mirror; the registry serves each blob once."""

from __future__ import annotations

from pathlib import Path

from damselfly.testbed.registry import Image, Registry

from .harness import Swarm, assert_dir_image, registries_conf, skopeo_pull


def test_skopeo_pull_through_mirror(tmp_root: Path, registry: Registry, image: Image) -> None:
    swarm = Swarm(tmp_root / "swarm", registry, peers=1)
    try:
        conf = registries_conf(tmp_root / "registries.conf", registry.host, swarm.proxy(0))
        before = registry.blob_bytes()
        res = skopeo_pull(f"{registry.host}/team/app:v1", tmp_root / "out", conf)
        assert res.returncode == 0, res.stderr + swarm.logs()
        assert_dir_image(tmp_root / "out", image)
        # skopeo falls back to the registry silently: count what the registry sent.
        assert registry.blob_bytes() - before == image.blob_bytes, swarm.logs()
        # A second pull is served from the swarm's store: the registry sends no blob byte.
        res = skopeo_pull(f"{registry.host}/team/app:v1", tmp_root / "out2", conf)
        assert res.returncode == 0, res.stderr
        assert_dir_image(tmp_root / "out2", image)
        assert registry.blob_bytes() - before == image.blob_bytes
    finally:
        swarm.close()
