"""A containerd of our own for tests: temp root, state and sockets; stopped by PID."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from damselfly.runtime.children import ChildProcess, spawn, stop_all


class Containerd:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.sock = root / "c.sock"
        (root / "config.toml").write_text(
            "version = 2\n"
            f'root = "{root / "root"}"\n'
            f'state = "{root / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.sock}"\n'
            f'[ttrpc]\n  address = "{root / "t.sock"}"\n'
            f'[debug]\n  address = "{root / "d.sock"}"\n'
            '[metrics]\n  address = ""\n'
        )
        self.child: ChildProcess = spawn(
            "containerd",
            ["containerd", "--config", str(root / "config.toml")],
            log_path=root / "containerd.log",
        )

    def wait(self, timeout: float = 20.0) -> str | None:
        """None once containerd answers, else why it cannot run here."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.child.alive():
                return f"containerd exited: {self.child.log_tail(5)}"
            if self.sock.exists():
                res = self.ctr("version")
                if res.returncode == 0:
                    return None
            time.sleep(0.1)
        return "containerd did not answer in time"

    def ctr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "-a", str(self.sock), *args], capture_output=True, text=True, timeout=timeout, check=False
        )

    def stop(self) -> None:
        stop_all([self.child], grace=10)
        # Mounts of the native snapshotter are plain directories; nothing to unmount.
        shutil.rmtree(self.root / "root", ignore_errors=True)


def hosts_dir(path: Path, registry_host: str, registry_url: str, mirror: str) -> Path:
    """containerd's certs.d layout sending pulls of ``registry_host`` to the mirror."""
    d = path / registry_host
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts.toml").write_text(
        f'server = "{registry_url}"\n'
        f'[host."http://{mirror}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        f'  [host."http://{mirror}".header]\n'
        f'    X-Dragonfly-Registry = ["{registry_url}"]\n'
    )
    return path
