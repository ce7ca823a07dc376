"""What a span may hold when it leaves the process: an exception's type, masked message and frames,
never its source text; and tracing stays off (nothing instrumented) without an OTLP endpoint."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from coffeeping.common.tracing import _Masked, tracing_configured


def test_recorded_exceptions_keep_frames_and_lose_source_text_and_secrets():
    kept = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Masked(kept)))
    tracer = provider.get_tracer("test")

    def fail(secret: str) -> None:
        raise RuntimeError(f"refresh failed for ya29.{secret}")

    with tracer.start_as_current_span("work") as span:
        try:
            fail("A0ARrdaM-very-secret")
        except RuntimeError as exc:
            span.record_exception(exc)
    (finished,) = kept.get_finished_spans()
    (event,) = [e for e in finished.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "RuntimeError"
    assert "very-secret" not in event.attributes["exception.message"]
    frames = event.attributes["exception.stacktrace"].splitlines()
    assert frames and all(" in " in frame and "test_tracing.py:" in frame for frame in frames)
    assert "raise RuntimeError" not in event.attributes["exception.stacktrace"]


def test_tracing_is_on_only_with_an_otlp_endpoint():
    assert not tracing_configured({})
    assert tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing_configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not tracing_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"})
