"""A real container registry on loopback, and images built in Python, for end-to-end tests.

Why: the mirror must be tested against what users run: Debian's
``docker-registry`` (distribution v2) and real clients (skopeo, containerd,
podman). This module starts the registry with a temp config (optionally TLS
with a CA of its own and htpasswd basic auth), writes OCI image layouts
(random gzip-tar layers, config, manifest, ``index.json``) and pushes them with
``skopeo copy``. The registry's access log says how many blob bytes it
served (:meth:`Registry.blob_bytes`): clients fall back to the registry
silently when a mirror misbehaves, so tests count what the registry sent.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DamselflyError
from ..runtime.children import ChildFailed, ChildProcess, spawn, stop_all

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

_LOG_FIELD = re.compile(
    r'(http\.request\.method|http\.request\.uri|http\.response\.status|http\.response\.written)=("[^"]*"|\S+)'
)
_BLOB_URI = re.compile(r"/v2/.+/blobs/(sha256:[0-9a-f]{64})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --------------------------------------------------------------------------- images


@dataclass
class Blob:
    digest: str
    size: int
    media_type: str


@dataclass
class Image:
    """An OCI image layout on disk and what it holds."""

    layout: Path
    tag: str
    manifest: Blob
    config: Blob
    layers: list[Blob]

    @property
    def blobs(self) -> list[Blob]:
        return [self.config, *self.layers]

    @property
    def blob_bytes(self) -> int:
        return sum(b.size for b in self.blobs)


def _write_blob(layout: Path, data: bytes, media_type: str) -> Blob:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Blob(f"sha256:{digest}", len(data), media_type)


def _layer(index: int, size: int) -> tuple[bytes, str]:
    """A gzip tar holding one file of ``size`` random bytes; (blob, diff_id)."""
    content = os.urandom(size)
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"layer{index}/data.bin")
        info.size = size
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    raw = tar_buf.getvalue()
    # Level 0: random data does not compress, and the stream stays valid gzip.
    return gzip.compress(raw, compresslevel=0, mtime=0), f"sha256:{hashlib.sha256(raw).hexdigest()}"


def build_image(layout: Path, layer_sizes: list[int], *, tag: str = "latest", seed: str = "") -> Image:
    """Write an OCI image layout with one layer per size (bytes of file content per layer)."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    seed_bytes = (seed or os.urandom(8).hex()).encode()
    layers, diff_ids = [], []
    for i, size in enumerate(layer_sizes):
        data, diff_id = _layer(i, size)
        layers.append(_write_blob(layout, data, OCI_LAYER))
        diff_ids.append(diff_id)
    config_doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/layer0/data.bin"], "Labels": {"damselfly.seed": seed_bytes.decode()}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"damselfly testbed layer {i}"} for i in range(len(layers))],
    }
    config = _write_blob(layout, json.dumps(config_doc).encode(), OCI_CONFIG)
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": OCI_LAYER, "digest": b.digest, "size": b.size} for b in layers],
    }
    manifest = _write_blob(layout, json.dumps(manifest_doc).encode(), OCI_MANIFEST)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest.digest,
                "size": manifest.size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return Image(layout, tag, manifest, config, layers)


# --------------------------------------------------------------------------- registry


