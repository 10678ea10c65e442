"""OpenTelemetry tracing, off unless ``tracing.endpoint`` (or a test) turns it on.

One download is one trace: dfget starts it and sends W3C ``traceparent`` in
its gRPC metadata; the daemon's download span is that span's child and sends
its own context to the scheduler (AnnouncePeer) and to parents (SyncPieces);
the scheduler and the parents make spans under it. Spans are exported over
OTLP/HTTP (``tracing.endpoint``, e.g. ``http://collector:4318/v1/traces``).

Off is the default and costs nothing on the hot path: ``opentelemetry`` is not
imported, :func:`span` returns one shared no-op context manager and
:func:`metadata` an empty tuple, so no span objects exist per download or piece.

Owner: the process. :func:`configure` (once at start, or per test with an
in-memory exporter) sets the module's provider; :func:`shutdown` flushes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
_provider: TracerProvider | None = None
_NOOP = contextlib.nullcontext(None)


def enabled() -> bool:
    return _provider is not None


def configure(
    endpoint: str = "",
    *,
    service: str = "damselfly",
    headers: Mapping[str, str] | None = None,
    exporter: SpanExporter | None = None,
) -> bool:
    """Turn tracing on: spans to the OTLP/HTTP ``endpoint`` (sent with ``headers``), or to
    ``exporter`` (tests, exported synchronously). Neither: tracing stays off. True when on."""
    global _provider
    if not endpoint and exporter is None:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError as e:
        raise RuntimeError(
            f"tracing.endpoint is set but OpenTelemetry is not installed ({e.name}): "
            "pip install 'damselfly[tracing]'"
        ) from e
    shutdown()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        otlp = OTLPSpanExporter(endpoint=endpoint, headers=dict(headers or {}))
        provider.add_span_processor(BatchSpanProcessor(otlp))
        log.info("tracing to %s as %s", endpoint, service)
    _provider = provider
    return True


def configure_from_env(service: str) -> bool:
    """Tracing for a short-lived command (dfget): on when OpenTelemetry's standard
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (a traces URL) or ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (a base URL, ``/v1/traces`` added) is set. Reads two variables, imports nothing, when off."""
    url = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
    if not url and (base := os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")):
        url = base.rstrip("/") + "/v1/traces"
    return configure(url, service=service) if url else False


def shutdown() -> None:
    """Flush and turn tracing off."""
    global _provider
    provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


def _context_from(metadata: Sequence[tuple[str, Any]] | Mapping[str, str] | None) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier = dict(metadata.items() if isinstance(metadata, Mapping) else (metadata or ()))
    carrier = {k: v for k, v in carrier.items() if isinstance(v, str)}
    return TraceContextTextMapPropagator().extract(carrier)


def span(
    component: str,
    name: str,
    *,
    remote: Sequence[tuple[str, Any]] | Mapping[str, str] | None = None,
    attributes: Mapping[str, str | int | bool] | None = None,
) -> contextlib.AbstractContextManager[Span | None]:
    """A span named ``name`` made by ``component`` (``dfget``, ``daemon``, ``scheduler``),
    current inside the ``with``; a child of the ``traceparent`` in ``remote`` (gRPC
    metadata) when that carries one, unless the current span is already in that trace
    (then of the current span, the innermost); else of the current span. A no-op when off."""
    if _provider is None:
        return _NOOP
    return _span(_provider, component, name, remote, attributes)


@contextlib.contextmanager
def _span(
    provider: TracerProvider,
    component: str,
    name: str,
    remote: Sequence[tuple[str, Any]] | Mapping[str, str] | None,
    attributes: Mapping[str, str | int | bool] | None,
) -> Iterator[Span | None]:
    parent = _context_from(remote) if remote is not None else None
    if parent is not None:
        from opentelemetry import trace

        sent = trace.get_current_span(parent).get_span_context()
        here = trace.get_current_span().get_span_context()
        if not sent.is_valid or (here.is_valid and here.trace_id == sent.trace_id):
            parent = None  # no traceparent, or already inside that trace: under the current span
    tracer = provider.get_tracer(f"damselfly.{component}")
    with tracer.start_as_current_span(name, context=parent, attributes=attributes) as current:
        yield current


def current_ids() -> dict[str, str]:
    """The current span's trace and span IDs in hex, for log lines ({} outside a span or when off)."""
    if _provider is None:
        return {}
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}


def metadata() -> tuple[tuple[str, str], ...]:
    """gRPC metadata that carries the current span to the callee (empty when off or outside a span)."""
    if _provider is None:
        return ()
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return tuple(carrier.items())


def with_metadata(
    base: Sequence[tuple[str, str]] | None,
) -> Sequence[tuple[str, str]] | None:
    """``base`` plus :func:`metadata` (``base`` itself when tracing is off)."""
    if _provider is None:
        return base
    extra = metadata()
    if not extra:
        return base
    return (*(base or ()), *extra)
