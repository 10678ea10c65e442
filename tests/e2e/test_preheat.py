"""``damselfly preheat`` against a real docker-registry and a real swarm, then skopeo through the mirror.

What must hold: after ``preheat image``, a pull through a peer's mirror is
served from the swarm with zero registry blob bytes; a private registry
(TLS + htpasswd) preheats with credentials and refuses without; a manifest
list preheats only the asked platform; a missing tag fails clearly.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from damselfly import ids
from damselfly.testbed.registry import Image, Registry, build_image, start_registry
from damselfly.units import MiB

from .harness import Swarm, assert_dir_image, auth_file, need, registries_conf, skopeo_pull

USER, PASSWORD = "bob", "pre-heat-pw"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def preheat(swarm: Swarm, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run ``damselfly preheat ... --json`` against the swarm's scheduler: (exit code, JSON, stderr)."""
    port = next(c for c in swarm.children if c.name == "scheduler").ready["grpc_port"]
    argv = [sys.executable, "-m", "damselfly", "preheat", *args]
    argv += ["--scheduler", f"127.0.0.1:{port}", "--json", "--interval", "0.2"]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    try:
        doc = json.loads(res.stdout) if res.stdout.strip() else {}
    except ValueError:
        doc = {"raw": res.stdout}
    return res.returncode, doc, res.stderr


def holds(swarm: Swarm, name: str, task_id: str) -> bool:
    return (swarm.root / name / "tasks" / task_id[:3] / task_id).is_dir()


def test_preheat_image_then_pull_through_mirror_sends_no_registry_blob_bytes(
    tmp_root: Path, registry: Registry, image: Image
) -> None:
    swarm = Swarm(tmp_root / "swarm", registry, peers=1)
    try:
        code, doc, err = preheat(swarm, "image", f"{registry.host}/team/app:v1", "--plain-http")
        assert code == 0, err + swarm.logs()
        assert [t["name"] for t in doc["tasks"]] == [b.digest for b in image.blobs]
        for t, blob in zip(doc["tasks"], image.blobs, strict=True):
            assert t["task_id"] == blob.digest.removeprefix("sha256:")
            assert t["content_length"] == blob.size
            assert t["hosts"], t  # a seed host holds it
            assert holds(swarm, "seed", t["task_id"])
            assert not swarm.holds_blob(0, blob.digest)  # single_seed_peer: the peer was not asked
        # The seed fetched each blob once; progress was shown on stderr.
        assert registry.blob_bytes() == image.blob_bytes, swarm.logs()
        assert "tasks held" in err

        before = registry.blob_bytes()
        conf = registries_conf(tmp_root / "registries.conf", registry.host, swarm.proxy(0))
        res = skopeo_pull(f"{registry.host}/team/app:v1", tmp_root / "out", conf)
        assert res.returncode == 0, res.stderr + swarm.logs()
        assert_dir_image(tmp_root / "out", image)
        assert all(swarm.holds_blob(0, b.digest) for b in image.blobs), swarm.logs()
        assert registry.blob_bytes() - before == 0, swarm.logs()

        # Preheating again is cheap and still succeeds: the seed holds everything.
        code, doc, err = preheat(swarm, "image", f"{registry.host}/team/app:v1", "--plain-http")
        assert code == 0, err
        assert registry.blob_bytes() - before == 0
    finally:
        swarm.close()


def _put_index(registry: Registry, repo: str, tag: str, images: dict[str, Image]) -> None:
    """Push an OCI index over already pushed per-platform manifests (distribution checks they exist)."""
    manifests = []
    for platform, img in images.items():
        os_, arch = platform.split("/")
        manifests.append(
            {
                "mediaType": img.manifest.media_type,
                "digest": img.manifest.digest,
                "size": img.manifest.size,
                "platform": {"os": os_, "architecture": arch},
            }
        )
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
    req = urllib.request.Request(f"{registry.url}/v2/{repo}/manifests/{tag}", data=body, method="PUT")
    req.add_header("Content-Type", OCI_INDEX)
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 201


