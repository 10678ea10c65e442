"""``damselfly preheat``: flags checked before any network, exit codes, progress and result lines."""

from __future__ import annotations

import io
import json
import socket
from typing import Any

import pytest
from typer.testing import CliRunner

from damselfly.cli import preheat_cmd as pc
from damselfly.cli.main import app

runner = CliRunner()


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def fake_image(c: pc.Common, image: str, **kw: Any) -> pc.Outcome:
        seen.update(common=c, image=image, **kw)
        return pc.Outcome(pc.EXIT_OK)

    async def fake_files(c: pc.Common, urls: list[str], **kw: Any) -> pc.Outcome:
        seen.update(common=c, urls=urls)
        return pc.Outcome(pc.EXIT_OK)

    monkeypatch.setattr(pc, "run_image", fake_image)
    monkeypatch.setattr(pc, "run_files", fake_files)
    return seen


def test_image_flags_reach_the_request(captured: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pc.PASSWORD_ENV, "from-env")
    args = ["preheat", "image", "reg.example/team/app:v1", "--platform", "linux/arm64", "-u", "alice"]
    args += ["--scope", "all_peers", "--percentage", "50", "--ip", "10.0.0.1", "--tag", "t", "-H", "X-A: 1"]
    args += ["--timeout", "2m", "--piece-length", "4MiB", "--blob-task-id-by-url", "-s", "sched:8002"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    c: pc.Common = captured["common"]
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
    fields = pc.request_fields(c)
    assert fields["percentage"] == 50 and fields["timeout"].seconds == 120 and "count" not in fields


@pytest.mark.parametrize(
    "args",
    [
        ["preheat", "image", "reg.example/app:v1", "--scope", "everyone"],
        ["preheat", "file", "https://o.example/f", "--timeout", "soon"],
        ["preheat", "file", "https://o.example/f", "-H", "no colon"],
    ],
)
def test_bad_flags_exit_2(captured: dict[str, Any], args: list[str]) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == pc.EXIT_USAGE, res.output
    assert not captured


async def test_bad_reference_platform_or_url_exit_2_without_network() -> None:
    kw: dict[str, Any] = dict(
        username="", password="", plain_http=False, ca_pem=None, insecure_skip_verify=False,
        blob_task_id_by_digest=True, err=io.StringIO(),
    )  # fmt: skip
    out = await pc.run_image(
        pc.Common(scheduler="127.0.0.1:1"), "reg.example/Bad:v1", platform="linux/amd64", **kw
    )
    assert out.code == pc.EXIT_USAGE and "repository name" in out.message
    out = await pc.run_image(pc.Common(scheduler="127.0.0.1:1"), "reg.example/app:v1", platform="amd64", **kw)
    assert out.code == pc.EXIT_USAGE and "os/arch" in out.message
    out = await pc.run_files(pc.Common(scheduler="127.0.0.1:1"), ["ftp://o/f"], err=io.StringIO())
    assert out.code == pc.EXIT_USAGE


async def test_unreachable_scheduler_exits_3() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = await pc.run_files(
        pc.Common(scheduler=f"127.0.0.1:{port}", interval_s=0.05), ["https://o/f"], err=io.StringIO()
    )
    assert out.code == pc.EXIT_SCHEDULER and "--scheduler" in out.message


def test_exit_codes_from_statuses() -> None:
    assert pc.exit_code_for("OK") == 0
    assert pc.exit_code_for("ABORTED") == pc.EXIT_FAILED
    assert pc.exit_code_for("NOT_FOUND") == pc.exit_code_for("UNAUTHENTICATED") == pc.EXIT_ORIGIN
    assert pc.exit_code_for("DEADLINE_EXCEEDED") == pc.EXIT_TIMEOUT
    assert pc.exit_code_for("UNAVAILABLE") == pc.EXIT_SCHEDULER


def test_progress_and_report() -> None:
    digest = "sha256:" + "ab" * 32
    line = pc.progress_line([(digest, [("seed", True), ("p0", False)]), ("https://o/f", [])])
    assert line == "1/2 tasks held; sha256:abababababab…: seed, (p0); https://o/f: -"
    outcome = pc.Outcome(
        pc.EXIT_FAILED,
        "preheat x: 1 of 2 downloads succeeded; failed: ...",
        [pc.TaskResult(digest, "u1", "f" * 64, ["seed"], 1024), pc.TaskResult("https://o/f", "u2", "e" * 64)],
    )
    out, err = io.StringIO(), io.StringIO()
    assert pc.report(outcome, json_out=False, out=out, err=err) == pc.EXIT_FAILED
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("ok ") and "1.0 KiB" in lines[0] and "on seed" in lines[0]
    assert lines[1].startswith("MISSING") and "on -" in lines[1]
    assert err.getvalue().startswith("preheat failed: preheat x: 1 of 2")
    out = io.StringIO()
    pc.report(outcome, json_out=True, out=out, err=io.StringIO())
    doc = json.loads(out.getvalue())
    assert doc["ok"] is False and doc["exit_code"] == 1 and doc["tasks"][0]["hosts"] == ["seed"]
