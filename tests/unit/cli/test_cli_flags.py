"""Flag parsing of the damselfly and dfget commands, without starting anything."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from damselfly.cli import dfget_args, servers
from damselfly.cli import get as get_module
from damselfly.cli.main import app
from damselfly.config import load_daemon_config, load_scheduler_config

runner = CliRunner()


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def fake_server(kind: str, config_file: Path | None, overrides: dict[str, Any], **kw: Any) -> int:
        seen.update(kind=kind, config_file=config_file, overrides=overrides, **kw)
        return 0

    monkeypatch.setattr(servers, "run_server", fake_server)

    def fake_get(opts: get_module.GetOptions) -> int:
        seen.update(kind="get", opts=opts)
        return 0

    monkeypatch.setattr(get_module, "run_get", fake_get)
    return seen


def test_daemon_flags_become_config_overrides(captured: dict[str, Any], tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "daemon", "--seed", "--data-dir", str(tmp_path), "--scheduler", "10.0.0.1:8002",
            "--scheduler", "10.0.0.2:8002", "--hostname", "h1", "--ip", "10.0.0.9", "--idc", "idc1",
            "--location", "cn|zj", "--listen-ip", "127.0.0.1", "--upload-port", "0", "--piece-port", "0",
            "--metrics-port", "0", "--socket", str(tmp_path / "d.sock"), "--ready-file", str(tmp_path / "r"),
            "--log-level", "DEBUG",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert captured["kind"] == "daemon"
    assert captured["ready_file"] == tmp_path / "r" and captured["log_level"] == "DEBUG"
    cfg = load_daemon_config(None, captured["overrides"])
    assert cfg.seed_peer.enable is True
    assert cfg.storage.dir == str(tmp_path)
    assert cfg.scheduler.addrs == ["10.0.0.1:8002", "10.0.0.2:8002"]
    assert (cfg.host.hostname, cfg.host.ip, cfg.host.idc, cfg.host.location) == (
        "h1",
        "10.0.0.9",
        "idc1",
        "cn|zj",
    )
    assert cfg.upload.server.ip == cfg.storage.server.ip == "127.0.0.1"
    assert (cfg.upload.server.port, cfg.storage.server.tcp_port, cfg.metrics.port) == (0, 0, 0)
    assert cfg.socket_path == tmp_path / "d.sock"


def test_daemon_without_flags_keeps_the_file_and_defaults(captured: dict[str, Any], tmp_path: Path) -> None:
    conf = tmp_path / "d.yaml"
    conf.write_text("upload:\n  server:\n    port: 4100\nhost:\n  idc: from-file\n")
    result = runner.invoke(app, ["daemon", "--config", str(conf), "--idc", "from-flag"])
    assert result.exit_code == 0, result.output
    cfg = load_daemon_config(captured["config_file"], captured["overrides"])
    assert cfg.upload.server.port == 4100  # from the file
    assert cfg.host.idc == "from-flag"  # the flag wins
    assert cfg.seed_peer.enable is False


def test_scheduler_flags(captured: dict[str, Any], tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["scheduler", "--ip", "127.0.0.1", "--port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    cfg = load_scheduler_config(None, captured["overrides"])
    assert (cfg.server.ip, cfg.server.port, cfg.metrics.port) == ("127.0.0.1", 0, 0)
    assert cfg.server.data_dir == str(tmp_path)


def test_bad_config_file_exits_2(tmp_path: Path) -> None:
    conf = tmp_path / "bad.yaml"
    conf.write_text("nosuchsection: 1\n")
    for kind in ("daemon", "scheduler"):
        assert servers.run_server(kind, conf, {}, ready_file=None, log_level="INFO", log_file=None) == 2


def dfget(args: list[str]) -> int:
    """Run dfget's parser and download step as the console script does; its exit code."""
    try:
        return dfget_args.run(args, prog="dfget")
    except SystemExit as e:
        return int(e.code or 0)