def test_manifest_list_preheats_only_the_platform_asked_and_a_missing_tag_fails(
    tmp_root: Path, registry: Registry
) -> None:
    amd = build_image(tmp_root / "amd", [1 * MiB], tag="v2-amd64")
    arm = build_image(tmp_root / "arm", [1 * MiB, 512 * 1024], tag="v2-arm64")
    registry.push(amd, "team/multi")
    registry.push(arm, "team/multi")
    _put_index(registry, "team/multi", "v2", {"linux/amd64": amd, "linux/arm64": arm})
    swarm = Swarm(tmp_root / "swarm", registry, peers=1)
    try:
        before = registry.blob_bytes()
        code, doc, err = preheat(
            swarm, "image", f"{registry.host}/team/multi:v2", "--plain-http", "--platform", "linux/arm64"
        )
        assert code == 0, err + swarm.logs()
        assert [t["name"] for t in doc["tasks"]] == [b.digest for b in arm.blobs]
        assert registry.blob_bytes() - before == arm.blob_bytes
        for blob in amd.blobs:
            assert registry.blob_bytes(blob.digest) == 0, blob
            assert not holds(swarm, "seed", blob.digest.removeprefix("sha256:"))

        # A platform the list lacks, and a tag the registry lacks: clear failures, nothing fetched.
        fetched = registry.blob_bytes()
        code, doc, err = preheat(
            swarm, "image", f"{registry.host}/team/multi:v2", "--plain-http", "--platform", "linux/s390x"
        )
        assert code == 4, err
        assert "linux/s390x" in doc["error"] and "linux/arm64" in doc["error"]
        code, doc, err = preheat(swarm, "image", f"{registry.host}/team/multi:nope", "--plain-http")
        assert code == 4, err
        assert "team/multi:nope not found" in doc["error"] and "MANIFEST_UNKNOWN" in doc["error"]
        assert "preheat failed" in err
        assert registry.blob_bytes() == fetched

        # A file preheat on all peers: both hosts hold the URL's task, the origin sent it once.
        url = f"{registry.url}/v2/team/multi/blobs/{amd.layers[0].digest}"
        code, doc, err = preheat(swarm, "file", url, "--scope", "all_peers")
        assert code == 0, err + swarm.logs()
        (task,) = doc["tasks"]
        assert task["task_id"] == ids.task_id(url)
        assert len(task["hosts"]) == 2, task
        assert holds(swarm, "seed", task["task_id"]) and holds(swarm, "p0", task["task_id"])
        assert registry.blob_bytes(amd.layers[0].digest) == amd.layers[0].size
    finally:
        swarm.close()


@pytest.fixture
def private(tmp_root: Path) -> Iterator[Registry]:
    need("docker-registry", "skopeo", "htpasswd")
    reg = start_registry(tmp_root / "private", tls=True, user=USER, password=PASSWORD)
    yield reg
    reg.stop()


def test_private_registry_preheat_with_credentials(tmp_root: Path, private: Registry) -> None:
    image = build_image(tmp_root / "layout", [1 * MiB, 512 * 1024], tag="v1")
    private.push(image, "secret/app")
    assert private.ca_cert is not None
    ref = f"{private.host}/secret/app:v1"
    ca = str(private.ca_cert)
    swarm = Swarm(tmp_root / "swarm", private, peers=1)
    try:
        code, doc, err = preheat(swarm, "image", ref, "--ca-cert", ca)
        assert code == 4 and "needs credentials" in doc["error"], err
        code, doc, err = preheat(swarm, "image", ref, "--ca-cert", ca, "-u", USER, "-p", "wrong")
        assert code == 4 and "refused the credentials" in doc["error"], err
        assert private.blob_bytes() == 0

        code, doc, err = preheat(swarm, "image", ref, "--ca-cert", ca, "-u", USER, "-p", PASSWORD)
        assert code == 0, err + swarm.logs()
        assert all(t["hosts"] for t in doc["tasks"]), doc
        assert private.blob_bytes() == image.blob_bytes

        before = private.blob_bytes()
        conf = registries_conf(tmp_root / "r.conf", private.host, swarm.proxy(0), registry_insecure=False)
        auth = auth_file(tmp_root / "auth.json", USER, PASSWORD, private.host, swarm.proxy(0))
        res = skopeo_pull(ref, tmp_root / "out", conf, cert_dir=private.ca_cert.parent, authfile=auth)
        assert res.returncode == 0, res.stderr + swarm.logs()
        assert_dir_image(tmp_root / "out", image)
        assert private.blob_bytes() - before == 0, swarm.logs()
        # Neither the password nor the basic credential reaches any log.
        basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        for log in (tmp_root / "swarm" / "logs").glob("*.log"):
            text = log.read_text()
            assert PASSWORD not in text and basic not in text, log
    finally:
        swarm.close()
