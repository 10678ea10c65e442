"""The container image: ``deploy/image/build.sh`` writes an OCI layout, its rootfs runs, containerd pulls it.

The image is built once for the module from Debian's packages (mmdebstrap,
through the Debian mirror apt uses) and the project's wheel (about a minute
here); that needs root, so the module is skipped only when not root. Then:
the layout's tag, labels and runtime config; what is in the rootfs and what is
not; the rootfs runs ``damselfly --version`` and a whole ``damselfly up`` in a
chroot (private mount and PID namespaces, as the non-root user) that downloads
a file with its own dfget; the layout is pushed to a real ``docker-registry``
with skopeo and pulled by containerd through a Damselfly mirror, with the
same manifest digest and every blob through the daemon; and a second build is
bit-for-bit the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.processes import Procs, random_file, sha256_of, short_tempdir

from damselfly.runtime.children import ChildProcess, spawn, stop_all
from damselfly.testbed.registry import Registry

from .containerd import Containerd, hosts_dir
from .harness import Swarm, blob_log

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="building the image needs root (mmdebstrap, chroot)"),
]

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "deploy" / "image" / "build.sh"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
TAG = "e2e"
SOURCE = "https://git.example.invalid/damselfly"
SOURCE_WITH_TOKEN = "https://ci:s3cret@git.example.invalid/damselfly"
EPOCH = 1767225600  # 2026-01-01T00:00:00Z
UID = 65532


@dataclass
class Built:
    layout: Path
    tag: str
    index: dict[str, Any]
    manifest_digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]

    def blob(self, digest: str) -> bytes:
        return (self.layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()

    @property
    def blobs(self) -> list[dict[str, Any]]:
        """The config's and the layers' descriptors."""
        return [self.manifest["config"], *self.manifest["layers"]]


def build(layout: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, IMAGE_TAG=TAG, IMAGE_SOURCE=SOURCE_WITH_TOKEN, SOURCE_DATE_EPOCH=str(EPOCH))
    return subprocess.run(
        [str(BUILD), str(layout)], capture_output=True, text=True, timeout=600, env=env, check=False
    )


def load(layout: Path) -> Built:
    index = json.loads((layout / "index.json").read_text())
    desc = index["manifests"][0]
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / desc["digest"].removeprefix("sha256:")).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_bytes())
    return Built(layout, TAG, index, desc["digest"], manifest, config)


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    root = short_tempdir("dfimg-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def built(work: Path) -> Built:
    res = build(work / "layout")
    assert res.returncode == 0, f"build.sh failed ({res.returncode}):\n{res.stderr[-4000:]}"
    assert res.stdout.strip() == f"{work / 'layout'}:{TAG}"
    return load(work / "layout")


@pytest.fixture(scope="module")
def bundle(work: Path, built: Built) -> Path:
    """``umoci unpack``: the runtime bundle (config.json + rootfs/) a container runtime would run."""
    res = subprocess.run(
        ["umoci", "unpack", "--image", f"{built.layout}:{built.tag}", str(work / "bundle")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return work / "bundle"


def test_layout_is_tagged_labelled_and_runs_damselfly_as_a_user(built: Built) -> None:
    assert json.loads((built.layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    [desc] = built.index["manifests"]
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == TAG
    assert desc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    for d in [desc, *built.blobs]:
        data = built.blob(d["digest"])
        assert len(data) == d["size"] and "sha256:" + hashlib.sha256(data).hexdigest() == d["digest"]
    assert [lay["mediaType"] for lay in built.manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ]

    created = datetime.fromtimestamp(EPOCH, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = built.config["config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "damselfly"
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.source"] == SOURCE  # the credentials in the URL are dropped
    assert "s3cret" not in json.dumps([built.config, built.manifest, built.index])
    assert labels["org.opencontainers.image.created"] == created
    assert built.config["created"] == created  # SOURCE_DATE_EPOCH, not the build's clock
    assert built.manifest["annotations"]["org.opencontainers.image.version"] == VERSION

    cfg = built.config["config"]
    assert cfg["Entrypoint"] == ["/usr/local/bin/damselfly"]
    assert cfg["User"] == f"{UID}:{UID}"
    assert cfg["WorkingDir"] == "/var/lib/damselfly"
    assert built.config["os"] == "linux"
    assert len(built.config["rootfs"]["diff_ids"]) == 1


def test_rootfs_has_what_runs_and_nothing_for_building(bundle: Path) -> None:
    rootfs = bundle / "rootfs"
    runtime = json.loads((bundle / "config.json").read_text())
    assert runtime["process"]["user"]["uid"] == UID and runtime["process"]["user"]["gid"] == UID
    assert runtime["process"]["args"][0] == "/usr/local/bin/damselfly"

    assert os.access(rootfs / "bin" / "sh", os.X_OK)
    for cmd in ("damselfly", "dfget"):
        assert os.readlink(rootfs / "usr" / "local" / "bin" / cmd) == f"/opt/damselfly/bin/{cmd}"
    assert f"damselfly:x:{UID}:{UID}:" in (rootfs / "etc" / "passwd").read_text()
    data = (rootfs / "var" / "lib" / "damselfly").stat()
    assert (data.st_uid, data.st_gid) == (UID, UID)
    assert (rootfs / "etc" / "ssl" / "certs" / "ca-certificates.crt").stat().st_size > 0

    site = rootfs / "opt" / "damselfly" / "lib" / "python3.11" / "site-packages"
    assert (site / "damselfly" / "__init__.py").is_file()
    assert not (site / "pip").exists(), "pip is left in the image's venv"
    status = (rootfs / "var" / "lib" / "dpkg" / "status").read_text()
    packages = {line.split()[1] for line in status.splitlines() if line.startswith("Package: ")}
    assert {"python3", "ca-certificates", "libstdc++6", "dash"} <= packages
    # Build tools and what usrmerge drags in (full perl) stay out.
    assert not packages & {"apt", "usrmerge", "perl", "python3-pip", "python3-venv"}, sorted(packages)
    for d in ("etc/apt", "var/lib/apt", "var/cache/apt", "var/log/apt"):
        assert not (rootfs / d).exists(), f"/{d} is in the image"
    leftovers = [p for d in ("usr/share/man", "tmp") for p in (rootfs / d).rglob("*")]
    leftovers += [p for p in (rootfs / "var" / "log").rglob("*") if p.is_file() and p.stat().st_size]
    leftovers += list(rootfs.glob("var/**/*-old"))
    assert leftovers == []
    docs = [p for p in (rootfs / "usr" / "share" / "doc").rglob("*") if p.is_file()]
    assert docs and all(p.name == "copyright" for p in docs)


def test_rootfs_runs_version_and_a_cluster_in_a_chroot(bundle: Path, work: Path) -> None:
    rootfs = bundle / "rootfs"
    res = subprocess.run(
        ["chroot", f"--userspec={UID}:{UID}", str(rootfs), "damselfly", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"},
        check=False,
    )
    assert (res.returncode, res.stdout.strip()) == (0, f"damselfly {VERSION}"), res.stderr

    # `damselfly up` as the image's user, in its own mount and PID namespaces: /proc
    # and /dev are mounted there only, and everything dies with its PID 1.
    ready = rootfs / "var" / "lib" / "damselfly" / "up.ready.json"
    enter = 'mount --rbind /dev "$0/dev" && exec chroot --userspec=65532:65532 "$0" "$@"'
    argv = [
        "unshare", "--mount", "--pid", "--fork", "--kill-child", f"--mount-proc={rootfs}/proc",
        "sh", "-c", enter, str(rootfs),
        "/usr/local/bin/damselfly", "up", "--data-dir", "/var/lib/damselfly/up",
        "--scheduler-port", "0", "--scheduler-metrics-port", "0", "--upload-port", "0",
        "--piece-port", "0", "--metrics-port", "0", "--proxy-port", "0",
        "--ready-file", "/var/lib/damselfly/up.ready.json",
    ]  # fmt: skip
    procs = Procs(work / "procs")
    child: ChildProcess = spawn("image-up", argv, log_path=work / "up.log", ready_file=ready)
    try:
        up = child.wait_ready(120)
        assert up["pid"] == 1  # the namespace's init: nothing it starts outlives it
        peer = up["peer"]
        with urllib.request.urlopen(f"http://127.0.0.1:{peer['metrics_port']}/healthy", timeout=10) as r:
            assert r.status == 200

        # The image's dfget downloads through the image's daemons; the seed goes to the origin once.
        (work / "origin").mkdir(exist_ok=True)
        digest = random_file(work / "origin" / "blob.bin", 3 * 1024 * 1024 + 7)
        origin = procs.origin(work / "origin")
        got = subprocess.run(
            ["chroot", f"--userspec={UID}:{UID}", str(rootfs), "/usr/local/bin/dfget",
             "-e", up["socket"], origin.url("blob.bin"), "-O", "/var/lib/damselfly/got.bin"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert got.returncode == 0, got.stderr + child.log_tail(40)
        out = rootfs / "var" / "lib" / "damselfly" / "got.bin"
        assert sha256_of(out) == digest
        assert out.stat().st_uid == UID  # written by the daemon, which runs as the image's user
        assert origin.bytes_for("/blob.bin") == 3 * 1024 * 1024 + 7

        # SIGTERM to `up` (its host PID is unshare's one child) stops the cluster; exit 0.
        init = int(Path(f"/proc/{child.pid}/task/{child.pid}/children").read_text().split()[0])
        os.kill(init, signal.SIGTERM)
        assert child.popen.wait(60) == 0, child.log_tail(40)
    finally:
        if child.alive():
            kids = Path(f"/proc/{child.pid}/task/{child.pid}/children").read_text().split()
            for pid in kids:  # SIGKILL to a PID namespace's init ends all of it
                os.kill(int(pid), signal.SIGKILL)
        stop_all([child], grace=10)
        procs.close()
    assert str(rootfs) not in Path("/proc/self/mountinfo").read_text()


def test_pushed_with_skopeo_and_pulled_by_containerd_through_the_mirror(
    built: Built, tmp_root: Path, registry: Registry, containerd: Containerd
) -> None:
    ref = f"{registry.host}/damselfly:{built.tag}"
    push = subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{built.layout}:{built.tag}", f"docker://{ref}",
         "--dest-tls-verify=false"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert push.returncode == 0, push.stderr

    swarm = Swarm(tmp_root / "swarm", registry, peers=1)
    try:
        hosts = hosts_dir(tmp_root / "certs.d", registry.host, registry.url, swarm.proxy(0))
        before = registry.blob_bytes()
        pull = containerd.ctr(
            "images", "pull", "--hosts-dir", str(hosts), "--snapshotter", "native", ref, timeout=600
        )
        assert pull.returncode == 0, pull.stderr + pull.stdout + swarm.logs()

        listed = containerd.ctr("images", "ls")
        assert listed.returncode == 0, listed.stderr
        digests = [f.split()[2] for f in listed.stdout.splitlines()[1:] if f.split()[0] == ref]
        assert digests == [built.manifest_digest], listed.stdout

        held = set(containerd.ctr("content", "ls", "-q").stdout.split())
        for blob in built.blobs:
            assert blob["digest"] in held, f"{blob['digest']} not in containerd's content store"
            assert swarm.holds_blob(0, blob["digest"]), f"{blob['digest']} did not go through the mirror"
        # The registry sent each blob once, to the swarm; containerd got them from the mirror.
        sent = registry.blob_bytes() - before
        assert sent == sum(b["size"] for b in built.blobs), blob_log(registry) + swarm.logs()
    finally:
        swarm.close()


def test_a_second_build_is_the_same_image(built: Built, work: Path) -> None:
    res = build(work / "again")
    assert res.returncode == 0, res.stderr[-4000:]
    again = load(work / "again")
    assert again.manifest["layers"] == built.manifest["layers"]
    assert again.manifest_digest == built.manifest_digest


def test_build_refuses_a_non_empty_dir_and_a_non_root_user(tmp_root: Path) -> None:
    (tmp_root / "full").mkdir()
    (tmp_root / "full" / "keep.txt").write_text("mine")
    res = subprocess.run([str(BUILD), str(tmp_root / "full")], capture_output=True, text=True, check=False)
    assert res.returncode != 0 and "is not empty" in res.stderr
    assert (tmp_root / "full" / "keep.txt").read_text() == "mine"

    # The script from stdin, so the check does not depend on who may read the tree.
    with BUILD.open("rb") as script:
        res = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", "-s", "--",
             str(tmp_root / "new")],
            stdin=script, capture_output=True, text=True, check=False,
        )  # fmt: skip
    assert res.returncode != 0 and "must run as root" in res.stderr, res.stderr
    assert not (tmp_root / "new").exists()
