"""Logs: what real `python -m app` processes print (JSON lines with Cloud Logging's fields, the request id on
every line of a request, one access line, the trace of a traced request, content only when asked), the
formatters on their own, and settings that are refused with a clear message."""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from app.config import Settings
from app.observability import context, tracing
from app.observability.logging import (
    SPAN_FIELD,
    TRACE_FIELD,
    JsonFormatter,
    TextFormatter,
    logging_config,
    severity,
)

if TYPE_CHECKING:
    from tests.servers import Server

TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
SEVERITIES = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
HTTP_REQUEST_FIELDS = {"requestMethod", "requestUrl", "status", "latency", "responseSize", "userAgent",
                       "remoteIp"}  # fmt: skip
HELLO = [{"role": "user", "content": "Hello! Who are you?"}]


def json_lines(server: Server) -> list[dict]:
    """Every line of the server's output, each of which must be one JSON object."""
    lines = []
    for line in server.log().splitlines():
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"not a JSON line: {line!r}")
    return lines


def lines_of(server: Server, request_id: str, timeout: float = 60, logger: str = "app.access") -> list[dict]:
    """The lines of one request, once its line from `logger` is there (it is written after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        mine = [line for line in json_lines(server) if line.get("request_id") == request_id]
        if any(line["logger"] == logger for line in mine) or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def closed_port() -> int:
    return free_port()  # nothing listens there: every export is refused


@pytest.fixture(scope="module")
def traced_server(start_server: Callable[..., Server], closed_port: int) -> Server:
    """Debug logs with content, and traces exported to a collector that is not there."""
    return start_server(
        {
            "NANOCHAT_LOG_LEVEL": "debug",
            "NANOCHAT_LOG_CONTENT": "true",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # export attempts every 0.1 s
            "GOOGLE_CLOUD_PROJECT": "demo-project",
        }
    )


@pytest.mark.integration
def test_every_line_is_json_with_cloud_logging_fields(api_server: Server) -> None:
    response = httpx.post(f"{api_server.url}/v1/chat/completions", json={"messages": HELLO, "max_tokens": 4})
    assert response.status_code == 200
    lines = lines_of(api_server, response.headers["x-request-id"])
    everything = json_lines(api_server)
    assert len(everything) > 3
    for line in everything:
        assert line["severity"] in SEVERITIES, line
        assert isinstance(line["message"], str) and TIME.fullmatch(line["time"]), line
        assert line["logger"], line
    assert any(line["logger"] == "uvicorn.error" for line in everything)  # uvicorn's lines, same format
    assert any(line["logger"] == "app.main" and "ready in" in line["message"] for line in everything)
    (access,) = [line for line in lines if line["logger"] == "app.access"]
    usage = response.json()["usage"]
    assert access["severity"] == "INFO" and access["route"] == "/v1/chat/completions"
    assert access["prompt_tokens"] == usage["prompt_tokens"]
    assert access["completion_tokens"] == usage["completion_tokens"]
    assert access["finish_reason"] == response.json()["choices"][0]["finish_reason"]
    assert access["ttft_s"] > 0 and access["queue_wait_s"] >= 0
    http = access["httpRequest"]
    assert set(http) == HTTP_REQUEST_FIELDS
    assert http["requestMethod"] == "POST" and http["status"] == 200
    assert http["requestUrl"] == f"{api_server.url}/v1/chat/completions"
    assert re.fullmatch(r"\d+\.\d{6}s", http["latency"])
    assert int(http["responseSize"]) == len(response.content)
    assert http["remoteIp"] == "127.0.0.1" and http["userAgent"].startswith("python-httpx")
    # off by default: content, traces; uvicorn's own access line is replaced by ours; probes are debug lines
    assert "prompt" not in access and "completions" not in access and TRACE_FIELD not in access
    assert not any(line["logger"] in ("uvicorn.access", "gunicorn.access") for line in everything)
    assert not any(line["logger"] == "app.access" and line["route"] == "/ready" for line in everything)


@pytest.mark.integration
def test_request_id_and_trace_on_every_line_of_a_request(traced_server: Server) -> None:
    headers = {"X-Request-ID": "log-test-1", "traceparent": TRACEPARENT}
    body = {"messages": HELLO, "max_tokens": 6, "temperature": 0}
    response = httpx.post(f"{traced_server.url}/v1/chat/completions", json=body, headers=headers)
    assert response.status_code == 200 and response.headers["x-request-id"] == "log-test-1"
    lines = lines_of(traced_server, "log-test-1")
    loggers = {line["logger"] for line in lines}
    assert {"app.api.serving", "app.access"} <= loggers  # the debug line from the route, and the access line
    for line in lines:
        assert line[TRACE_FIELD] == f"projects/demo-project/traces/{TRACE_ID}", line
        assert re.fullmatch(r"[0-9a-f]{16}", line[SPAN_FIELD]) and line[SPAN_FIELD] != "b7ad6b7169203331"
        assert line["logging.googleapis.com/trace_sampled"] is True
    (access,) = [line for line in lines if line["logger"] == "app.access"]
    # NANOCHAT_LOG_CONTENT=true: the prompt (as rendered for the model) and what the model wrote
    assert "Hello! Who are you?" in access["prompt"]
    reply = response.json()["choices"][0]["message"]["content"]
    assert access["completions"][0].startswith(reply) or reply in access["completions"][0]
    # a line logged outside any request carries no request id
    assert not any("request_id" in line for line in json_lines(traced_server) if line["logger"] == "app.main")


@pytest.mark.integration
def test_unreachable_collector_never_breaks_requests(traced_server: Server, closed_port: int):
    with httpx.Client(base_url=traced_server.url, timeout=60) as client:
        for _ in range(20):
            response = client.post("/v1/chat/completions", json={"messages": HELLO, "max_tokens": 2})
            assert response.status_code == 200
    deadline = time.monotonic() + 120
    failed = False
    while not failed and time.monotonic() < deadline:  # the exporter really tried, and really failed
        failed = any("export" in line["message"] and line["severity"] in ("WARNING", "ERROR")
                     for line in json_lines(traced_server))  # fmt: skip
        time.sleep(0.1)
    assert failed, f"no failed export logged; the collector port was {closed_port}"
    assert httpx.get(f"{traced_server.url}/ready").status_code == 200
    # what NanochatTraceExportFailing reads: the failed spans counted, none as exported
    spans = wait_for_spans(traced_server, lambda counts: counts["failed"] > 0)
    assert spans["ok"] == 0, spans


def span_counts(server: Server) -> dict[str, float]:
    """`nanochat_trace_export_spans_total` from the server's /metrics, by result."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "nanochat_trace_export_spans_total":
                counts[sample.labels["result"]] = sample.value
    return counts


