"""A private registry (TLS with its own CA, htpasswd): credentials pass, their absence fails as direct."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from damselfly.testbed.registry import Registry, build_image, start_registry

from .harness import Swarm, assert_dir_image, auth_file, blob_log, need, registries_conf, skopeo_pull

USER, PASSWORD = "alice", "s3cret-pw"


@pytest.fixture
def private(tmp_root: Path) -> Iterator[Registry]:
    need("docker-registry", "skopeo", "htpasswd")
    reg = start_registry(tmp_root / "private", tls=True, user=USER, password=PASSWORD)
    yield reg
    reg.stop()


def test_private_registry_through_the_mirror(tmp_root: Path, private: Registry) -> None:
    image = build_image(tmp_root / "layout", [2 * 1024 * 1024, 1024 * 1024], tag="v1")
    private.push(image, "secret/app")
    assert private.ca_cert is not None
    cert_dir = private.ca_cert.parent
    swarm = Swarm(tmp_root / "swarm", private, peers=1)
    try:
        conf = registries_conf(tmp_root / "r.conf", private.host, swarm.proxy(0), registry_insecure=False)
        ref = f"{private.host}/secret/app:v1"
        # Without credentials: refused through the mirror, as it is directly.
        direct = skopeo_pull(ref, tmp_root / "d0", None, cert_dir=cert_dir)
        mirrored = skopeo_pull(ref, tmp_root / "m0", conf, cert_dir=cert_dir)
        assert direct.returncode != 0 and mirrored.returncode != 0
        assert "unauthorized" in mirrored.stderr.lower() or "authentication" in mirrored.stderr.lower()
        assert private.blob_bytes() == 0
        # With credentials: pulled through the swarm.
        auth = auth_file(tmp_root / "auth.json", USER, PASSWORD, private.host, swarm.proxy(0))
        res = skopeo_pull(ref, tmp_root / "m1", conf, cert_dir=cert_dir, authfile=auth)
        assert res.returncode == 0, res.stderr + swarm.logs()
        assert_dir_image(tmp_root / "m1", image)
        assert all(swarm.holds_blob(0, b.digest) for b in image.blobs), swarm.logs()
        assert private.blob_bytes() == image.blob_bytes, blob_log(private) + swarm.logs()
        # The password never reaches a log: not the peer's, the seed's or the scheduler's.
        for log in (tmp_root / "swarm" / "logs").glob("*.log"):
            assert PASSWORD not in log.read_text(), log
    finally:
        swarm.close()
