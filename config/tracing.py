"""OpenTelemetry tracing: off unless an exporter is configured.

- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (standard) or ``CELERIAC_TRACING=otlp``: OTLP over
  HTTP, with the SDK's standard OTEL_* variables.
- ``CELERIAC_TRACING=jsonl:/path/spans.jsonl``: one JSON object per finished span,
  appended to a file (for tests and for looking without a collector).

Spans: each HTTP request (Flask instrumentation) -> each step task (Celery
instrumentation; the trace context rides in the message headers, injected by
whoever enqueues the step) -> each provider or tool call (spans in the core).
Log lines carry the trace id (see config.logging).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)


class JsonLinesExporter(SpanExporter):
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            context = span.get_span_context()
            parent = span.parent
            lines.append(json.dumps({
                "name": span.name,
                "trace_id": f"{context.trace_id:032x}" if context else None,
                "span_id": f"{context.span_id:016x}" if context else None,
                "parent_id": f"{parent.span_id:016x}" if parent else None,
                "service": span.resource.attributes.get("service.name"),
                "attributes": {k: str(v) for k, v in (span.attributes or {}).items()},
            }))
        with self._lock, self.path.open("a") as fh:
            fh.write("\n".join(lines) + "\n")
        return SpanExportResult.SUCCESS


def configure_tracing(service: str, mode: str | None) -> bool:
    """Install a tracer provider for this process; False when tracing is off.
    ``mode`` is ``Settings.tracing_mode``."""
    if mode is None:
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if mode.startswith("jsonl:"):
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(Path(mode[6:]))))
    elif mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise SystemExit(f"CELERIAC_TRACING={mode!r}: use otlp or jsonl:<path>")
    trace.set_tracer_provider(provider)
    return True
