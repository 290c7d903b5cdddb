"""The FastAPI app: `create_app(settings)` wires routes, middleware and errors; its lifespan starts and
ends the service's `Runtime` (app/lifecycle.py: loading the model, the guardrail and the classifier, and
draining).

`python -m app` and gunicorn's workers drain on SIGTERM before the listening socket closes (see
app/server.py); under plain uvicorn the lifespan's end drains.

Observability (app/observability/): the request middleware logs, measures and traces every request; the
metrics follow the model's life (`nanochat_ready`, load time, capacity) and a sampler thread records the
process's CPU and memory; traces are on when the `OTEL_*` variables ask for them.

Serving from plain uvicorn: `uvicorn --factory app.main:create_app`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware import Middleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from opentelemetry.sdk.trace import TracerProvider

from app import metrics_server
from app.api import classify, completions, health, rag, tokenize, web
from app.api.classify import Classifier
from app.api.middleware import (
    CORS,
    CORS_ALLOW_HEADER_PREFIXES,
    CORS_ALLOW_HEADERS,
    REQUEST_ID_HEADER,
    ApiKeyAuth,
    BodyLimit,
    FaultInjection,
    RequestContext,
)
from app.api.serving import GUARDRAIL_HEADER
from app.config import Settings
from app.contract import METRICS_PATH
from app.errors import APIError, install_error_handlers
from app.lifecycle import EngineFactory, Runtime, load_engine
from app.observability import metrics, tracing
from app.rag_service import RagService

STATIC_DIR = Path(__file__).parent / "static"


def create_app(
    settings: Settings | None = None,
    *,
    engine_factory: EngineFactory | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """The service. `engine_factory(settings) -> GenerationBackend` replaces checkpoint loading (other
    backends); `tracer_provider` replaces the one the OTEL_* variables configure (tests export to memory)."""
    settings = settings or Settings()
    classifier = Classifier.from_settings(settings)
    runtime = Runtime.from_settings(settings, classifier, engine_factory or load_engine)
    counted = metrics.observe_trace_export if settings.metrics else None
    provider = tracer_provider or tracing.provider_from_env(version=metrics.version(), record=counted)
    if provider is not None and tracer_provider is None and settings.metrics:
        metrics.enable_trace_export()
    tracer = provider.get_tracer(tracing.TRACER_NAME) if provider is not None else None
    runtime.rag = RagService.from_settings(settings, tracer)  # retrieval: NANOCHAT_RAG_INDEXES (docs/rag.md)
    if settings.metrics:
        metrics.describe_service(runtime.model_name, settings.instance_price_per_hour)
        metrics.set_ready(False)
    middleware = [Middleware(RequestContext, runtime=runtime, tracer=tracer)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORS,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=CORS_ALLOW_HEADERS,
                allow_header_prefixes=CORS_ALLOW_HEADER_PREFIXES,
                expose_headers=[REQUEST_ID_HEADER, "X-Prompt-Truncated", "Retry-After", GUARDRAIL_HEADER],
            )
        )
    if settings.api_keys:
        middleware.append(Middleware(ApiKeyAuth, keys=settings.api_keys))
    middleware.append(
        Middleware(
            BodyLimit,
            max_bytes=settings.max_body_bytes,
            discard_bytes=settings.discard_body_bytes,
            timeout_s=settings.body_timeout_s,
        )
    )
    if settings.fault_latency_ms or settings.fault_error_rate:
        middleware.append(
            Middleware(
                FaultInjection, latency_ms=settings.fault_latency_ms, error_rate=settings.fault_error_rate
            )
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.metrics:
            metrics.start_process_sampler()
        loading = asyncio.create_task(runtime.load(exit_process=lambda code: app.state.exit(code)))
        try:
            yield
        finally:
            loading.cancel()
            await runtime.shutdown()  # drain, then stop the side routes' pools and worker processes

    app = FastAPI(
        title="nanochat",
        summary="OpenAI-compatible chat and completions over a nanochat model",
        version="0.1.0",
        lifespan=lifespan,
        middleware=middleware,
        docs_url="/docs" if settings.docs else None,  # NANOCHAT_DOCS: off in production
        redoc_url="/redoc" if settings.docs else None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    if provider is not None:
        tracing.instrument(app, provider)
    app.state.runtime = runtime
    app.state.exit = _exit_process  # `python -m app` replaces it with a clean server stop
    install_error_handlers(app)
    app.include_router(completions.router)
    app.include_router(classify.router)
    app.include_router(rag.router)
    app.include_router(web.router)
    app.include_router(tokenize.router)
    app.include_router(health.router, dependencies=[Depends(_probe_exposure(settings))])
    if settings.metrics_port and metrics.multiprocess_dir() is None:  # under gunicorn the master serves it
        metrics_server.start(settings.host, settings.metrics_port)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise APIError(404, "the web chat page is not installed (app/static/index.html)", "not_found")
        return FileResponse(page)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _probe_exposure(settings: Settings) -> Callable[[Request], Any]:
    """The probe routes' guard: `/metrics` is a 404 on this port when it is served on
    NANOCHAT_METRICS_PORT. (`/stats` wants an API key when keys are set: ApiKeyAuth's KEYED_PREFIXES.)"""

    async def guard(request: Request) -> None:
        path = request.url.path
        if path == METRICS_PATH and settings.metrics_port:
            raise APIError(404, f"no route {request.method} {path}", "not_found")

    return guard


def _exit_process(code: int) -> None:
    """Without a server to stop cleanly (gunicorn, plain uvicorn): flush the logs and leave now."""
    logging.shutdown()
    os._exit(code)


# ---- OpenAPI ----------------------------------------------------------------------------------------
def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document without its 422 responses: input errors are 400 here (see app/errors.py)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        schemas = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
