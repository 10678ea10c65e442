"""One trace per download across dfget, the daemon, the scheduler and the parent.

The swarm runs in this process, so every component's spans reach one SDK
in-memory exporter; the tracer's name says which component made a span
(``damselfly.dfget``, ``damselfly.daemon``, ``damselfly.scheduler``). dfget is
the real client (its HTTP/2 call on the daemon's socket, in a worker thread);
everything between the components travels as W3C ``traceparent`` in gRPC
metadata, as it would between processes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from damselfly import tracing
from damselfly.cli.get import GetOptions, get_async
from damselfly.daemon.download.tasks import task_id_for
from damselfly.domain import DownloadSpec
from damselfly.units import MiB

from .harness import Swarm, sha256_file


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracing.configure(exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def component(span: ReadableSpan) -> str:
    assert span.instrumentation_scope is not None
    return span.instrumentation_scope.name.removeprefix("damselfly.")


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_download_is_one_trace_from_dfget_to_the_parent(
    swarm: Swarm, spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    src = swarm.file("traced.bin", 6 * MiB)
    await swarm.add_daemon("seed", seed=True)
    peer = await swarm.add_daemon("peer")
    url = swarm.url("traced.bin")
    # The seed holds the task first (its own trace), so the peer's parent is the seed.
    assert (await swarm.download("seed", url)).ok
    before = {s.context.trace_id for s in spans.get_finished_spans()}

    err = io.StringIO()
    out = tmp_path / "traced.out"
    opts = GetOptions(url=url, output=str(out), endpoint=str(peer.config.socket_path), progress=False)
    assert await get_async(opts, stderr=err) == 0, err.getvalue()
    assert sha256_file(out) == sha256_file(src)

    [dfget] = [s for s in spans.get_finished_spans() if component(s) == "dfget"]
    trace_id = dfget.context.trace_id
    assert trace_id not in before
    mine = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]
    by_name: dict[str, list[ReadableSpan]] = {}
    for s in mine:
        by_name.setdefault(s.name, []).append(s)

    # dfget -> the daemon's DownloadTask (from the traceparent dfget sent on the socket).
    assert dfget.parent is None
    [download] = by_name["dfdaemon.DownloadTask"]
    assert component(download) == "daemon"
    assert download.parent is not None and download.parent.is_remote
    assert parent_of(download) == dfget.context.span_id
    # The daemon -> the scheduler: the register span is the download's child (AnnouncePeer
    # metadata), the scheduling decision inside it.
    [register] = by_name["scheduler.RegisterPeer"]
    assert component(register) == "scheduler"
    assert parent_of(register) == download.context.span_id
    schedules = by_name["scheduler.Schedule"]
    assert schedules and all(component(s) == "scheduler" for s in schedules)
    assert parent_of(schedules[0]) == register.context.span_id
    # The daemon -> its parent, the seed: SyncPieces there is the download's child too.
    syncs = by_name["dfdaemon.SyncPieces"]
    assert syncs and all(parent_of(s) == download.context.span_id for s in syncs)
    assert {(s.attributes or {}).get("task.id") for s in syncs} == {task_id_for(DownloadSpec(url=url))}
    # And the pieces it fetched from the seed, one span each.
    pieces = by_name["piece.Download"]  # 6 MiB: two 4 MiB pieces
    assert sorted((s.attributes or {}).get("piece.number", -1) for s in pieces) == [0, 1]
    assert all(parent_of(s) == download.context.span_id for s in pieces)
    # Nothing else of this download went astray into another trace.
    assert {component(s) for s in mine} == {"dfget", "daemon", "scheduler"}


def test_off_by_default_makes_no_span_objects() -> None:
    assert not tracing.enabled()
    first = tracing.span("daemon", "piece.Download")
    second = tracing.span("daemon", "piece.Download", attributes={"piece.number": 1})
    assert first is second  # one shared no-op, nothing made per call
    with first as current:
        assert current is None
    assert tracing.metadata() == ()
    assert tracing.with_metadata((("k", "v"),)) == (("k", "v"),)
    assert tracing.current_ids() == {}