@pytest.mark.parametrize("spelling", ["damselfly get", "dfget"])
def test_get_flags(captured: dict[str, Any], spelling: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAMSELFLY_ENDPOINT", raising=False)
    args = [
            "http://h/x", "-O", "/tmp/out", "--digest", "sha256:" + "a" * 64, "--tag", "t",
            "--application", "a", "-H", "A: 1", "--header", "B: 2", "--filtered-query-param", "sig",
            "--piece-length", "4MiB", "--disable-back-to-source", "--timeout", "30m", "--no-progress",
            "-e", "unix:///run/x.sock",
    ]  # fmt: skip
    if spelling == "dfget":
        assert dfget(args) == 0
    else:
        result = runner.invoke(app, ["get", *args])
        assert result.exit_code == 0, result.output
    opts: get_module.GetOptions = captured["opts"]
    assert opts.url == "http://h/x" and opts.output == "/tmp/out"
    assert opts.headers == ["A: 1", "B: 2"] and opts.filtered_query_params == ["sig"]
    assert opts.disable_back_to_source and not opts.progress
    assert (opts.tag, opts.application, opts.piece_length, opts.timeout) == ("t", "a", "4MiB", "30m")
    assert opts.endpoint == "unix:///run/x.sock"


def test_get_overwrite_and_transfer_flags(captured: dict[str, Any]) -> None:
    assert dfget(["http://h/x", "-O", "/tmp/out"]) == 0
    assert not captured["opts"].overwrite and not captured["opts"].transfer_from_dfdaemon
    assert dfget(["http://h/x", "-O", "/tmp/out", "--overwrite", "--transfer-from-dfdaemon"]) == 0
    assert captured["opts"].overwrite and captured["opts"].transfer_from_dfdaemon


def test_plan_refuses_an_existing_output_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.write_bytes(b"mine")
    with pytest.raises(get_module.DfgetFailure) as e:
        get_module.plan(get_module.GetOptions(url="http://h/x", output=str(out), endpoint="/d.sock"))
    assert e.value.code == 7
    assert e.value.message == f"output path {out} already exists; pass --overwrite to replace it"
    # A dangling symlink is a name that exists too: refused, not followed.
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(get_module.DfgetFailure):
        get_module.plan(get_module.GetOptions(url="http://h/x", output=str(link), endpoint="/d.sock"))
    p = get_module.plan(
        get_module.GetOptions(url="http://h/x", output=str(out), endpoint="/d.sock", overwrite=True)
    )
    assert p.overwrite and p.output_existed and p.transfer is None  # None: decided once connected


def test_plan_transfer_flag(tmp_path: Path) -> None:
    opts = get_module.GetOptions(
        url="http://h/x", output=str(tmp_path / "o"), endpoint="/d.sock", transfer_from_dfdaemon=True
    )
    assert get_module.plan(opts).transfer is True


class _Peer:
    """A socket whose peer the kernel names as ``pid`` (SO_PEERCRED)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def getsockopt(self, level: int, name: int, size: int) -> bytes:
        assert (level, name) == (socket.SOL_SOCKET, socket.SO_PEERCRED)
        return struct.pack("3i", self.pid, 0, 0)


def test_daemon_shares_files_by_what_it_sees(tmp_path: Path) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert get_module.daemon_shares_files(a, tmp_path)  # this very process: the same directory
    # pid 0: the peer lives in a PID namespace we cannot see (a pod using the node's socket).
    assert not get_module.daemon_shares_files(_Peer(0), tmp_path)  # type: ignore[arg-type]
    # A pid that is gone: no directory can be looked up through it.
    assert not get_module.daemon_shares_files(_Peer(2**31 - 1), tmp_path)  # type: ignore[arg-type]


def test_another_mount_namespace_with_the_same_files_is_shared(tmp_path: Path) -> None:
    """``ip netns exec`` (the swarm testbed's hosts) gives a process its own mount namespace
    over the same files: its daemon still writes the output itself."""
    import subprocess

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to make a mount namespace")
    daemon = subprocess.Popen(["unshare", "--mount", "sleep", "30"])
    try:
        child = _child_pid(daemon.pid)
        assert os.stat(f"/proc/{child}/ns/mnt").st_ino != os.stat("/proc/self/ns/mnt").st_ino
        assert get_module.daemon_shares_files(_Peer(child), tmp_path)  # type: ignore[arg-type]
    finally:
        daemon.kill()
        daemon.wait()


def _child_pid(pid: int) -> int:
    """``unshare`` execs its command in the same process once the namespace is made."""
    for _ in range(200):
        if os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
            return pid
        time.sleep(0.01)
    raise AssertionError("unshare did not make a mount namespace")


def test_get_endpoint_from_environment(captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAMSELFLY_ENDPOINT", "/env.sock")
    assert dfget(["http://h/x", "-O", "/tmp/out"]) == 0
    assert captured["opts"].endpoint == "/env.sock"


def test_get_requires_output() -> None:
    assert dfget(["http://h/x"]) == 2
    assert runner.invoke(app, ["get", "http://h/x"]).exit_code == 2


def test_plan_builds_the_download(tmp_path: Path) -> None:
    p = get_module.plan(
        get_module.GetOptions(
            url="http://h/x?X-Amz-Signature=s",
            output=str(tmp_path / "o"),
            digest="SHA256:" + "A" * 64,
            headers=["Authorization: Bearer t"],
            piece_length="8MiB",
            timeout="90s",
            endpoint="unix:///run/d.sock",
        )
    )
    assert p.spec.output_path == str(tmp_path / "o")
    assert p.spec.digest == "sha256:" + "a" * 64
    assert p.spec.request_header == {"Authorization": "Bearer t"}
    assert p.spec.piece_length == 8 * 1024 * 1024 and p.timeout_s == 90
    assert p.spec.filtered_query_params is None  # the defaults
    assert p.socket == Path("/run/d.sock") and not p.output_existed


def test_plan_checks_the_digest_before_the_output(tmp_path: Path) -> None:
    with pytest.raises(get_module.DfgetFailure) as e:
        get_module.plan(get_module.GetOptions(url="nourl", output="/no/such/dir/f", digest="sha256:zz"))
    assert e.value.code == 2 and "sha256" in e.value.message


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and "damselfly" in result.output


_LEAN_PROBE = """
import sys
from damselfly.cli import get
get.run_get = lambda o: print(o.url, o.output, o.headers, o.progress, o.endpoint) or 0
sys.argv = {argv!r}
from damselfly.cli import entry
try:
    entry.{fn}()
except SystemExit as e:
    print("exit", e.code, "typer" in sys.modules, "damselfly.cli.main" in sys.modules)
"""


@pytest.mark.parametrize(
    ("fn", "argv"),
    [("main", ["damselfly", "get", "http://h/x", "-O", "/o", "-H", "A: 1", "--no-progress"]),
     ("dfget_main", ["dfget", "http://h/x", "-O", "/o", "-H", "A: 1", "--no-progress"])],
)  # fmt: skip
def test_get_starts_without_loading_typer(fn: str, argv: list[str]) -> None:
    """Both spellings reach the download through the lean parser: no typer, no other subcommands."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DAMSELFLY_ENDPOINT"}
    code = _LEAN_PROBE.format(argv=argv, fn=fn)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.splitlines() == [
        "http://h/x /o ['A: 1'] False /var/lib/damselfly/dfdaemon.sock",
        "exit 0 False False",
    ], out.stderr


def test_get_usage_errors_exit_2_and_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from damselfly.cli import dfget_args

    with pytest.raises(SystemExit) as e:
        dfget_args.run(["http://h/x"])
    assert e.value.code == 2 and "--output" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        dfget_args.run(["--help"], prog="dfget")
    assert e.value.code == 0
    text = capsys.readouterr().out
    flags = ["--digest", "--tag", "--application", "--header", "--filtered-query-param", "--piece-length",
             "--disable-back-to-source", "--timeout", "--rate-limit", "--no-progress",
             "--endpoint", "--overwrite", "--transfer-from-dfdaemon"]  # fmt: skip
    assert [f for f in flags if f not in text] == []