def wait_for_spans(server: Server, done: Callable[[dict[str, float]], bool]) -> dict[str, float]:
    """The span counts once `done` holds for them (exports run on a background thread)."""
    deadline = time.monotonic() + 120
    counts = span_counts(server)
    while not done(counts):
        assert time.monotonic() < deadline, f"span counts never got there: {counts}"
        time.sleep(0.1)
        counts = span_counts(server)
    return counts


class StalledCollector(ThreadingHTTPServer):
    """An OTLP/HTTP collector on 127.0.0.1 that reads each export and answers none until `release` is set."""

    daemon_threads = True

    def __init__(self) -> None:
        self.release = threading.Event()
        self.held = threading.Semaphore(0)  # one release per export received and held

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:
                handler.rfile.read(int(handler.headers.get("content-length", 0)))
                self.held.release()
                self.release.wait()
                handler.send_response(200)
                handler.send_header("content-length", "0")
                handler.end_headers()

            def log_message(handler, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def stalled_collector() -> Iterator[StalledCollector]:
    collector = StalledCollector()
    thread = threading.Thread(target=collector.serve_forever, daemon=True)
    thread.start()
    yield collector
    collector.release.set()
    collector.shutdown()
    collector.server_close()


@pytest.mark.integration
def test_a_collector_that_never_answers_never_holds_a_request(
    start_server: Callable[..., Server], stalled_collector: StalledCollector
) -> None:
    """No timing: the exporter's wait is 10 minutes and the collector holds the export it received, so a
    request that waited on an export would not finish while the collector holds it; every request does."""
    server = start_server(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{stalled_collector.server_address[1]}",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "600",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
    )
    body = {"messages": HELLO, "max_tokens": 2}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200  # spans to export
        assert stalled_collector.held.acquire(timeout=120), "no export reached the collector"
        for _ in range(20):  # the exporter is stuck in that export now
            assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert not stalled_collector.release.is_set()  # the export was held the whole time


@pytest.mark.integration
def test_spans_a_collector_takes_count_as_exported(
    start_server: Callable[..., Server], stalled_collector: StalledCollector
) -> None:
    """With a collector on 127.0.0.1 that answers every export (200), each request's spans count as ok and
    none as failed; tracing off, the series is not there at all."""
    stalled_collector.release.set()  # answers at once
    server = start_server(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{stalled_collector.server_address[1]}",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
    )
    assert span_counts(server) == {"ok": 0, "failed": 0}  # from 0, before the first export
    body = {"messages": HELLO, "max_tokens": 2}
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for _ in range(3):
            assert client.post("/v1/chat/completions", json=body).status_code == 200
    # a chat request makes a server span and the generation span with its three phases: 15 or more
    spans = wait_for_spans(server, lambda counts: counts["ok"] >= 15)
    assert spans["failed"] == 0, spans
    untraced = start_server({})
    assert span_counts(untraced) == {}


# ---- the formatters ---------------------------------------------------------------------------------
def record(message: str = "hello %s", level: int = logging.INFO, **extra) -> logging.LogRecord:
    made = logging.LogRecord("app.test", level, __file__, 1, message, ("world",), None)
    made.__dict__.update(extra)
    return made


def test_json_formatter_fields() -> None:
    line = json.loads(JsonFormatter(project="p").format(record(httpRequest={"status": 200}, route="/x")))
    assert list(line)[:4] == ["severity", "message", "time", "logger"]
    assert line["message"] == "hello world" and line["logger"] == "app.test" and line["severity"] == "INFO"
    assert line["httpRequest"] == {"status": 200} and line["route"] == "/x"
    assert "request_id" not in line and TRACE_FIELD not in line
    token = context.CURRENT.set(context.RequestInfo("rid-7"))
    try:
        assert json.loads(JsonFormatter().format(record()))["request_id"] == "rid-7"
    finally:
        context.CURRENT.reset(token)


def test_json_formatter_traceback_goes_to_stack_trace() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("it failed: %s", logging.ERROR, exc_info=sys.exc_info())
    line = json.loads(JsonFormatter().format(failed))
    assert line["severity"] == "ERROR" and line["message"] == "it failed: world"
    assert "ValueError: boom" in line["stack_trace"]
    assert "exc_info" not in line


def test_json_formatter_trace_fields_with_and_without_a_project() -> None:
    provider = tracing.tracer_provider(InMemorySpanExporter())
    with provider.get_tracer("test").start_as_current_span("work") as span:
        ids = span.get_span_context()
        with_project = json.loads(JsonFormatter(project="my-project").format(record()))
        bare = json.loads(JsonFormatter(project="").format(record()))
    trace_id, span_id = format(ids.trace_id, "032x"), format(ids.span_id, "016x")
    assert with_project[TRACE_FIELD] == f"projects/my-project/traces/{trace_id}"
    assert bare[TRACE_FIELD] == trace_id
    assert with_project[SPAN_FIELD] == span_id == bare[SPAN_FIELD]
    assert not trace.get_current_span().get_span_context().is_valid
    provider.shutdown()


def test_text_formatter_for_humans() -> None:
    token = context.CURRENT.set(context.RequestInfo("rid-9"))
    try:
        text = TextFormatter().format(record(level=logging.WARNING))
    finally:
        context.CURRENT.reset(token)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d [\d:,]+ WARNING app\.test \[rid-9\]: hello world", text), text
    assert TextFormatter().format(record()).endswith("INFO app.test: hello world")


def test_severities_and_config() -> None:
    assert [severity(n) for n in (5, 10, 20, 30, 40, 50)] == ["DEBUG", "DEBUG", "INFO", "WARNING", "ERROR",
                                                             "CRITICAL"]  # fmt: skip
    config = logging_config("debug", "text")
    assert config["root"]["level"] == "DEBUG"
    assert config["formatters"]["service"]["()"].endswith("TextFormatter")
    assert config["loggers"]["uvicorn.access"]["handlers"] == []  # replaced by the app's access line
    with pytest.raises(ValueError, match="'json' or 'text'"):
        logging_config("info", "xml")


# ---- refused settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("log_format", "xml", "'json' or 'text'"),
        ("log_level", "loud", "expected one of debug, info, warning, error, critical"),
        ("instance_price_per_hour", "-1", "greater than or equal to 0"),
    ],
)
def test_bad_observability_settings(field: str, value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None, **{field: value})


@pytest.mark.slow
@pytest.mark.integration
def test_unsupported_tracing_setting_is_one_clear_line(tmp_path, clean_env: Callable[..., dict[str, str]]):
    done = subprocess.run(
        [sys.executable, "-m", "app", "--port", str(free_port())],
        cwd=tmp_path,
        env=clean_env({"OTEL_TRACES_EXPORTER": "zipkin"}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "OTEL_TRACES_EXPORTER=zipkin is not supported" in done.stderr and "Traceback" not in done.stderr
