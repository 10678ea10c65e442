"""JSON log lines, credential scrubbing, the tracing config and Dragonfly's size levels."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from damselfly import logs, tracing
from damselfly.cli.servers import daemon_overrides, observability_overrides
from damselfly.config import load_daemon_config, load_scheduler_config
from damselfly.daemon.metrics import DaemonMetrics, task_size_level
from damselfly.domain import PieceInfo, TrafficType
from damselfly.errors import ConfigError


@pytest.fixture
def json_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "log.jsonl"
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    logs.setup_logging("DEBUG", path, fmt="json")
    try:
        yield path
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            h.close()
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_json_line_has_time_level_logger_message_and_the_fields(json_log: Path) -> None:
    log = logging.getLogger("damselfly.test")
    with logs.log_context(task_id="ab" * 32, peer_id="peer-1"):
        log.info("piece %d from %s", 3, "parent-2", extra={"bytes": 4096, "parent": "parent-2"})
    log.warning("outside")
    first, second = lines(json_log)
    assert first["level"] == "INFO" and first["logger"] == "damselfly.test"
    assert first["message"] == "piece 3 from parent-2"
    assert (first["task_id"], first["peer_id"]) == ("ab" * 32, "peer-1")
    assert (first["bytes"], first["parent"]) == (4096, "parent-2")
    assert str(first["time"]).endswith("Z")
    assert second["message"] == "outside" and "task_id" not in second


def test_credentials_never_reach_a_json_line(json_log: Path) -> None:
    log = logging.getLogger("damselfly.test")
    log.info(
        "fetching https://alice:hunter2@registry.example/v2/ with Authorization: Bearer abcdefghijklmnop"
    )
    log.info("headers", extra={"headers": {"Authorization": "Basic YWxpY2U6aHVudGVyMg==", "Accept": "*/*"}})
    log.info("cookie", extra={"cookie": "session=s3cr3t"})
    try:
        raise ValueError("bad url https://bob:pa55word@example.com/x")
    except ValueError:
        log.exception("failed")
    text = json_log.read_text()
    for secret in ("hunter2", "abcdefghijklmnop", "YWxpY2U6aHVudGVyMg", "s3cr3t", "pa55word"):
        assert secret not in text
    records = lines(json_log)
    assert records[1]["headers"] == {"Authorization": "<redacted>", "Accept": "*/*"}
    assert "registry.example/v2/" in str(records[0]["message"])  # the rest of the line stays
    assert "example.com/x" in str(records[3]["exception"])


def test_the_text_format_scrubs_too(tmp_path: Path) -> None:
    record = logging.LogRecord("x", logging.INFO, "", 0, "GET %s", ("http://u:p4ss@h/",), None)
    record.ctx = ""
    assert "p4ss" not in logs.TextFormatter().format(record)
    assert logs.scrub("nothing to hide here") == "nothing to hide here"


def test_a_log_line_inside_a_trace_names_it(json_log: Path) -> None:
    tracing.configure(exporter=InMemorySpanExporter())
    try:
        with tracing.span("daemon", "work"):
            logging.getLogger("damselfly.test").info("inside")
        ids = lines(json_log)[0]
        assert len(str(ids["trace_id"])) == 32 and len(str(ids["span_id"])) == 16
    finally:
        tracing.shutdown()


def test_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        logs.setup_logging("INFO", fmt="xml")
    with pytest.raises(ConfigError):
        load_daemon_config(None, {"log": {"format": "xml"}})


def test_log_format_and_metrics_ip_flags_reach_the_config() -> None:
    overrides = observability_overrides(daemon_overrides(), log_format="json", metrics_ip="0.0.0.0")
    cfg = load_daemon_config(None, overrides)
    assert (cfg.log.format, cfg.metrics.ip) == ("json", "0.0.0.0")
    sched = load_scheduler_config(None, observability_overrides({}, metrics_ip="0.0.0.0"))
    assert (sched.log.format, sched.metrics.ip) == ("text", "0.0.0.0")


def test_tracing_config_is_off_by_default_and_builds_the_otlp_url() -> None:
    assert load_daemon_config().tracing.url == ""
    cfg = load_daemon_config(None, {"tracing": {"endpoint": "collector:4318"}})
    assert cfg.tracing.url == "http://collector:4318/v1/traces"
    yaml_keys = {"tracing": {"protocol": "https", "endpoint": "c:443", "path": "/otlp/v1/traces"}}
    assert load_scheduler_config(None, yaml_keys).tracing.url == "https://c:443/otlp/v1/traces"
    whole = load_daemon_config(None, {"tracing": {"endpoint": "http://c:4318/v1/traces"}})
    assert whole.tracing.url == "http://c:4318/v1/traces"


def test_dfget_reads_the_standard_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert tracing.configure_from_env("dfget") is False and not tracing.enabled()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9/")
    try:
        assert tracing.configure_from_env("dfget") and tracing.enabled()
    finally:
        tracing.shutdown()
    assert not tracing.enabled()


@pytest.mark.parametrize(
    ("size", "level"),
    [(0, "0"), (1, "1"), (1024 * 1024 - 1, "1"), (1024 * 1024, "2"), (5 * 1024 * 1024, "3"),
     (1024**3 - 1, "10"), (1024**3, "11"), (1024**4 - 1, "19"), (1024**4, "20")],
)  # fmt: skip
def test_task_size_levels_are_dragonflys(size: int, level: str) -> None:
    assert task_size_level(size) == level


def test_traffic_is_exported_under_dragonflys_names_without_total() -> None:
    m = DaemonMetrics()
    m.on_piece(PieceInfo(number=0, offset=0, length=100, traffic_type=TrafficType.BACK_TO_SOURCE))
    m.on_piece(PieceInfo(number=1, offset=100, length=50, traffic_type=TrafficType.REMOTE_PEER))
    m.on_piece(PieceInfo(number=2, offset=150, length=25, traffic_type=TrafficType.REMOTE_PEER))
    m.on_upload("t", 7)
    page = generate_latest(m.registry).decode()
    samples = {
        (s.name, s.labels.get("type", "")): s.value
        for f in text_string_to_metric_families(page)
        for s in f.samples
    }
    assert samples[("dragonfly_client_download_traffic", "BACK_TO_SOURCE")] == 100
    assert samples[("dragonfly_client_download_traffic", "REMOTE_PEER")] == 75
    assert samples[("dragonfly_client_upload_traffic", "")] == 7


def test_server_and_up_flags_set_log_format_and_metrics_ip(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from damselfly.cli import servers, up
    from damselfly.cli.main import app

    seen: dict[str, Any] = {}

    def fake_server(kind: str, config_file: Path | None, overrides: dict[str, Any], **kw: Any) -> int:
        seen[kind] = overrides
        return 0

    def fake_up(data_dir: Path, **kw: Any) -> int:
        # What up's children (the scheduler and daemons) would read as their flags.
        seen["up"] = (os.environ.get("DAMSELFLY_METRICS_IP"), os.environ.get("DAMSELFLY_LOG_FORMAT"))
        return 0

    monkeypatch.setattr(servers, "run_server", fake_server)
    monkeypatch.setattr(up, "run_up", fake_up)
    for var in ("DAMSELFLY_METRICS_IP", "DAMSELFLY_LOG_FORMAT"):
        monkeypatch.setenv(var, "")  # so that what up sets is undone after the test
        monkeypatch.delenv(var)
    runner = CliRunner()
    for command in ("daemon", "scheduler"):
        result = runner.invoke(app, [command, "--metrics-ip", "0.0.0.0", "--log-format", "json"])
        assert result.exit_code == 0, result.output
    assert load_daemon_config(None, seen["daemon"]).metrics.ip == "0.0.0.0"
    assert load_scheduler_config(None, seen["scheduler"]).log.format == "json"
    result = runner.invoke(
        app, ["up", "--data-dir", "/tmp/x", "--metrics-ip", "0.0.0.0", "--log-format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert seen["up"] == ("0.0.0.0", "json")
