"""containerd (ctr) pulls through the mirror with a hosts.toml; HEAD by tag, GET by digest, ?ns=."""

from __future__ import annotations

from pathlib import Path

from damselfly.testbed.registry import Image, Registry

from .containerd import Containerd, hosts_dir
from .harness import Swarm, blob_log


def test_containerd_pull_through_mirror(
    tmp_root: Path, registry: Registry, image: Image, containerd: Containerd
) -> None:
    swarm = Swarm(tmp_root / "swarm", registry, peers=1)
    try:
        hosts = hosts_dir(tmp_root / "certs.d", registry.host, registry.url, swarm.proxy(0))
        before = registry.blob_bytes()
        ref = f"{registry.host}/team/app:v1"
        res = containerd.ctr("images", "pull", "--hosts-dir", str(hosts), "--snapshotter", "native", ref)
        assert res.returncode == 0, res.stderr + res.stdout + swarm.logs()
        content = containerd.ctr("content", "ls", "-q")
        assert content.returncode == 0, content.stderr
        held = set(content.stdout.split())
        for blob in image.blobs:
            assert blob.digest in held, f"{blob.digest} not in containerd's content store"
            assert swarm.holds_blob(0, blob.digest), f"{blob.digest} did not go through the mirror"
        assert image.manifest.digest in held
        # All blob bytes came through the swarm, fetched from the registry once.
        assert registry.blob_bytes() - before == image.blob_bytes, blob_log(registry) + swarm.logs()
        mirror_log = (tmp_root / "swarm" / "logs" / "p0.log").read_text()
        assert "Authorization" not in mirror_log
    finally:
        swarm.close()


def test_containerd_default_hosts_uses_ns(
    tmp_root: Path, registry: Registry, image: Image, containerd: Containerd
) -> None:
    """``_default/hosts.toml`` without a header: the mirror learns the registry from containerd's ?ns=."""
    swarm = Swarm(tmp_root / "swarm", registry, peers=1)
    try:
        d = tmp_root / "certs.d" / "_default"
        d.mkdir(parents=True)
        mirror = swarm.proxy(0)
        (d / "hosts.toml").write_text(f'[host."http://{mirror}"]\n  capabilities = ["pull", "resolve"]\n')
        before = registry.blob_bytes()
        ref = f"{registry.host}/team/app:v1"
        res = containerd.ctr(
            "images", "pull", "--hosts-dir", str(tmp_root / "certs.d"), "--snapshotter", "native", ref
        )
        assert res.returncode == 0, res.stderr + res.stdout + swarm.logs()
        assert all(swarm.holds_blob(0, b.digest) for b in image.blobs), swarm.logs()
        assert registry.blob_bytes() - before == image.blob_bytes, blob_log(registry) + swarm.logs()
    finally:
        swarm.close()
