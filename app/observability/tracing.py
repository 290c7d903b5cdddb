"""OpenTelemetry traces, exported over OTLP (HTTP/protobuf) when the standard `OTEL_*` variables ask for it.

On when `OTEL_TRACES_EXPORTER=otlp`, or when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is
set; off by default, with `OTEL_TRACES_EXPORTER=none` and with `OTEL_SDK_DISABLED=true`. Everything else
(endpoint, headers, sampler, batch sizes, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) is read by the
SDK as usual. An unreachable collector never slows a request: spans are exported by a background thread
(BatchSpanProcessor, which drops spans when its queue is full), each export gives up after
`DEFAULT_EXPORT_TIMEOUT_S` unless `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` says otherwise. Nor does it flood
the logs: the exporter's and the batch processor's failure lines (retries, refused connections, a full
queue dropping spans) become one WARNING per `EXPORT_LOG_INTERVAL_S`, which counts the ones not written
(`ExportLogLimit`), so a dead collector cannot trip an alert on ERROR lines. What it trips instead is
`NanochatTraceExportFailing`: every export's spans are counted by result (`CountingExporter`,
`nanochat_trace_export_spans_total{result="ok"|"failed"}`).

What a generation request's trace holds:

    POST /v1/chat/completions            server span (FastAPI instrumentation; W3C traceparent honoured)
    └── chat demo                        gen_ai.* attributes: model, max_tokens, temperature, top_p, usage,
        ├── queue                        finish reasons, response id
        ├── prefill
        └── decode

The generation spans are made when the request ends, from the scheduler's timestamps (monotonic clock,
converted once to epoch nanoseconds), so nothing runs per token. Probes and /metrics are not traced.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Status, StatusCode, Tracer

if TYPE_CHECKING:
    from fastapi import FastAPI

    from app.scheduler import GenerationStream

DEFAULT_SERVICE_NAME = "nanochat"
DEFAULT_EXPORT_TIMEOUT_S = 2.0
EXCLUDED_URLS = "/health$,/ready$,/metrics$"  # regexes searched in the full URL
SUPPORTED_PROTOCOL = "http/protobuf"
TRACER_NAME = "app.observability.tracing"
OPERATIONS = {"/v1/completions": "text_completion"}  # route -> gen_ai.operation.name (else "chat")
FAILED = ("deadline", "error")  # finish reasons that mark the generation span as an error
EXPORT_LOG_INTERVAL_S = 60.0
# the loggers OpenTelemetry writes export failures to: the OTLP/HTTP exporter (its client logs through it),
# and the batch processor (a full queue logs once per dropped span)
EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
)


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for something this service cannot do."""


class ExportLogLimit(logging.Filter):
    """On OpenTelemetry's export loggers: the first warning or error in each `interval_s` goes out as one
    WARNING, its traceback reduced to the exception's message; the others are dropped and counted, and the
    next line that goes out says how many. Lines below WARNING pass untouched."""

    def __init__(
        self, interval_s: float = EXPORT_LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()  # the exporter thread and a flush on another thread log at once
        self._quiet_until = -math.inf
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        with self._lock:
            now = self.clock()
            if now < self._quiet_until:
                self._dropped += 1
                return False
            self._quiet_until = now + self.interval_s
            dropped, self._dropped = self._dropped, 0
        message = f"trace export: {record.getMessage().rstrip('.')}"
        if record.exc_info and record.exc_info[1] is not None:
            message += f": {record.exc_info[1]!r}"
        if dropped:
            message += f" ({dropped} more such lines since the last one were not written)"
        record.msg = f"{message}; at most one such line every {self.interval_s:g} s"
        record.args = None
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


EXPORT_LOG_LIMIT = ExportLogLimit()


def limit_export_logs() -> ExportLogLimit:
    """Put EXPORT_LOG_LIMIT on OpenTelemetry's export loggers, in place of any other ExportLogLimit: one
    count and one line a minute for all of them."""
    for name in EXPORT_LOGGERS:
        logger = logging.getLogger(name)
        for other in [f for f in logger.filters if isinstance(f, ExportLogLimit)]:
            logger.removeFilter(other)
        logger.addFilter(EXPORT_LOG_LIMIT)
    return EXPORT_LOG_LIMIT


class CountingExporter(SpanExporter):
    """Passes each batch on to `exporter`, then calls `record(ok, spans)`: whether the export succeeded and
    how many spans it carried (an export that raised counts as failed, and the error goes on up)."""

    def __init__(self, exporter: SpanExporter, record: Callable[[bool, int], None]) -> None:
        self.exporter = exporter
        self.record = record

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.exporter.export(spans)
        except Exception:
            self.record(False, len(spans))
            raise
        self.record(result == SpanExportResult.SUCCESS, len(spans))
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)


