"""What operators watch, on real processes: metrics, the Grafana dashboard, JSON logs, traces.

One cluster (origin, scheduler, seed, peer as child processes, as ``damselfly
up`` runs them) with ``--log-format json`` (``DAMSELFLY_LOG_FORMAT``) and OTLP
tracing to a small OTLP/HTTP receiver started here (OpenTelemetry's standard
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``). dfget downloads a file and fails on a
missing one, and the peer's registry mirror answers one request, so the
counters, histograms and failure counters all have samples; then every
process's ``/metrics`` is scraped and the processes are stopped, which flushes
their spans.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from helpers.processes import random_file, run_dfget, short_tempdir, start_cluster

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "damselfly.json"
METRICS_DOC = REPO / "docs" / "METRICS.md"
SECRET = "s3cr3t-T0KEN-never-logged"


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class OTLPReceiver(ThreadingHTTPServer):
    """An OTLP/HTTP collector: ``POST /v1/traces`` with protobuf bodies, spans kept."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OTLPHandler)
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/traces"


class _OTLPHandler(BaseHTTPRequestHandler):
    server: OTLPReceiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest.FromString(body)
        found = []
        for rs in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    found.append(
                        Span(
                            service=attrs.get("service.name", ""),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes={
                                a.key: a.value.string_value or a.value.int_value for a in s.attributes
                            },
                        )
                    )
        with self.server.lock:
            self.server.spans.extend(found)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Observed:
    pages: dict[str, str] = field(default_factory=dict)  # process name -> its /metrics text
    logs: dict[str, str] = field(default_factory=dict)  # process name -> its log file
    spans: list[Span] = field(default_factory=list)
    task_url: str = ""


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


@pytest.fixture(scope="module")
def observed() -> Iterator[Observed]:
    receiver = OTLPReceiver()
    serving = threading.Thread(target=receiver.serve_forever, daemon=True)
    serving.start()
    root = short_tempdir("dfo-")
    out = Observed()
    with pytest.MonkeyPatch.context() as env:
        # The children (spawned with this environment) and dfget read these.
        env.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.url)
        env.setenv("DAMSELFLY_LOG_FORMAT", "json")
        cluster = start_cluster(root)
        try:
            random_file(cluster.origin_dir / "watched.bin", 5 * 1024 * 1024 + 17)
            out.task_url = cluster.origin.url("watched.bin")
            ok = run_dfget(
                out.task_url, root / "watched.out", cluster.socket, "-H", f"Authorization: Bearer {SECRET}"
            )
            assert ok.returncode == 0, ok.stderr + cluster.logs()
            missing = run_dfget(cluster.origin.url("missing.bin"), root / "missing.out", cluster.socket)
            assert missing.returncode != 0
            proxy_port = int(cluster.peer.ready["proxy_port"])
            assert proxy_port, "the peer runs no registry mirror"
            with pytest.raises(urllib.error.HTTPError):  # not a registry path: refused, and counted
                urllib.request.urlopen(f"http://127.0.0.1:{proxy_port}/not-a-registry", timeout=10)
            for child in (cluster.scheduler, cluster.seed, cluster.peer):
                out.pages[child.name] = _scrape(int(child.ready["metrics_port"]))
        finally:
            cluster.procs.close()  # SIGTERM: each process flushes its spans before it exits
        for child in cluster.procs.children:
            out.logs[child.name] = child.log_path.read_text(errors="replace")
    receiver.shutdown()
    receiver.server_close()
    out.spans = list(receiver.spans)
    try:
        yield out
    finally:
        cluster.procs.cleanup()


# ------------------------------------------------------------------ metrics


def _samples(pages: dict[str, str]) -> set[str]:
    return {
        s.name for page in pages.values() for f in text_string_to_metric_families(page) for s in f.samples
    }


def _families(pages: dict[str, str]) -> dict[str, str]:
    """Family name -> type, without the ``_created`` gauges the text format adds."""
    out: dict[str, str] = {}
    for page in pages.values():
        for f in text_string_to_metric_families(page):
            if not f.name.endswith("_created"):
                out[f.name] = f.type
    return out


