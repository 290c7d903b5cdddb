"""The overhead benchmark's own parts (the benchmark itself is `make bench-observability`): its collector
stand-in takes real OTLP/HTTP exports, and bad arguments are one line and exit 2."""

from __future__ import annotations

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.observability import tracing
from bench import observability as bench_observability


def test_collector_stand_in_accepts_otlp_exports() -> None:
    memory = InMemorySpanExporter()
    provider = tracing.tracer_provider(memory)
    with provider.get_tracer("test").start_as_current_span("work"):
        pass
    provider.force_flush()
    spans = memory.get_finished_spans()
    with bench_observability.collector() as (url, received):
        exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", timeout=5)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        exporter.shutdown()
    assert received["requests"] == 1 and received["bytes"] > 0
    provider.shutdown()


def test_bad_arguments(capsys) -> None:
    assert bench_observability.main(["--checkpoint", "/no/such/folder"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert bench_observability.main(["--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err
