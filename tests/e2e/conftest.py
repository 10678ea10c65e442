from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.processes import short_tempdir

from damselfly.testbed.registry import Image, Registry, build_image, start_registry
from damselfly.units import MiB

from .containerd import Containerd
from .harness import need

LAYERS = [3 * MiB, 2 * MiB, 1 * MiB]


@pytest.fixture
def tmp_root() -> Iterator[Path]:
    import shutil

    root = short_tempdir("dfe2e-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def registry(tmp_root: Path) -> Iterator[Registry]:
    need("docker-registry", "skopeo")
    reg = start_registry(tmp_root / "registry")
    yield reg
    reg.stop()


@pytest.fixture
def image(tmp_root: Path, registry: Registry) -> Image:
    img = build_image(tmp_root / "layout", LAYERS, tag="v1")
    registry.push(img, "team/app")
    return img


@pytest.fixture
def containerd(tmp_root: Path) -> Iterator[Containerd]:
    """A containerd of the test's own (temp root and sockets), stopped by PID."""
    need("containerd", "ctr")
    c = Containerd(tmp_root / "ctd")
    try:
        why = c.wait()
        if why is not None:
            pytest.skip(f"containerd cannot run in this sandbox: {why}")
        yield c
    finally:
        c.stop()