_BY_NAME = re.compile(r'__name__\s*=~?\s*"([^"]*)"')
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, ranges left out;
    ``{__name__=~"a|b"}`` selects a and b)."""
    named = {n for m in _BY_NAME.findall(expr) for n in m.split("|")}
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    return named | {n for n in _NAME.findall(text) if n.lower() not in _KEYWORDS}


def test_the_promql_reader_finds_names_and_only_names() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y", t=~"b|c"}[$__rate_interval]))) '
        "/ on (instance) sum(b_total) and c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert metric_names('count({__name__=~"d_version|e_version", job="x"})') == {"d_version", "e_version"}


def _queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            out.append((f"${var['name']}", var["definition"].removeprefix("label_values(").rsplit(",", 1)[0]))
    return out


def test_every_dashboard_query_names_a_metric_the_processes_export(observed: Observed) -> None:
    exported = _samples(observed.pages)
    queries = _queries()
    assert len(queries) >= 20
    for title, expr in queries:
        names = metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        unknown = names - exported
        assert not unknown, f"panel {title!r} queries {sorted(unknown)}, which no process exports"


def test_dashboard_panels_have_unique_ids_and_fit_the_grid() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]


def test_names_and_labels_are_dragonflys_where_they_mean_the_same(observed: Observed) -> None:
    peer = {f.name: f for f in text_string_to_metric_families(observed.pages["peer"])}
    traffic = {s.labels["type"]: s.value for s in peer["dragonfly_client_download_traffic"].samples}
    assert set(traffic) <= {"BACK_TO_SOURCE", "REMOTE_PEER", "LOCAL_PEER"} and sum(traffic.values()) > 0
    started = peer["dragonfly_client_download_task"].samples  # the parser drops _total from the family
    assert {tuple(sorted(s.labels)) for s in started if s.name.endswith("_total")} == {
        ("app", "priority", "tag", "type")
    }
    durations = [s for s in peer["dragonfly_client_download_task_duration_milliseconds"].samples]
    assert {s.labels.get("task_size_level") for s in durations if s.name.endswith("_count")} == {
        "3"
    }  # 4-8 MiB
    scheduler = {f.name: f for f in text_string_to_metric_families(observed.pages["scheduler"])}
    registered = scheduler["dragonfly_scheduler_register_peer"].samples
    assert any(
        s.labels == {"priority": "LEVEL0", "task_type": "STANDARD", "host_type": "normal"} for s in registered
    )


def test_docs_list_every_exported_metric(observed: Observed) -> None:
    doc = METRICS_DOC.read_text()
    listed = set(re.findall(r"^\| `([a-z0-9_:]+)`", doc, re.M))
    exported = _families(observed.pages)
    # A counter's family is named without _total by the parser; the doc names what is scraped.
    scraped = {name + ("_total" if kind == "counter" else "") for name, kind in exported.items()}
    missing = scraped - listed
    assert not missing, f"docs/METRICS.md does not list {sorted(missing)}"


# ------------------------------------------------------------------ logs


def test_logs_are_one_json_object_a_line_without_credentials(observed: Observed) -> None:
    for name in ("scheduler", "seed", "peer"):
        lines = [line for line in observed.logs[name].splitlines() if line.strip()]
        assert lines, f"{name} logged nothing"
        records = [json.loads(line) for line in lines]  # every line parses
        for r in records:
            assert {"time", "level", "logger", "message"} <= r.keys(), r
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]), r["time"]
        assert any("task_id" in r for r in records) or name == "scheduler"
    assert any("trace_id" in json.loads(line) for line in observed.logs["peer"].splitlines() if line.strip())
    for name, text in observed.logs.items():
        assert SECRET not in text, f"{name}'s log holds the credential"


# ------------------------------------------------------------------ traces


def test_one_trace_from_dfget_through_daemon_and_scheduler_to_the_parent(observed: Observed) -> None:
    spans = observed.spans
    dfgets = [s for s in spans if s.service == "dfget" and s.attributes.get("url") == observed.task_url]
    assert len(dfgets) == 1, [(s.service, s.name) for s in spans]
    [dfget] = dfgets
    trace = [s for s in spans if s.trace_id == dfget.trace_id]
    by_id = {s.span_id: s for s in trace}

    [download] = [s for s in trace if s.name == "dfdaemon.DownloadTask" and s.parent_id == dfget.span_id]
    assert download.service == "damselfly-daemon"
    register = [s for s in trace if s.name == "scheduler.RegisterPeer"]
    assert register and all(s.service == "damselfly-scheduler" for s in register)
    assert any(s.parent_id == download.span_id for s in register)
    assert any(by_id.get(s.parent_id) in register for s in trace if s.name == "scheduler.Schedule")
    # The parent's side: the seed answered SyncPieces inside this trace (and, when the scheduler
    # triggered it, downloaded from the origin in it too).
    syncs = [s for s in trace if s.name == "dfdaemon.SyncPieces"]
    assert syncs and all(s.parent_id == download.span_id for s in syncs)
    pieces = [s for s in trace if s.name == "piece.Download"]
    assert len(pieces) == 2 and all(s.parent_id == download.span_id for s in pieces)
    assert {s.service for s in trace} == {"dfget", "damselfly-daemon", "damselfly-scheduler"}
