"""The service's life: one `Runtime` per app owns the engine, the scheduler, the guardrail, the classifier
and the side routes' admission pools, and moves its `state` along:

    loading ──> ready ──> draining ──> stopped
       └─────────┴──> failed   (on_load_failure=unready keeps serving /health; /ready 503 with the reason)

Start-up (`Runtime.load`): the checkpoint loads (device, dtype and threads from Settings) on a background
thread, so the process answers `/health` at once and `/ready` says 503 "loading" meanwhile; the engine warms
up with one tiny generation; then the scheduler starts, `/ready` turns 200, and a line says what the
weights and the KV cache take. Before the weights are read, the model's config alone is checked: the
context asked for (`max_model_len`) must be the model's at most, and the weights and the cache must fit
`memory_limit` and a CUDA device's free memory (`nanochat.memory.check_fits`), so that a model too large
fails in one line before anything of its size is allocated. A load failure is logged in
one line; with `on_load_failure=exit` the process then exits with status 3 (never hangs), with `unready` it
keeps serving `/health`, and `/ready` (like every model route) answers 503 with the reason.
`NANOCHAT_BACKEND=hf` serves a transformers causal LM folder with `HFEngine` instead of a nanochat
checkpoint, behind the same scheduler.

`/ready` waits for the model only. The optional parts start loading beside it, each reporting its own
`PartState` in `/stats` (`parts`):
- the classifier of `POST /v1/classify` loads in the route's worker process (app/api/classify.py), which
  this starts at once, so that the first request does not pay for spawning it; until it is ready the
  route answers 503 `loading` with Retry-After, and a failure only turns that route to 503 `load_failed`.
- the guardrail (`NANOCHAT_GUARDRAIL=flag|block`) loads on a thread of its own. A chat or completion
  request that comes before it is loaded waits for it (`screening_guardrail`, at most the request's
  deadline, then 503 `loading`): it is never served unscreened. Failing to load it is a load failure like
  the model's, whenever it comes (before or after `/ready` turned 200): the service does not run
  unscreened.

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
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from app import admission
from app.admission import CLASSIFY
from app.config import Settings, model_folder
from app.errors import APIError, not_ready
from app.guardrail import Guardrail
from app.observability import metrics
from app.scheduler import Scheduler
from nanochat.backend import ChatTokenizer, GenerationBackend
from nanochat.checkpoint import load_checkpoint
from nanochat.cliargs import UsageError
from nanochat.device import resolve_device, resolve_dtype
from nanochat.engine import Engine, memory_plan
from nanochat.gpt import GPTConfig
from nanochat.memory import MemoryPlan, check_fits, format_bytes
from nanochat.prefix_cache import resolve_budget
from nanochat.quantize import check_quantization

if TYPE_CHECKING:
    from app.api.classify import Classifier
    from app.rag_service import RagService

# the lines of the service's life keep the logger name operators (and the tests) read them by
logger = logging.getLogger("app.main")

EXIT_LOAD_FAILED = 3  # gunicorn reads 3 from a worker as "failed to boot" and stops
WARMUP_TEXT = "Hello"
EngineFactory = Callable[[Settings], GenerationBackend]
T = TypeVar("T")


class PartState(enum.StrEnum):
    """Where an optional part (the classifier, the guardrail) stands; what `/stats` reports in `parts`."""

    OFF = "off"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


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
    guardrail: Guardrail | None = None  # set once loaded, when NANOCHAT_GUARDRAIL is on
    guardrail_state: PartState = PartState.OFF
    guardrail_reason: str = ""  # why the guardrail is not ready (loading, or the failure)
    classifier: Classifier | None = None
    rag: RagService | None = None  # the retrieval indexes (app/rag_service.py), loading beside the model
    admission: dict[str, admission.Admission] = field(default_factory=dict)  # the side routes' pools
    started_at: float = field(default_factory=time.time)
    loaders: list[threading.Thread] = field(default_factory=list)  # the threads loading model and guardrail
    _guardrail_settled: asyncio.Event = field(default_factory=asyncio.Event, init=False)  # loaded or failed
    _parts: set[asyncio.Task] = field(default_factory=set, init=False)  # optional parts loading

    @classmethod
    def from_settings(
        cls, settings: Settings, classifier: Classifier, engine_factory: EngineFactory | None = None
    ) -> Runtime:
        guardrail_on = settings.guardrail != "off"
        return cls(
            settings,
            model_name=settings.model_name,
            engine_factory=engine_factory or load_engine,
            guardrail_state=PartState.LOADING if guardrail_on else PartState.OFF,
            guardrail_reason="the guardrail is loading" if guardrail_on else "NANOCHAT_GUARDRAIL is off",
            classifier=classifier,
            admission=admission.side_routes(settings),  # classify's and the guardrail's bounded pools
        )

    @property
    def ready(self) -> bool:
        return self.state == State.READY and self.scheduler is not None and self.scheduler.ready

    @property
    def loader(self) -> threading.Thread | None:
        """A thread still loading (the model or the guardrail), if any: such a load cannot be interrupted,
        and finalizing the interpreter under it aborts the process (`python -m app` leaves without)."""
        return next((thread for thread in self.loaders if thread.is_alive()), None)

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

    def parts(self) -> dict[str, dict[str, Any]]:
        """The optional parts' states, as `/stats` reports them."""
        guardrail = {
            "state": self.guardrail_state,
            "reason": self.guardrail_reason or None,
            "model": self.guardrail.version if self.guardrail is not None else None,
        }
        classifier = self.classifier.status() if self.classifier is not None else None
        rag = self.rag.status() if self.rag is not None else None
        return {"classifier": classifier, "guardrail": guardrail, "rag": rag}

    async def screening_guardrail(self) -> Guardrail | None:
        """The guardrail that screens a request now, None when it is off. While it loads, the request waits
        for it (at most its deadline, then a 503 `loading`); once it failed, the service's own 503."""
        if self.guardrail_state == PartState.OFF:
            return None
        if self.guardrail is None:
            try:
                await asyncio.wait_for(self._guardrail_settled.wait(), self.settings.request_timeout_s)
            except TimeoutError:
                raise not_ready(State.LOADING, "the guardrail is still loading; retry shortly") from None
        if self.guardrail is None:  # it failed to load, or the server is shutting down
            raise self.not_ready_error()
        return self.guardrail

    # ---- start-up ---------------------------------------------------------------------------------------
    async def load(self, exit_process: Callable[[int], None]) -> None:
        """Start the optional parts loading in the background, then load the model off the event loop and
        start the scheduler; on a failure, record why (and with on_load_failure=exit, call `exit_process`)."""
        settings = self.settings
        started = time.monotonic()
        # before any thread that runs the model is started: they inherit it. By default one core is left to
        # the event loop that streams the tokens (measured: torch on every core stalls single streams).
        torch.set_num_threads(settings.threads or max(1, (os.cpu_count() or 2) - 1))
        if self.classifier is not None and self.classifier.loading:
            self._in_background(self.classifier.load(self.admission[CLASSIFY]))
        if self.guardrail_state == PartState.LOADING:
            if settings.metrics:
                metrics.enable_guardrail()  # its series exist from the start, as the service's
            self._in_background(self._load_guardrail(exit_process))
        if self.rag is not None:
            self.rag.start(self, exit_process)
        logger.info("loading the model from %s on %s", settings.checkpoint, settings.device)
        factory = self.engine_factory or load_engine
        try:
            engine = await self._on_daemon_thread(lambda: _build_engine(settings, factory), "model-loader")
        except Exception as e:
            self._fail("the model", settings.checkpoint, e, exit_process)
            return
        if self.state != State.LOADING:  # shutting down already, or the guardrail failed
            return
        scheduler = Scheduler(
            engine,
            max_queue=settings.max_queue,
            request_timeout_s=settings.request_timeout_s,
            prefill_chunk=settings.prefill_chunk,
            record_metrics=settings.metrics,
        )
        scheduler.start()
        self.engine, self.scheduler = engine, scheduler
        self.state, self.reason = State.READY, ""
        load_s = time.monotonic() - started
        if settings.metrics:
            metrics.set_model_load_seconds(load_s)
            metrics.set_capacity(settings.max_queue, engine.max_batch)
            metrics.set_model_memory(engine.memory.weights_bytes, engine.memory.kv_cache_bytes)
            metrics.set_ready(True)
        logger.info(
            "model %s ready in %.1f s: context %d tokens, batch %d, queue %d",
            self.model_name,
            load_s,
            engine.max_seq_len,
            engine.max_batch,
            settings.max_queue,
        )
        logger.info("memory: %s", engine.memory.describe())
        prefix_cache = engine.prefix_cache_stats()
        if prefix_cache is not None:
            logger.info(
                "prefix cache: up to %s, blocks of %d tokens",
                format_bytes(prefix_cache.max_bytes),
                prefix_cache.block_size,
            )

    async def _load_guardrail(self, exit_process: Callable[[int], None]) -> None:
        """The guardrail, on a thread of its own; its failure is the service's (see the module docstring)."""
        settings = self.settings
        try:
            guardrail = await self._on_daemon_thread(lambda: load_guardrail(settings), "guardrail-loader")
        except Exception as e:
            self.guardrail_state, self.guardrail_reason = PartState.FAILED, f"failed to load: {e}"
            self._fail("the guardrail", settings.guardrail_model, e, exit_process)
        else:
            self.guardrail, self.guardrail_state, self.guardrail_reason = guardrail, PartState.READY, ""
        finally:
            self._guardrail_settled.set()

    def part_failed(
        self, what: str, source: str, error: Exception, exit_process: Callable[[int], None]
    ) -> None:
        """A part the service must not run without (a RAG index) failed to load: as the model's failure."""
        self._fail(what, source, error, exit_process)

    def _fail(self, what: str, source: str, error: Exception, exit_process: Callable[[int], None]) -> None:
        """`what` failed to load: the service fails (once), logs one line, and with on_load_failure=exit
        exits."""
        if self.state not in (State.LOADING, State.READY):  # failed already, or shutting down
            return
        settings = self.settings
        self.state, self.reason = State.FAILED, f"{what} failed to load: {error}"
        if settings.metrics:
            metrics.set_ready(False)
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

    def _in_background(self, loading: Coroutine[Any, Any, None]) -> None:
        """Run an optional part's loading as a task of its own (cancelled at shut-down)."""
        task = asyncio.create_task(loading)
        self._parts.add(task)
        task.add_done_callback(self._parts.discard)

    async def _on_daemon_thread(self, fn: Callable[[], T], name: str) -> T:
        """Await `fn()` run on a daemon thread (kept in `self.loaders`): unlike the default executor, a load
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

        thread = threading.Thread(target=run, name=name, daemon=True)
        self.loaders.append(thread)
        thread.start()
        return await future

    # ---- shut-down --------------------------------------------------------------------------------------
    async def drain(self) -> None:
        """Stop admitting (ready -> 503), give the requests accepted (running or queued) `drain_timeout_s`,
        then stop the scheduler."""
        if self.stopping:
            return
        grace = self.settings.drain_timeout_s
        self.state, self.reason = State.DRAINING, "the server is shutting down; retry on another instance"
        self._guardrail_settled.set()  # requests waiting for it get the 503 of a draining server
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
        """The end of the app's life: drain, then stop the optional parts' loading, the side routes' pools
        and their worker processes."""
        await self.drain()
        for task in list(self._parts):
            task.cancel()
        if self.rag is not None:
            await self.rag.shutdown()
        await asyncio.to_thread(admission.shutdown_all, self.admission)  # waits for them: off the loop


# ---- loading ----------------------------------------------------------------------------------------
def load_engine(settings: Settings) -> GenerationBackend:
    """The default engine factory: the checkpoint Settings name, on its device, in its dtype; with
    `backend="hf"` a transformers causal LM folder served by HFEngine."""
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    check_quantization(settings.quantization, device, dtype, settings.backend)
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
            memory_limit=settings.memory_limit,
        )

    plans: list[MemoryPlan] = []

    def fits(config: GPTConfig) -> None:  # before the weights are read: the context asked for, the memory
        plan = memory_plan(config, dtype, settings.max_batch, settings.max_model_len, settings.quantization)
        check_fits(plan, settings.memory_limit, device)
        plans.append(plan)

    checkpoint = load_checkpoint(
        settings.checkpoint,
        step=settings.step,
        device=device,
        dtype=dtype,
        before_weights=fits,
        quantization=settings.quantization,
    )
    return Engine(
        checkpoint.model,
        checkpoint.tokenizer,
        max_batch=settings.max_batch,
        max_seq_len=settings.max_model_len,
        prefill_chunk=settings.prefill_chunk,
        prefix_cache_bytes=prefix_cache_budget(settings, plans[-1]),
        compile=settings.compile,
    )


def prefix_cache_budget(settings: Settings, plan: MemoryPlan) -> int:
    """The prefix cache's bytes: 0 when off; else its setting (a fraction of the KV cache's bytes, or a
    size), at most what the weights and the KV cache leave of --memory-limit."""
    if not settings.enable_prefix_caching:
        return 0
    budget = resolve_budget(settings.prefix_cache_bytes, plan.kv_cache_bytes)
    if settings.memory_limit is not None:
        budget = min(budget, max(settings.memory_limit - plan.total_bytes, 0))
    return budget


def wait_for_checkpoint(settings: Settings, poll_s: float = 0.25) -> None:
    """With `checkpoint_wait_s`, wait (on the loader thread) until the checkpoint folder exists or the time
    is up; then the load goes on as usual (a folder still missing fails as it would have). Whatever copies
    the weights in should make the folder appear whole: copy to another name, then rename it into place."""
    folder = Path(settings.checkpoint)
    deadline = time.monotonic() + settings.checkpoint_wait_s
    if settings.checkpoint_wait_s > 0 and not folder.exists():
        logger.info("waiting up to %g s for the checkpoint folder %s", settings.checkpoint_wait_s, folder)
        while not folder.exists() and time.monotonic() < deadline:
            time.sleep(poll_s)


def _build_engine(settings: Settings, engine_factory: EngineFactory) -> GenerationBackend:
    """Runs on the loader thread: (wait for the checkpoint,) load, then warm up with one tiny greedy
    generation."""
    wait_for_checkpoint(settings)
    engine = engine_factory(settings)
    if settings.warmup:
        tokenizer = engine.tokenizer
        prompt = tokenizer.encode(WARMUP_TEXT, prepend=tokenizer.get_bos_token_id())
        for _ in engine.generate(prompt, max_tokens=2, temperature=0.0):
            pass
    return engine


def load_guardrail(settings: Settings) -> Guardrail:
    """The guardrail NANOCHAT_GUARDRAIL asks for (on a loader thread; only when it is on)."""
    guardrail = Guardrail.load(
        model_folder(settings.guardrail_model), settings.guardrail, settings.guardrail_threshold
    )
    logger.info(
        "guardrail %s on: mode %s, threshold %s", guardrail.version, guardrail.mode, guardrail.threshold
    )
    return guardrail
