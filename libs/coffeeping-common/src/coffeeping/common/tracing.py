"""Traces: OpenTelemetry across HTTP, gRPC, SQL and AMQP, exported over OTLP when an endpoint is set.

Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set
and ``OTEL_SDK_DISABLED`` is not ``true``; otherwise nothing is instrumented and nothing is exported, at
no cost. The standard ``OTEL_*`` variables (sampler, batch delays, headers, ``OTEL_RESOURCE_ATTRIBUTES``)
apply as the OpenTelemetry SDK reads them. When it is on:

- gRPC servers and channels, ``requests`` and every engine made by ``db.make_engine`` are instrumented
  with the maintained instrumentations, and the gateway instruments its Flask apps (``trace_flask``);
  ``traceparent`` travels in gRPC metadata and HTTP headers;
- the scheduler's due steps are traces of their own (``job_span``), and each Gmail request is a client
  span (``client_span``, from ``access_log.RecordingHttp``) named by its method;
- an event written to an outbox keeps the writer's trace context in its envelope (``trace_context``),
  the relay publishes it inside a producer span and puts that span's ``traceparent`` in the AMQP
  headers, and the consumer handles it inside a consumer span that continues the trace
  (``consumer_span``);
- log lines carry ``trace_id`` and ``span_id`` (``logging.JsonFormatter``).

What a span holds: route templates, RPC names, SQL text with placeholders (never the values), event
types and ids. An exception recorded on a span keeps its type and where it was raised (file, line,
function), as log lines do; its message is masked like a log line's and its source text is dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind

_ENABLED_FOR: int | None = None  # the pid that set tracing up (a forked worker sets it up again)


def tracing_configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces."""
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return bool(endpoint) and environ.get("OTEL_SDK_DISABLED", "").strip().lower() != "true"


def tracing_enabled() -> bool:
    return _ENABLED_FOR is not None


def setup_tracing(service: str) -> None:
    """Turn tracing on for this process when the environment asks for it (idempotent per process)."""
    global _ENABLED_FOR
    if os.getpid() == _ENABLED_FOR or not tracing_configured():
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.grpc import GrpcInstrumentorClient, GrpcInstrumentorServer
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    first = _ENABLED_FOR is None
    _ENABLED_FOR = os.getpid()
    if not first:  # a forked child: the provider's batch processor restarts its own thread after a fork
        return
    from opentelemetry.instrumentation.grpc import filters

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: f"coffeeping-{service}"}),
                              sampler=_sampler())
    provider.add_span_processor(BatchSpanProcessor(_Masked(OTLPSpanExporter())))
    trace.set_tracer_provider(provider)
    # Health checks (the probes, every few seconds) are not requests anyone follows.
    not_health = filters.negate(filters.health_check())
    GrpcInstrumentorServer(filter_=not_health).instrument()  # type: ignore[no-untyped-call]
    GrpcInstrumentorClient(filter_=not_health).instrument()  # type: ignore[no-untyped-call]
    RequestsInstrumentor().instrument()
    # Wraps ``sqlalchemy.create_engine``, which ``db.make_engine`` looks up when it is called. The
    # instrumentation declares SQLAlchemy < 2.1; it uses only the engine's cursor events, which 2.1 keeps
    # (tests/e2e/test_traces.py sees the statements' spans).
    SQLAlchemyInstrumentor().instrument(skip_dep_check=True)


def _sampler() -> Any:
    """``OTEL_TRACES_SAMPLER`` when the operator set one; otherwise follow the caller's decision, and
    start traces only where work enters a service (an HTTP request, an RPC, a consumed event). A
    background loop's statements (the scheduler's, the relay's polls) would otherwise each be a trace
    of their own."""
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        Sampler,
        SamplingResult,
        _get_from_env_or_default,
    )

    if os.environ.get("OTEL_TRACES_SAMPLER"):
        return _get_from_env_or_default()

    class EntryPoints(Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None) -> SamplingResult:
            chosen = ALWAYS_ON if kind in (SpanKind.SERVER, SpanKind.CONSUMER) else ALWAYS_OFF
            return chosen.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return "EntryPoints"

    return ParentBased(root=EntryPoints())


def trace_flask(app: Any) -> None:
    """Give each request to ``app`` a server span named by its route template, continuing the caller's
    ``traceparent`` (when tracing is on)."""
    if tracing_enabled():
        from opentelemetry.instrumentation.flask import FlaskInstrumentor

        # Not the probes' addresses, nor the export: its body is streamed, and the instrumentation cannot
        # close a streamed response's span in its thread (the context leaked into the thread's next
        # requests, which all joined that trace; tests/e2e/test_traces.py).
        FlaskInstrumentor.instrument_app(  # type: ignore[no-untyped-call]
            app, excluded_urls="healthz,.well-known/security.txt,v1/export")


