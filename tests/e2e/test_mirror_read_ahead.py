"""A client that pulls one layer at a time finds the next one already fetched (proxy.readAhead)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.helpers.metrics import sample_now
from tests.helpers.wait import wait_until

from damselfly.testbed.registry import OCI_MANIFEST, Image, Registry

from .faults import FaultFront
from .harness import Swarm, blob_log


def _get(url: str, accept: str = "") -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200
        return bytes(r.read())


def read_ahead(swarm: Swarm, result: str) -> float:
    """Peer 0's proxy's read-ahead decisions so far: ``started`` (next blobs it began),
    ``asked_blob_failed`` or ``no_order`` (asked blobs after which it began none, and why)."""
    port = swarm.peers[0].ready["metrics_port"]
    return sample_now(port, "damselfly_daemon_proxy_read_ahead_total", result=result)


def test_the_next_layer_is_fetched_before_the_client_asks(
    tmp_root: Path, registry: Registry, image: Image
) -> None:
    swarm = Swarm(tmp_root / "swarm", registry, peers=1)
    try:
        base = f"http://{swarm.proxy(0)}/v2/team/app"
        _get(f"{base}/manifests/v1", accept=OCI_MANIFEST)  # the client learns the layers; so does the proxy
        first, second, third = image.layers
        body = _get(f"{base}/blobs/{first.digest}")
        assert "sha256:" + hashlib.sha256(body).hexdigest() == first.digest
        # Nobody asked for the second layer, yet the registry sends it (once) and the daemon holds it.
        wait_until(
            lambda: registry.blob_bytes(second.digest) == second.size,
            lambda: blob_log(registry) + swarm.logs(),
        )
        assert swarm.holds_blob(0, second.digest)
        assert registry.blob_bytes(third.digest) == 0  # one blob ahead, no more
        body = _get(f"{base}/blobs/{second.digest}")
        assert "sha256:" + hashlib.sha256(body).hexdigest() == second.digest
        assert registry.blob_bytes(second.digest) == second.size  # served from the daemon's copy
    finally:
        swarm.close()


@contextlib.contextmanager
def fronted(tmp_root: Path, registry: Registry) -> Iterator[tuple[FaultFront, Swarm, str]]:
    """A swarm whose registry sits behind a fault front, the image's manifest fetched through
    the proxy (so it knows the layers' order): the front, the swarm, the blobs' base URL."""
    front = FaultFront(registry.url).start()
    mirror = {"proxy": {"registryMirror": {"url": front.url}}}
    swarm = Swarm(tmp_root / "swarm", registry, peers=1, config=mirror)
    try:
        base = f"http://{swarm.proxy(0)}/v2/team/app"
        _get(f"{base}/manifests/v1", accept=OCI_MANIFEST)
        yield front, swarm, base
    finally:
        front.release.set()
        swarm.close()
        front.stop()


def test_the_next_layer_waits_until_the_asked_one_is_held(
    tmp_root: Path, registry: Registry, image: Image
) -> None:
    # Fetched side by side, the two would split the machine while the client waits for the first.
    with fronted(tmp_root, registry) as (front, swarm, base):
        first, second, _ = image.layers
        front.faults[first.digest] = "hold"  # half the first layer, then nothing until released
        bodies: list[bytes] = []
        client = threading.Thread(target=lambda: bodies.append(_get(f"{base}/blobs/{first.digest}")))
        client.start()
        wait_until(front.holding.is_set, "the first layer is on its way, held back half way")
        # The proxy took the request before the registry saw it: a read-ahead that did not wait
        # for the first layer would have started (and been counted) by now.
        assert read_ahead(swarm, "started") == 0
        assert front.blob_gets.get(second.digest, 0) == 0  # not while the first is on its way
        front.release.set()
        client.join(60)
        assert bodies and "sha256:" + hashlib.sha256(bodies[0]).hexdigest() == first.digest
        wait_until(lambda: front.blob_gets.get(second.digest) == 1, "the next layer was read ahead")
        wait_until(lambda: swarm.holds_blob(0, second.digest), "the daemon holds the next layer")
        assert read_ahead(swarm, "started") == 1


def test_a_blob_that_failed_reads_nothing_ahead(tmp_root: Path, registry: Registry, image: Image) -> None:
    with fronted(tmp_root, registry) as (front, swarm, base):
        first, second, _ = image.layers
        front.faults[first.digest] = "500"
        try:
            _get(f"{base}/blobs/{first.digest}")
            raise AssertionError("a blob the registry failed was served")
        except urllib.error.HTTPError as e:
            assert e.code == 502
        wait_until(lambda: read_ahead(swarm, "asked_blob_failed") == 1, "the proxy saw the blob fail")
        assert read_ahead(swarm, "started") == 0
        assert front.blob_gets.get(second.digest, 0) == 0


def test_without_its_manifest_no_blob_is_read_ahead(tmp_root: Path, registry: Registry, image: Image) -> None:
    # The order comes from an image manifest a client fetched through this proxy, and only from one.
    swarm = Swarm(tmp_root / "swarm", registry, peers=1)
    try:
        base = f"http://{swarm.proxy(0)}/v2/team/app"
        first, second, _ = image.layers
        _get(f"{base}/blobs/{first.digest}")
        # Decided when the request came, before its answer: no manifest gave an order.
        assert read_ahead(swarm, "no_order") == 1
        assert read_ahead(swarm, "started") == 0
        assert registry.blob_bytes(second.digest) == 0
    finally:
        swarm.close()
