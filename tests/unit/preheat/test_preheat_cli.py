"""``damselfly preheat``: flags checked before any network, exit codes, progress and result lines."""

from __future__ import annotations

import io
import json
import socket
from typing import Any

import pytest
from typer.testing import CliRunner

from damselfly.cli.exitcodes import ExitCode
from damselfly.cli.main import app
from damselfly.cli.preheat import commands, runner
from damselfly.cli.preheat.options import PreheatOptions
from damselfly.cli.preheat.report import Outcome, TaskResult, progress_line, report

cli = CliRunner()


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def fake_image(c: PreheatOptions, image: str, **kw: Any) -> Outcome:
        seen.update(common=c, image=image, **kw)
        return Outcome(ExitCode.OK)

    async def fake_files(c: PreheatOptions, urls: list[str], **kw: Any) -> Outcome:
        seen.update(common=c, urls=urls)
        return Outcome(ExitCode.OK)

    monkeypatch.setattr(runner, "run_image", fake_image)
    monkeypatch.setattr(runner, "run_files", fake_files)
    return seen


def test_image_flags_reach_the_request(captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(commands.PASSWORD_ENV, "from-env")
    args = ["preheat", "image", "reg.example/team/app:v1", "--platform", "linux/arm64", "-u", "alice"]
    args += ["--scope", "all_peers", "--percentage", "50", "--ip", "10.0.0.1", "--tag", "t", "-H", "X-A: 1"]
    args += ["--timeout", "2m", "--piece-length", "4MiB", "--blob-task-id-by-url", "-s", "sched:8002"]
    res = cli.invoke(app, args)
    assert res.exit_code == 0, res.output
    c: PreheatOptions = captured["common"]
    assert (c.scheduler, c.scope, c.percentage, c.ips, c.tag) == (
        "sched:8002",
        "all_peers",
        50,
        ["10.0.0.1"],
        "t",
    )
    assert (c.headers, c.timeout_s, c.piece_length) == ({"X-A": "1"}, 120.0, 4 << 20)
    assert captured["password"] == "from-env" and captured["username"] == "alice"
    assert captured["platform"] == "linux/arm64" and captured["blob_task_id_by_digest"] is False
    fields = runner.request_fields(c)
    assert fields["percentage"] == 50 and fields["timeout"].seconds == 120 and "count" not in fields


def test_file_takes_the_same_shared_options(captured: dict[str, Any]) -> None:
    args = ["preheat", "file", "https://o.example/a", "https://o.example/b", "--scope", "all_seed_peers"]
    args += ["--count", "3", "--concurrent-tasks", "2", "--interval", "0.01", "--json"]
    res = cli.invoke(app, args)
    assert res.exit_code == 0, res.output
    c: PreheatOptions = captured["common"]
    assert captured["urls"] == ["https://o.example/a", "https://o.example/b"]
    assert (c.scope, c.count, c.concurrent_tasks) == ("all_seed_peers", 3, 2)
    assert c.interval_s == 0.05 and c.json_out is True  # the interval has a floor


@pytest.mark.parametrize(
    "args",
    [
        ["preheat", "image", "reg.example/app:v1", "--scope", "everyone"],
        ["preheat", "file", "https://o.example/f", "--timeout", "soon"],
        ["preheat", "file", "https://o.example/f", "-H", "no colon"],
    ],
)
def test_bad_flags_exit_2(captured: dict[str, Any], args: list[str]) -> None:
    res = cli.invoke(app, args)
    assert res.exit_code == ExitCode.USAGE, res.output
    assert not captured


async def test_bad_reference_platform_or_url_exit_2_without_network() -> None:
    kw: dict[str, Any] = dict(
        username="", password="", plain_http=False, ca_pem=None, insecure_skip_verify=False,
        blob_task_id_by_digest=True, err=io.StringIO(),
    )  # fmt: skip
    out = await runner.run_image(
        PreheatOptions(scheduler="127.0.0.1:1"), "reg.example/Bad:v1", platform="linux/amd64", **kw
    )
    assert out.code == ExitCode.USAGE and "repository name" in out.message
    out = await runner.run_image(
        PreheatOptions(scheduler="127.0.0.1:1"), "reg.example/app:v1", platform="amd64", **kw
    )
    assert out.code == ExitCode.USAGE and "os/arch" in out.message
    out = await runner.run_files(PreheatOptions(scheduler="127.0.0.1:1"), ["ftp://o/f"], err=io.StringIO())
    assert out.code == ExitCode.USAGE


async def test_unreachable_scheduler_exits_3() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = await runner.run_files(
        PreheatOptions(scheduler=f"127.0.0.1:{port}", interval_s=0.05), ["https://o/f"], err=io.StringIO()
    )
    assert out.code == ExitCode.SCHEDULER_UNAVAILABLE and "--scheduler" in out.message


def test_exit_codes_from_statuses() -> None:
    assert runner.exit_code_for("OK") == 0
    assert runner.exit_code_for("ABORTED") == ExitCode.FAILED
    assert runner.exit_code_for("NOT_FOUND") == runner.exit_code_for("UNAUTHENTICATED") == ExitCode.ORIGIN
    assert runner.exit_code_for("DEADLINE_EXCEEDED") == ExitCode.TIMEOUT
    assert runner.exit_code_for("UNAVAILABLE") == ExitCode.SCHEDULER_UNAVAILABLE


def test_progress_and_report() -> None:
    digest = "sha256:" + "ab" * 32
    line = progress_line([(digest, [("seed", True), ("p0", False)]), ("https://o/f", [])])
    assert line == "1/2 tasks held; sha256:abababababab…: seed, (p0); https://o/f: -"
    outcome = Outcome(
        ExitCode.FAILED,
        "preheat x: 1 of 2 downloads succeeded; failed: ...",
        [TaskResult(digest, "u1", "f" * 64, ["seed"], 1024), TaskResult("https://o/f", "u2", "e" * 64)],
    )
    out, err = io.StringIO(), io.StringIO()
    assert report(outcome, json_out=False, out=out, err=err) == ExitCode.FAILED
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("ok ") and "1.0 KiB" in lines[0] and "on seed" in lines[0]
    assert lines[1].startswith("MISSING") and "on -" in lines[1]
    assert err.getvalue().startswith("preheat failed: preheat x: 1 of 2")
    out = io.StringIO()
    report(outcome, json_out=True, out=out, err=io.StringIO())
    doc = json.loads(out.getvalue())
    assert doc["ok"] is False and doc["exit_code"] == 1 and doc["tasks"][0]["hosts"] == ["seed"]