def trace_context() -> dict[str, str] | None:
    """The current trace context as W3C headers (``traceparent``), to store with an event; None outside
    a trace."""
    if not tracing_enabled() or not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


_tracer = trace.get_tracer("coffeeping")


@contextmanager
def _span(name: str, kind: SpanKind, attributes: Mapping[str, str | int],
          parent: Mapping[str, str] | None = None) -> Iterator[Any]:
    """A span of our own, current for the block (the child of ``parent``'s W3C headers when given); yields
    it, or None without tracing."""
    if not tracing_enabled():
        yield None
        return
    context = propagate.extract(parent) if parent is not None else None
    with _tracer.start_as_current_span(name, context=context, kind=kind, attributes=dict(attributes)) as span:
        yield span


@contextmanager
def producer_span(routing_key: str, stored: Mapping[str, str] | None, attributes: Mapping[str, str]) -> Iterator[
        dict[str, str]]:
    """A producer span for publishing one event, child of the trace it was written in (``stored``, from
    its envelope); yields the AMQP headers that carry this span to the consumer (empty without tracing)."""
    if not stored:
        yield {}
        return
    with _span(f"{routing_key} publish", SpanKind.PRODUCER,
               {"messaging.system": "rabbitmq", "messaging.destination.name": routing_key, **attributes},
               parent=stored) as span:
        headers: dict[str, str] = {}
        if span is not None:
            propagate.inject(headers)
        yield headers


@contextmanager
def consumer_span(event_type: str, headers: Mapping[str, Any] | None, attributes: Mapping[str, str]) -> Iterator[None]:
    """Handle one consumed event inside a consumer span that continues the trace in its AMQP headers."""
    carrier = {k: str(v) for k, v in (headers or {}).items() if k in ("traceparent", "tracestate")}
    with _span(f"{event_type} process", SpanKind.CONSUMER,
               {"messaging.system": "rabbitmq", "messaging.destination.name": event_type, **attributes},
               parent=carrier):
        yield


@contextmanager
def job_span(name: str, attributes: Mapping[str, str]) -> Iterator[None]:
    """A job a background worker took from its table (the scheduler's due step): a trace of its own, as a
    consumed event is; the events it writes continue it."""
    with _span(name, SpanKind.CONSUMER, attributes):
        yield


def client_span(name: str, attributes: Mapping[str, str | int]) -> AbstractContextManager[Any]:
    """A call to an API no instrumentation covers (Gmail's, through httplib2); yields the span (None
    without tracing) for attributes known only after the call."""
    return _span(name, SpanKind.CLIENT, attributes)


def current_trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, or None."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class _Masked(SpanExporter):
    """An exporter that hands its spans on with exceptions reduced to what a log line keeps: the type,
    the masked message and the frames (file, line, function), never source text or values."""

    def __init__(self, exporter: SpanExporter) -> None:
        self._exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self._exporter.export([_masked(span) for span in spans])

    def shutdown(self) -> None:
        self._exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


def _masked(span: ReadableSpan) -> ReadableSpan:
    if not any(event.name == "exception" for event in span.events):
        return span
    from opentelemetry.sdk.trace import Event

    from .logging import mask_secrets

    events = []
    for event in span.events:
        if event.name == "exception":
            attributes = dict(event.attributes or {})
            attributes["exception.message"] = mask_secrets(str(attributes.get("exception.message", "")))
            attributes["exception.stacktrace"] = _frames(str(attributes.get("exception.stacktrace", "")))
            event = Event(event.name, attributes, event.timestamp)
        events.append(event)
    return ReadableSpan(name=span.name, context=span.context, parent=span.parent, resource=span.resource,
                        attributes=span.attributes, events=events, links=span.links, kind=span.kind,
                        status=span.status, start_time=span.start_time, end_time=span.end_time,
                        instrumentation_scope=span.instrumentation_scope)


def _frames(stacktrace: str) -> str:
    """The ``File "...", line N, in f`` lines of a formatted traceback, as ``file:N in f``."""
    frames = []
    for line in stacktrace.splitlines():
        line = line.strip()
        if line.startswith('File "'):
            try:
                path, rest = line[6:].split('", line ', 1)
                number, _, function = rest.partition(", in ")
                frames.append(f"{Path(path).name}:{number} in {function}")
            except ValueError:
                continue
    return "\n".join(frames[-30:])


__all__ = ["client_span", "consumer_span", "current_trace_ids", "job_span", "producer_span", "setup_tracing",
           "trace_context", "trace_flask", "tracing_configured", "tracing_enabled"]