def tracing_requested(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables turn tracing on (see the module docstring)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = [e.strip().lower() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    if exporters:
        unsupported = sorted(set(exporters) - {"otlp", "none"})
        if unsupported:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={','.join(unsupported)} is not supported: use otlp, or none to turn "
                "tracing off"
            )
        return "otlp" in exporters
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def provider_from_env(
    env: Mapping[str, str] = os.environ,
    version: str = "",
    record: Callable[[bool, int], None] | None = None,
) -> TracerProvider | None:
    """A TracerProvider exporting over OTLP/HTTP as the OTEL_* variables say, or None when tracing is off.
    With `record`, each export's outcome goes to it (`CountingExporter`)."""
    if not tracing_requested(env):
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol.strip() != SUPPORTED_PROTOCOL:
        raise TracingConfigError(
            f"OTLP protocol {protocol.strip()!r} is not supported: use {SUPPORTED_PROTOCOL} (the collector's "
            "port 4318)"
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    timeout_set = env.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or env.get("OTEL_EXPORTER_OTLP_TIMEOUT")
    exporter: SpanExporter = OTLPSpanExporter(timeout=None if timeout_set else DEFAULT_EXPORT_TIMEOUT_S)
    if record is not None:
        exporter = CountingExporter(exporter, record)
    limit_export_logs()
    return tracer_provider(exporter, version)


def tracer_provider(exporter: SpanExporter, version: str = "") -> TracerProvider:
    """A provider batching spans to `exporter` (tests pass an in-memory exporter)."""
    resource = Resource.create({SERVICE_VERSION: version} if version else {})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def instrument(app: FastAPI, provider: TracerProvider) -> Tracer:
    """Trace the app's requests (not the probes, not each ASGI send/receive); the tracer for the
    generation spans."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS, exclude_spans=["receive", "send"]
    )
    return provider.get_tracer(TRACER_NAME)


def operation_name(route: str) -> str:
    return OPERATIONS.get(route, "chat")


def epoch_offset_ns() -> int:
    """Now's wall clock minus the monotonic clock. Read when a span is recorded, not once per process: the
    wall clock may be slewed or stepped (NTP) while the server runs, and the OpenTelemetry SDK stamps the
    server span with the wall clock of its own moment."""
    return time.time_ns() - time.monotonic_ns()


def epoch_ns(monotonic_s: float, offset_ns: int | None = None) -> int:
    return int(monotonic_s * 1e9) + (epoch_offset_ns() if offset_ns is None else offset_ns)


def record_generation(
    tracer: Tracer,
    stream: GenerationStream,
    *,
    operation: str,
    model: str,
    response_id: str,
    finish: str,
) -> None:
    """The generation span and its queue / prefill / decode children, under the current (server) span,
    which has ended already when the response's last byte went out."""
    if not trace.get_current_span().get_span_context().trace_flags.sampled:  # sampled out: nothing to do
        return
    submitted = stream.submitted_at
    offset = (
        epoch_offset_ns()
    )  # one conversion for every time of this generation: its spans stay back to back
    end = epoch_ns(submitted + stream.duration_s, offset) if stream.duration_s is not None else time.time_ns()
    params = stream.params
    attributes: dict = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": "nanochat",
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.request.max_tokens": params.max_tokens,
        "gen_ai.request.temperature": float(params.temperature),
        "gen_ai.request.top_p": float(params.top_p),
        "gen_ai.request.choice.count": params.n,
        "gen_ai.usage.input_tokens": stream.prompt_tokens,
        "gen_ai.usage.output_tokens": stream.completion_tokens,
        "gen_ai.response.id": response_id,
        "gen_ai.response.finish_reasons": [reason for _, reason in sorted(stream.finish_reasons.items())]
        or [finish],
    }
    if params.top_k is not None:
        attributes["gen_ai.request.top_k"] = params.top_k
    if params.seed is not None:
        attributes["gen_ai.request.seed"] = params.seed
    span = tracer.start_span(
        f"{operation} {model}", start_time=epoch_ns(submitted, offset), attributes=attributes
    )
    inside = trace.set_span_in_context(span)
    marks = [submitted + s for s in (stream.queue_wait_s, stream.prefill_done_s) if s is not None]
    starts = [epoch_ns(mark, offset) for mark in (submitted, *marks)]
    for name, start, stop in zip(("queue", "prefill", "decode"), starts, [*starts[1:], end], strict=False):
        tracer.start_span(name, context=inside, start_time=start).end(end_time=max(start, stop))
    if finish in FAILED:
        span.set_status(Status(StatusCode.ERROR, finish))
    span.end(end_time=end)
