"""A real ``redis-server`` for tests (Debian's package; ``.ci/run`` installs it).

One server per use, in its own temp dir: no persistence (``--save ''``,
``--appendonly no``), a unix socket in the dir, and a TCP port on loopback
with a password (to check credentials in a ``redis://`` URL stay out of logs).
Stopped by its PID; the dir is removed.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers.processes import short_tempdir

START_TIMEOUT = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class RedisServer:
    """A running redis-server: :attr:`url` (``redis://:password@127.0.0.1:port/0``) and
    :attr:`unix_url` (the socket, same password)."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes], port: int, password: str) -> None:
        self.root = root
        self.proc = proc
        self.port = port
        self.password = password
        self.socket = root / "redis.sock"

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}?db=0&password={self.password}"

    def log(self) -> str:
        try:
            return (self.root / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Start a redis-server; yield it once it accepts connections; kill it by PID after."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    root = short_tempdir("dfr-")
    password = secrets.token_hex(8)
    last: Exception | None = None
    for _ in range(5):  # the free port may be taken between picking and binding: try another
        port = _free_port()
        argv = [
            exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(root), "--unixsocket", str(root / "redis.sock"), "--unixsocketperm", "700",
            "--requirepass", password, "--logfile", str(root / "redis.log"), "--daemonize", "no",
        ]  # fmt: skip
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        server = RedisServer(root, proc, port, password)
        try:
            _wait_ready(server)
        except RuntimeError as e:
            last = e
            _stop(proc)
            continue
        try:
            yield server
        finally:
            _stop(proc)
            shutil.rmtree(root, ignore_errors=True)
        return
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"redis-server did not start: {last}")


def _wait_ready(server: RedisServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited ({server.proc.returncode}): {server.log()}")
        if server.socket.exists():
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(server.socket))
                    s.sendall(f"AUTH {server.password}\r\nPING\r\n".encode())
                    if b"PONG" in s.recv(64) or b"PONG" in s.recv(64):
                        return
            except OSError:
                pass
        time.sleep(0.02)
    raise RuntimeError(f"redis-server not ready after {START_TIMEOUT:.0f}s: {server.log()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)