@dataclass
class Registry:
    """A running ``docker-registry`` under ``root``. :meth:`stop` ends it (by PID)."""

    root: Path
    port: int
    child: ChildProcess
    tls: bool = False
    ca_cert: Path | None = None
    user: str = ""
    password: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def log_path(self) -> Path:
        return self.child.log_path

    def stop(self) -> None:
        stop_all([self.child], grace=5)

    def requests(self) -> list[dict[str, str]]:
        """The registry's completed requests (method, uri, status, written), from its log."""
        out: list[dict[str, str]] = []
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return out
        for line in text.splitlines():
            if 'msg="response completed"' not in line:
                continue
            fields = {k.rsplit(".", 1)[1]: v.strip('"') for k, v in _LOG_FIELD.findall(line)}
            out.append(fields)
        return out

    def blob_bytes(self, digest: str | None = None) -> int:
        """Bytes of blob bodies the registry has sent (successful GETs of /v2/<name>/blobs/<digest>)."""
        total = 0
        for r in self.requests():
            m = _BLOB_URI.search(r.get("uri", ""))
            if r.get("method") != "GET" or not m or (digest is not None and m.group(1) != digest):
                continue
            if r.get("status") not in ("200", "206"):
                continue  # an error body (401, 404) is not blob bytes
            total += int(r.get("written", "0") or 0)
        return total

    def blob_gets(self) -> int:
        return sum(
            1 for r in self.requests() if r.get("method") == "GET" and _BLOB_URI.search(r.get("uri", ""))
        )

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def get(self, path: str, *, auth: bool = True) -> tuple[int, bytes]:
        req = urllib.request.Request(self.url + path)
        if auth and self.user:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=10, context=self._ssl()) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read()

    def push(self, image: Image, repo: str) -> None:
        """``skopeo copy`` the image layout to ``repo:tag`` here."""
        argv = [
            "skopeo",
            "copy",
            "--quiet",
            f"oci:{image.layout}:{image.tag}",
            f"docker://{self.host}/{repo}:{image.tag}",
        ]
        if self.tls:
            argv += ["--dest-cert-dir", str(self.ca_cert.parent if self.ca_cert else "")]
        else:
            argv += ["--dest-tls-verify=false"]
        if self.user:
            argv += ["--dest-creds", f"{self.user}:{self.password}"]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        if res.returncode != 0:
            raise DamselflyError(f"skopeo push failed ({res.returncode}): {res.stderr.strip()}")


def make_tls(root: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``host``: (ca.crt, server.crt, server.key).

    ``ca.crt`` sits alone in ``root/ca/``, so the folder works as a client's
    certificate directory (skopeo's ``--cert-dir`` takes any ``*.key`` there
    for a client key).
    """
    from ..daemon.proxy.ca import CertificateAuthority, generate_ca

    (root / "ca").mkdir(parents=True, exist_ok=True)
    ca_pem, ca_key = generate_ca("Damselfly test registry CA")
    (root / "ca" / "ca.crt").write_bytes(ca_pem)
    (root / "ca-key.pem").write_bytes(ca_key)
    chain, key = CertificateAuthority(root / "ca" / "ca.crt", root / "ca-key.pem").leaf(host)
    (root / "server.crt").write_bytes(chain)
    (root / "server.key").write_bytes(key)
    return root / "ca" / "ca.crt", root / "server.crt", root / "server.key"


def htpasswd_line(user: str, password: str) -> str:
    res = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True, check=True)
    return res.stdout.strip() + "\n"


def start_registry(
    root: Path,
    *,
    tls: bool = False,
    user: str = "",
    password: str = "",
    token_auth: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Registry:
    """Start ``docker-registry serve`` on a free loopback port with its data and log under ``root``.

    ``token_auth``: distribution's ``auth.token`` settings (realm, service, issuer,
    rootcertbundle): the registry then wants bearer tokens from that token service.
    """
    if shutil.which("docker-registry") is None:
        raise DamselflyError("docker-registry is not installed (apt-get install docker-registry)")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {root / 'data'}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: 127.0.0.1:{port}",
    ]
    ca_cert = None
    if tls:
        ca_cert, crt, key = make_tls(root / "tls")
        lines += ["  tls:", f"    certificate: {crt}", f"    key: {key}"]
    if user:
        (root / "htpasswd").write_text(htpasswd_line(user, password))
        lines += ["auth:", "  htpasswd:", "    realm: damselfly-test", f"    path: {root / 'htpasswd'}"]
    elif token_auth:
        lines += ["auth:", "  token:", *(f"    {k}: {v}" for k, v in token_auth.items())]
    (root / "config.yml").write_text("\n".join(lines) + "\n")
    child = spawn(
        "registry", ["docker-registry", "serve", str(root / "config.yml")], log_path=root / "registry.log"
    )
    reg = Registry(root, port, child, tls=tls, ca_cert=ca_cert, user=user, password=password)
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            raise ChildFailed(child, f"docker-registry exited; see {child.log_path}\n{child.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return reg
        except OSError:
            if time.monotonic() > deadline:
                reg.stop()
                raise ChildFailed(child, f"docker-registry not listening after {timeout:.0f}s") from None
            time.sleep(0.05)
