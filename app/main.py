"""The FastAPI app: `create_app(settings)` wires routes, middleware and errors, and its lifespan owns the
model.

Start-up: the checkpoint loads (device, dtype and threads from Settings) on a background thread, so the
process answers `/health` at once and `/ready` says 503 "loading" meanwhile; the engine warms up with one
tiny generation; then the scheduler starts and `/ready` turns 200. A load failure is logged in one line;
with `on_load_failure=exit` the process then exits with status 3 (never hangs), with `unready` it keeps
serving `/health`, and `/ready` (like every model route) answers 503 with the reason.

Beside the model, on the same background thread: the guardrail (`NANOCHAT_GUARDRAIL=flag|block`; failing
to load it is a load failure like the model's: the service does not run unscreened) and, on a thread of
its own, the classifier of `POST /v1/classify` (failing to load it only turns that route to 503). `/ready`
waits for both. `NANOCHAT_BACKEND=hf` serves a transformers causal LM folder with `HFEngine` instead of
a nanochat checkpoint, behind the same scheduler.

Shut-down (`drain`): `/ready` turns 503, new requests get 503, the requests already accepted (running or
queued: their clients have their 200) get `drain_timeout_s` to finish, then are cut. `python -m app` and
gunicorn's workers drain on SIGTERM before the listening socket closes (see app/server.py); under plain
uvicorn the lifespan's end drains.

Observability (app/observability/): the request middleware logs, measures and traces every request; the
metrics follow the model's life (`nanochat_ready`, load time, capacity) and a sampler thread records the
process's CPU and memory; traces are on when the `OTEL_*` variables ask for them.

Serving from plain uvicorn: `uvicorn --factory app.main:create_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.middleware import Middleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from opentelemetry.sdk.trace import TracerProvider

from app import admission, metrics_server
from app.api import classify, health, openai, web
from app.api.classify import Classifier
from app.api.deps import Runtime
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
from app.config import Settings, model_folder
from app.contract import METRICS_PATH
from app.errors import APIError, install_error_handlers
from app.observability import metrics, tracing
from app.scheduler import Scheduler
from nanochat.backend import GenerationBackend
from nanochat.checkpoint import load_checkpoint
from nanochat.classify.guardrail import Guardrail
from nanochat.cliargs import UsageError
from nanochat.device import resolve_device, resolve_dtype
from nanochat.engine import Engine

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
EXIT_LOAD_FAILED = 3  # gunicorn reads 3 from a worker as "failed to boot" and stops
WARMUP_TEXT = "Hello"
EngineFactory = Callable[[Settings], GenerationBackend]
T = TypeVar("T")


def create_app(
    settings: Settings | None = None,
    *,
    engine_factory: EngineFactory | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """The service. `engine_factory(settings) -> Engine` replaces checkpoint loading (other backends);
    `tracer_provider` replaces the one the OTEL_* variables configure (tests export to memory)."""
    settings = settings or Settings()
    runtime = Runtime(settings, model_name=settings.model_name or _folder_name(settings.checkpoint))
    provider = tracer_provider or tracing.provider_from_env(version=metrics.version())
    tracer = provider.get_tracer(tracing.TRACER_NAME) if provider is not None else None
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
        loading = asyncio.create_task(load_model(app, engine_factory))
        try:
            yield
        finally:
            loading.cancel()
            await drain(runtime)
            admission.shutdown_all(app.state.admission)  # the side routes' pools and worker processes

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
    app.state.classifier = Classifier.from_settings(settings)
    app.state.guardrail = None  # set before the service turns ready when NANOCHAT_GUARDRAIL is on
    app.state.admission = admission.side_routes(settings)  # classify's and the guardrail's bounded pools
    app.state.exit = _exit_process  # `python -m app` replaces it with a clean server stop
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(classify.router)
    app.include_router(web.router)
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


def _folder_name(checkpoint: str) -> str:
    return Path(checkpoint.rstrip("/")).name or checkpoint


# ---- the model's life -------------------------------------------------------------------------------
def load_engine(settings: Settings) -> GenerationBackend:
    """The default engine factory: the checkpoint Settings name, on its device, in its dtype; with
    `backend="hf"` a transformers causal LM folder served by HFEngine."""
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    if settings.backend == "hf":
        try:  # transformers is imported only for this backend (the `hf` extra)
            from transformers.utils import logging as transformers_logging
        except ImportError:
            message = "NANOCHAT_BACKEND=hf needs transformers: pip install 'nanochat-service[hf]'"
            raise UsageError(message) from None
        from nanochat.hf_engine import HFEngine

        transformers_logging.disable_progress_bar()  # its bars on stderr are not log lines
        return HFEngine.from_pretrained(
            settings.checkpoint,
            device,
            dtype,
            max_batch=settings.max_batch,
            prefill_chunk=settings.prefill_chunk,
        )
    checkpoint = load_checkpoint(settings.checkpoint, step=settings.step, device=device, dtype=dtype)
    return Engine(
        checkpoint.model,
        checkpoint.tokenizer,
        max_batch=settings.max_batch,
        prefill_chunk=settings.prefill_chunk,
    )


def _build_engine(settings: Settings, engine_factory: EngineFactory | None) -> GenerationBackend:
    """Runs on the loader thread: load, then warm up with one tiny greedy generation."""
    engine = (engine_factory or load_engine)(settings)
    if settings.warmup:
        tokenizer = engine.tokenizer
        prompt = tokenizer.encode(WARMUP_TEXT, prepend=tokenizer.get_bos_token_id())
        for _ in engine.generate(prompt, max_tokens=2, temperature=0.0):
            pass
    return engine


class GuardrailLoadError(Exception):
    """The guardrail, not the model, failed to load (the cause is the error)."""


def load_guardrail(settings: Settings) -> Guardrail | None:
    """The guardrail NANOCHAT_GUARDRAIL asks for (None when off)."""
    if settings.guardrail == "off":
        return None
    try:
        guardrail = Guardrail.load(
            model_folder(settings.guardrail_model), settings.guardrail, settings.guardrail_threshold
        )
    except Exception as e:
        raise GuardrailLoadError() from e
    logger.info(
        "guardrail %s on: mode %s, threshold %s", guardrail.version, guardrail.mode, guardrail.threshold
    )
    return guardrail


def _load_all(
    settings: Settings, engine_factory: EngineFactory | None, classifier: Classifier
) -> tuple[GenerationBackend, Guardrail | None]:
    """Runs on the loader thread: the classifier on a thread of its own meanwhile, the guardrail, the
    engine; returns once all three are done (a classifier failure is the classifier's own business)."""
    side = None
    if classifier.state == "loading":
        side = threading.Thread(target=classifier.load, name="classifier-loader", daemon=True)
        side.start()
    guardrail = load_guardrail(settings)
    engine = _build_engine(settings, engine_factory)
    if side is not None:
        side.join()
    return engine, guardrail


async def load_model(app: FastAPI, engine_factory: EngineFactory | None) -> None:
    """Load the model (and the guardrail and classifier) off the event loop and start the scheduler; on
    failure, record why (and maybe exit through `app.state.exit`)."""
    runtime: Runtime = app.state.runtime
    settings = runtime.settings
    started = time.monotonic()
    logger.info("loading the model from %s on %s", settings.checkpoint, settings.device)
    # before any thread that runs the model is started: they inherit it. By default one core is left to
    # the event loop that streams the tokens (measured: torch on every core stalls single streams).
    torch.set_num_threads(settings.threads or max(1, (os.cpu_count() or 2) - 1))
    try:
        engine, guardrail = await _on_daemon_thread(
            runtime, _load_all, settings, engine_factory, app.state.classifier
        )
    except Exception as e:
        what, source, error = "the model", settings.checkpoint, e
        if isinstance(e, GuardrailLoadError) and e.__cause__ is not None:
            what, source, error = "the guardrail", settings.guardrail_model, e.__cause__
        runtime.state, runtime.reason = "failed", f"{what} failed to load: {error}"
        expected = isinstance(error, ValueError | OSError | UsageError)  # bad checkpoint, files, or device
        logger.error(
            "%s failed to load from %s: %s (on_load_failure=%s)",
            what,
            source,
            error,
            settings.on_load_failure,
            exc_info=not expected,
        )
        if settings.on_load_failure == "exit":
            app.state.exit(EXIT_LOAD_FAILED)
        return
    if runtime.state != "loading":  # shutting down already
        return
    scheduler = Scheduler(
        engine,
        max_queue=settings.max_queue,
        request_timeout_s=settings.request_timeout_s,
        prefill_chunk=settings.prefill_chunk,
        record_metrics=settings.metrics,
    )
    scheduler.start()
    app.state.guardrail = guardrail
    runtime.engine, runtime.scheduler = engine, scheduler
    runtime.state, runtime.reason = "ready", ""
    load_s = time.monotonic() - started
    if settings.metrics:
        metrics.set_model_load_seconds(load_s)
        metrics.set_capacity(settings.max_queue, engine.max_batch)
        if guardrail is not None:
            metrics.enable_guardrail()
        metrics.set_ready(True)
    logger.info(
        "model %s ready in %.1f s: context %d tokens, batch %d, queue %d",
        runtime.model_name,
        load_s,
        engine.max_seq_len,
        engine.max_batch,
        settings.max_queue,
    )


async def drain(runtime: Runtime) -> None:
    """Stop admitting (ready -> 503), give the requests accepted (running or queued) `drain_timeout_s`,
    then stop the scheduler."""
    if runtime.state in ("draining", "stopped"):
        return
    grace = runtime.settings.drain_timeout_s
    runtime.state, runtime.reason = "draining", "the server is shutting down; retry on another instance"
    if runtime.settings.metrics:
        metrics.set_ready(False)
    if runtime.scheduler is not None:
        stats = runtime.scheduler.stats()
        logger.info(
            "draining: %d request(s) running and %d queued get up to %.1f s",
            stats["active_requests"],
            stats["queue_depth"],
            grace,
        )
        cut = await runtime.scheduler.drain(grace)
        if cut:
            logger.warning("drained: the grace of %.1f s ran out; %d request(s) cut", grace, cut)
        else:
            logger.info("drained: every accepted request finished")
    else:
        logger.info("drained: no model was serving")
    runtime.state, runtime.reason = "stopped", "the server has stopped"


async def _on_daemon_thread(runtime: Runtime, fn: Callable[..., T], *args: Any) -> T:
    """Await `fn(*args)` run on a daemon thread (kept as `runtime.loader`): unlike the default executor,
    a load still running at exit never holds the process up."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as e:  # handed to the awaiting coroutine
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle, result, error)

    runtime.loader = threading.Thread(target=run, name="model-loader", daemon=True)
    runtime.loader.start()
    return await future


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
