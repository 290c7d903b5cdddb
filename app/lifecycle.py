"""The service's life: one `Runtime` per app owns the engine, the scheduler, the guardrail, the classifier
and the side routes' admission pools, and moves its `state` along:

    loading ──> ready ──> draining ──> stopped
        └─────> failed   (on_load_failure=unready keeps serving /health, with /ready 503 and the reason)

Start-up (`Runtime.load`): the checkpoint loads (device, dtype and threads from Settings) on a background
thread, so the process answers `/health` at once and `/ready` says 503 "loading" meanwhile; the engine warms
up with one tiny generation; then the scheduler starts and `/ready` turns 200. A load failure is logged in
one line; with `on_load_failure=exit` the process then exits with status 3 (never hangs), with `unready` it
keeps serving `/health`, and `/ready` (like every model route) answers 503 with the reason.

Beside the model, on the same background thread: the guardrail (`NANOCHAT_GUARDRAIL=flag|block`; failing to
load it is a load failure like the model's: the service does not run unscreened) and, on a thread of its
own, the classifier of `POST /v1/classify` (failing to load it only turns that route to 503). `/ready` waits
for both. `NANOCHAT_BACKEND=hf` serves a transformers causal LM folder with `HFEngine` instead of a nanochat
checkpoint, behind the same scheduler.

Shut-down (`drain`): `/ready` turns 503, new requests get 503, the requests already accepted (running or
queued: their clients have their 200) get `drain_timeout_s` to finish, then are cut.

This module knows nothing of HTTP: the 503s a state stands for are app/errors.py's (`not_ready`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from app import admission
from app.config import Settings, model_folder
from app.errors import APIError, not_ready
from app.guardrail import Guardrail
from app.observability import metrics
from app.scheduler import Scheduler
from nanochat.backend import ChatTokenizer, GenerationBackend
from nanochat.checkpoint import load_checkpoint
from nanochat.cliargs import UsageError
from nanochat.device import resolve_device, resolve_dtype
from nanochat.engine import Engine

if TYPE_CHECKING:
    from app.api.classify import Classifier

# the lines of the service's life keep the logger name operators (and the tests) read them by
logger = logging.getLogger("app.main")

EXIT_LOAD_FAILED = 3  # gunicorn reads 3 from a worker as "failed to boot" and stops
WARMUP_TEXT = "Hello"
EngineFactory = Callable[[Settings], GenerationBackend]
T = TypeVar("T")


class State(enum.StrEnum):
    """Where the service stands; the value is what `/stats` reports and 503 codes are made of."""

    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass
class Runtime:
    settings: Settings
    model_name: str
    engine_factory: EngineFactory | None = None  # default: load_engine
    state: State = State.LOADING
    reason: str = "the model is loading"  # why the service is not ready (shown by /ready and 503s)
    engine: GenerationBackend | None = None
    scheduler: Scheduler | None = None
    guardrail: Guardrail | None = None  # set before the service turns ready when NANOCHAT_GUARDRAIL is on
    classifier: Classifier | None = None
    admission: dict[str, admission.Admission] = field(default_factory=dict)  # the side routes' pools
    started_at: float = field(default_factory=time.time)
    loader: threading.Thread | None = None  # the thread loading the model

    @classmethod
    def from_settings(
        cls, settings: Settings, classifier: Classifier, engine_factory: EngineFactory | None = None
    ) -> Runtime:
        return cls(
            settings,
            model_name=settings.model_name,
            engine_factory=engine_factory or load_engine,
            classifier=classifier,
            admission=admission.side_routes(settings),  # classify's and the guardrail's bounded pools
        )

    @property
    def ready(self) -> bool:
        return self.state == State.READY and self.scheduler is not None and self.scheduler.ready

    @property
    def tokenizer(self) -> ChatTokenizer:
        assert self.engine is not None
        return self.engine.tokenizer

    @property
    def context(self) -> int:
        """The model's context in tokens (prompt plus generated)."""
        assert self.engine is not None
        return self.engine.max_seq_len

    @property
    def max_batch(self) -> int:
        """Sequences the engine decodes together (the most choices one request may ask for)."""
        assert self.engine is not None
        return self.engine.max_batch

    @property
    def stopping(self) -> bool:
        return self.state in (State.DRAINING, State.STOPPED)

    def not_ready_error(self) -> APIError:
        return not_ready(self.state, self.reason)

    def scheduler_or_503(self) -> Scheduler:
        """The scheduler, or a 503 that says why there is none to use (loading, failed, draining)."""
        if not self.ready:
            raise self.not_ready_error()
        assert self.scheduler is not None
        return self.scheduler

    # ---- start-up ---------------------------------------------------------------------------------------
    async def load(self, exit_process: Callable[[int], None]) -> None:
        """Load the model (and the guardrail and classifier) off the event loop and start the scheduler;
        on failure, record why (and with on_load_failure=exit, call `exit_process`)."""
        settings = self.settings
        started = time.monotonic()
        logger.info("loading the model from %s on %s", settings.checkpoint, settings.device)
        # before any thread that runs the model is started: they inherit it. By default one core is left to
        # the event loop that streams the tokens (measured: torch on every core stalls single streams).
        torch.set_num_threads(settings.threads or max(1, (os.cpu_count() or 2) - 1))
        try:
            engine, guardrail = await self._on_daemon_thread(self._load_all)
        except Exception as e:
            what, source, error = "the model", settings.checkpoint, e
            if isinstance(e, GuardrailLoadError) and e.__cause__ is not None:
                what, source, error = "the guardrail", settings.guardrail_model, e.__cause__
            self.state, self.reason = State.FAILED, f"{what} failed to load: {error}"
            # a bad checkpoint, files or device: its message says it all
            expected = isinstance(error, ValueError | OSError | UsageError)
            logger.error(
                "%s failed to load from %s: %s (on_load_failure=%s)",
                what,
                source,
                error,
                settings.on_load_failure,
                exc_info=not expected,
            )
            if settings.on_load_failure == "exit":
                exit_process(EXIT_LOAD_FAILED)
            return
        if self.state != State.LOADING:  # shutting down already
            return
        scheduler = Scheduler(
            engine,
            max_queue=settings.max_queue,
            request_timeout_s=settings.request_timeout_s,
            prefill_chunk=settings.prefill_chunk,
            record_metrics=settings.metrics,
        )
        scheduler.start()
        self.guardrail, self.engine, self.scheduler = guardrail, engine, scheduler
        self.state, self.reason = State.READY, ""
        load_s = time.monotonic() - started
        if settings.metrics:
            metrics.set_model_load_seconds(load_s)
            metrics.set_capacity(settings.max_queue, engine.max_batch)
            if guardrail is not None:
                metrics.enable_guardrail()
            metrics.set_ready(True)
        logger.info(
            "model %s ready in %.1f s: context %d tokens, batch %d, queue %d",
            self.model_name,
            load_s,
            engine.max_seq_len,
            engine.max_batch,
            settings.max_queue,
        )

    def _load_all(self) -> tuple[GenerationBackend, Guardrail | None]:
        """Runs on the loader thread: the classifier on a thread of its own meanwhile, the guardrail, the
        engine; returns once all three are done (a classifier failure is the classifier's own business)."""
        side = None
        if self.classifier is not None and self.classifier.loading:
            side = threading.Thread(target=self.classifier.load, name="classifier-loader", daemon=True)
            side.start()
        guardrail = load_guardrail(self.settings)
        engine = _build_engine(self.settings, self.engine_factory or load_engine)
        if side is not None:
            side.join()
        return engine, guardrail

    async def _on_daemon_thread(self, fn: Callable[[], T]) -> T:
        """Await `fn()` run on a daemon thread (kept as `self.loader`): unlike the default executor, a load
        still running at exit never holds the process up."""
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
                result, error = fn(), None
            except BaseException as e:  # handed to the awaiting coroutine
                result, error = None, e
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
                loop.call_soon_threadsafe(settle, result, error)

        self.loader = threading.Thread(target=run, name="model-loader", daemon=True)
        self.loader.start()
        return await future

    # ---- shut-down --------------------------------------------------------------------------------------
    async def drain(self) -> None:
        """Stop admitting (ready -> 503), give the requests accepted (running or queued) `drain_timeout_s`,
        then stop the scheduler."""
        if self.stopping:
            return
        grace = self.settings.drain_timeout_s
        self.state, self.reason = State.DRAINING, "the server is shutting down; retry on another instance"
        if self.settings.metrics:
            metrics.set_ready(False)
        if self.scheduler is not None:
            stats = self.scheduler.stats()
            logger.info(
                "draining: %d request(s) running and %d queued get up to %.1f s",
                stats["active_requests"],
                stats["queue_depth"],
                grace,
            )
            cut = await self.scheduler.drain(grace)
            if cut:
                logger.warning("drained: the grace of %.1f s ran out; %d request(s) cut", grace, cut)
            else:
                logger.info("drained: every accepted request finished")
        else:
            logger.info("drained: no model was serving")
        self.state, self.reason = State.STOPPED, "the server has stopped"

    async def shutdown(self) -> None:
        """The end of the app's life: drain, then stop the side routes' pools and worker processes."""
        await self.drain()
        admission.shutdown_all(self.admission)


# ---- loading ----------------------------------------------------------------------------------------
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
            max_seq_len=settings.max_model_len,
            prefill_chunk=settings.prefill_chunk,
        )
    checkpoint = load_checkpoint(settings.checkpoint, step=settings.step, device=device, dtype=dtype)
    return Engine(
        checkpoint.model,
        checkpoint.tokenizer,
        max_batch=settings.max_batch,
        max_seq_len=settings.max_model_len,
        prefill_chunk=settings.prefill_chunk,
    )


def _build_engine(settings: Settings, engine_factory: EngineFactory) -> GenerationBackend:
    """Runs on the loader thread: load, then warm up with one tiny greedy generation."""
    engine = engine_factory(settings)
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
