"""An in-process service on the demo model whose spans go to memory (OpenTelemetry's in-memory exporter),
for the metrics and tracing tests; the real-process servers of ../conftest.py serve the logging tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.config import Settings
from app.main import create_app
from app.observability import tracing

DEMO_MODEL = Path(__file__).resolve().parents[3] / "models" / "demo"
READY_TIMEOUT_S = 180


@dataclass
class Traced:
    client: TestClient
    exporter: InMemorySpanExporter
    provider: TracerProvider

    def spans(self) -> list[ReadableSpan]:
        """Every span finished so far (the batch processor flushed first); then forgets them."""
        self.provider.force_flush()
        spans = list(self.exporter.get_finished_spans())
        self.exporter.clear()
        return spans


@pytest.fixture(scope="session")
def traced() -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    provider = tracing.tracer_provider(exporter)
    settings = Settings(_env_file=None, checkpoint=str(DEMO_MODEL), threads=1, api_keys=[], cors_origins=[])
    app = create_app(settings, tracer_provider=provider)
    with TestClient(app) as client:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the in-process service was not ready in time"
            time.sleep(0.05)
        yield Traced(client, exporter, provider)
    provider.shutdown()
