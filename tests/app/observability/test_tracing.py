"""Traces of the in-process service (OpenTelemetry's in-memory exporter): the server span honours W3C
traceparent, each generation request gets a GenAI span with queue / prefill / decode children timed by the
scheduler, probes are not traced, and the OTEL_* variables decide whether tracing is on; a collector that
refuses connections writes one warning a minute, with a count, not a line per failure."""

from __future__ import annotations

import json
import logging
import os
import re
import socket

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from app.observability import tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
HELLO = [{"role": "user", "content": "Hello! Who are you?"}]


def by_name(spans) -> dict:
    return {span.name: span for span in spans}


def sse_data(text: str) -> list:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def test_streamed_chat_trace_continues_the_callers_trace(traced) -> None:
    traced.spans()
    body = {"messages": HELLO, "max_tokens": 12, "temperature": 0.5, "top_p": 0.9, "stream": True}
    body["stream_options"] = {"include_usage": True}
    response = traced.client.post(
        "/v1/chat/completions", json=body, headers={"traceparent": TRACEPARENT, "X-Request-ID": "trace-me-1"}
    )
    assert response.status_code == 200
    usage = sse_data(response.text)[-1]["usage"]
    spans = by_name(traced.spans())

    server = spans["POST /v1/chat/completions"]
    assert server.kind is SpanKind.SERVER
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID and server.parent.is_remote
    assert not any(name.startswith("POST /v1/chat/completions http") for name in spans)  # no send/receive

    generation = spans["chat demo"]
    assert generation.parent.span_id == server.context.span_id
    assert generation.context.trace_id == server.context.trace_id
    attributes = dict(generation.attributes)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "demo"
    assert attributes["gen_ai.request.max_tokens"] == 12
    assert attributes["gen_ai.request.temperature"] == 0.5
    assert attributes["gen_ai.request.top_p"] == 0.9
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert attributes["gen_ai.response.finish_reasons"] in (("stop",), ("length",))
    assert attributes["gen_ai.response.id"] == "chatcmpl-trace-me-1"
    assert generation.status.status_code is StatusCode.UNSET

    phases = [spans["queue"], spans["prefill"], spans["decode"]]
    for phase in phases:
        assert phase.parent.span_id == generation.context.span_id
    # back to back, inside the generation span, inside the server span
    assert phases[0].start_time == generation.start_time
    assert phases[0].end_time == phases[1].start_time and phases[1].end_time == phases[2].start_time
    assert phases[2].end_time == generation.end_time
    assert server.start_time <= generation.start_time <= generation.end_time <= server.end_time
    assert all(p.end_time >= p.start_time for p in phases)


def test_completion_trace_and_a_fresh_trace_without_traceparent(traced) -> None:
    traced.spans()
    response = traced.client.post("/v1/completions", json={"prompt": "Once upon a time", "max_tokens": 3})
    assert response.status_code == 200
    spans = by_name(traced.spans())
    server = spans["POST /v1/completions"]
    assert server.parent is None and format(server.context.trace_id, "032x") != TRACE_ID
    generation = spans["text_completion demo"]
    assert generation.attributes["gen_ai.operation.name"] == "text_completion"
    assert generation.attributes["gen_ai.response.id"] == response.json()["id"]
    assert generation.attributes["gen_ai.response.finish_reasons"] == ("length",)


def test_web_protocol_is_a_chat(traced) -> None:
    traced.spans()
    response = traced.client.post("/chat/completions", json={"messages": HELLO, "max_tokens": 3})
    assert response.status_code == 200
    spans = by_name(traced.spans())
    assert spans["chat demo"].attributes["gen_ai.request.top_k"] == 50  # the web protocol's default
    assert {"queue", "prefill", "decode"} <= set(spans)


def test_probes_and_metrics_are_not_traced(traced) -> None:
    traced.spans()
    for path in ("/health", "/ready", "/metrics"):
        assert traced.client.get(path, headers={"traceparent": TRACEPARENT}).status_code == 200
    assert traced.spans() == []
    assert traced.client.get("/v1/models").status_code == 200
    assert [span.name for span in traced.spans()] == ["GET /v1/models"]


