"""What a client sees when the registry fails, and that nothing wrong stays cached."""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from damselfly.testbed.registry import Image, Registry

from .faults import FaultFront
from .harness import Swarm


@pytest.fixture
def front(registry: Registry) -> Iterator[FaultFront]:
    f = FaultFront(registry.url).start()
    yield f
    f.stop()


@pytest.fixture
def swarm(tmp_root: Path, registry: Registry, front: FaultFront) -> Iterator[Swarm]:
    s = Swarm(tmp_root / "swarm", registry, peers=1, config={"proxy": {"registryMirror": {"url": front.url}}})
    yield s
    s.close()


def get_blob(swarm: Swarm, digest: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(f"http://{swarm.proxy(0)}/v2/team/app/blobs/{digest}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return int(r.status), r.read(), ""
    except urllib.error.HTTPError as e:
        return int(e.code), e.read(), e.headers.get("WWW-Authenticate", "")


def assert_good(swarm: Swarm, digest: str) -> None:
    status, body, _ = get_blob(swarm, digest)
    assert status == 200, body[:200]
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest


def test_missing_blob_is_the_registrys_404(swarm: Swarm) -> None:
    status, body, _ = get_blob(swarm, "sha256:" + "0" * 64)
    assert status == 404
    assert b"BLOB_UNKNOWN" in body


def test_registry_500_is_a_502_with_the_reason_then_recovers(
    swarm: Swarm, front: FaultFront, image: Image
) -> None:
    digest = image.layers[0].digest
    front.faults[digest] = "500"
    status, body, _ = get_blob(swarm, digest)
    assert status == 502
    assert b"500" in body
    del front.faults[digest]
    assert_good(swarm, digest)


def test_registry_401_passes_through_with_its_challenge(
    swarm: Swarm, front: FaultFront, image: Image
) -> None:
    digest = image.layers[1].digest
    front.faults[digest] = "401"
    status, _, challenge = get_blob(swarm, digest)
    assert status == 401
    assert challenge == 'Basic realm="front"'


@pytest.mark.parametrize("fault", ["truncate", "corrupt"])
def test_bad_body_never_completes_and_is_not_cached(
    swarm: Swarm, front: FaultFront, image: Image, fault: str
) -> None:
    digest = image.layers[0].digest
    front.faults[digest] = fault
    try:
        status, body, _ = get_blob(swarm, digest)
    except (http.client.IncompleteRead, ConnectionError) as e:
        status, body = -1, repr(e).encode()
    # Either the mirror refused before the headers (502) or it cut the connection:
    # the client never receives a complete body with the wrong bytes.
    assert status in (-1, 502), (status, len(body))
    del front.faults[digest]
    assert_good(swarm, digest)