def test_rejected_request_has_a_server_span_only(traced) -> None:
    traced.spans()
    response = traced.client.post("/v1/chat/completions", json={"messages": []})
    assert response.status_code == 400
    spans = traced.spans()
    assert [span.name for span in spans] == ["POST /v1/chat/completions"]
    attributes = spans[0].attributes  # the old HTTP conventions unless OTEL_SEMCONV_STABILITY_OPT_IN says
    assert attributes.get("http.response.status_code", attributes.get("http.status_code")) == 400


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_the_otel_variables_turn_tracing_on(env: dict[str, str], on: bool) -> None:
    assert tracing.tracing_requested(env) is on
    provider = tracing.provider_from_env(env)
    assert (provider is not None) is on
    if provider is not None:
        assert provider.resource.attributes["service.name"] == "nanochat"
        provider.shutdown()


def test_service_name_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "chat-eu")
    provider = tracing.provider_from_env({"OTEL_TRACES_EXPORTER": "otlp"}, version="1.2.3")
    assert provider.resource.attributes["service.name"] == "chat-eu"
    assert provider.resource.attributes["service.version"] == "1.2.3"
    provider.shutdown()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin is not supported"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "'grpc' is not supported"),
    ],
)
def test_unsupported_settings_are_clear_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(tracing.TracingConfigError, match=message):
        tracing.provider_from_env(env)


# ---- a dead collector ------------------------------------------------------------------------------------
def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def minute(monkeypatch):
    """A fresh ExportLogLimit on a clock the test moves; taken off the loggers afterwards."""
    now = [1000.0]
    limit = tracing.ExportLogLimit(clock=lambda: now[0])
    monkeypatch.setattr(tracing, "EXPORT_LOG_LIMIT", limit)
    yield now
    for name in tracing.EXPORT_LOGGERS:
        logging.getLogger(name).removeFilter(limit)


def test_a_dead_collector_is_one_warning_a_minute_with_a_count(monkeypatch, caplog, minute) -> None:
    """The real OTLP/HTTP exporter against a port that refuses connections: 6 failed exports in a minute
    write one WARNING (no ERROR); the next minute's first failure writes one more, counting the others."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0.5")  # give up at once rather than retry
    provider = tracing.provider_from_env(os.environ)
    tracer = provider.get_tracer("test")
    caplog.set_level(logging.INFO)

    def failed_exports(count: int) -> None:
        for _ in range(count):
            tracer.start_span("lost").end()
            assert provider.force_flush(timeout_millis=30_000)

    def export_lines() -> list[logging.LogRecord]:
        records = caplog.records
        return [r for r in records if r.name.startswith("opentelemetry") and r.levelno >= logging.WARNING]

    try:
        failed_exports(6)
        (line,) = export_lines()
        assert line.levelno == logging.WARNING and not line.exc_info
        message = line.getMessage()
        assert message.startswith("trace export: ") and "at most one such line every 60 s" in message
        minute[0] += 61
        failed_exports(1)
        _, second = export_lines()
        dropped = re.search(r"\((\d+) more such lines since the last one", second.getMessage())
        assert dropped and int(dropped[1]) >= 5, second.getMessage()
        assert second.levelno == logging.WARNING
    finally:
        provider.shutdown()


def test_export_log_limit_passes_lines_below_warning() -> None:
    limit = tracing.ExportLogLimit(clock=lambda: 0.0)
    debug = logging.makeLogRecord({"levelno": logging.DEBUG, "msg": "a"})
    error = logging.makeLogRecord({"levelno": logging.ERROR, "msg": "b %s", "args": ("x",)})
    assert limit.filter(debug) and limit.filter(debug)
    assert limit.filter(error) and error.levelno == logging.WARNING and "b x" in error.getMessage()
    assert not limit.filter(logging.makeLogRecord({"levelno": logging.ERROR, "msg": "c"}))
