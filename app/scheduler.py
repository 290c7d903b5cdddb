"""Continuous batching: one scheduler per worker process owns the engine and runs it on its own thread.

Each turn of the loop: drop cancelled and expired requests, admit the next queued request (its prefill
runs in chunks, one per turn, so a long prompt never stalls the others), then one batched decode step for
every active sequence. Tokens go back to each request's asyncio queue with `call_soon_threadsafe`; the
event loop never runs model code.

The queue is bounded: when it is full, `submit` fails at once with `QueueFull` (HTTP 429). `drain()` stops
taking requests, serves the ones accepted (running or queued) within a grace period, then cancels what is
left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from app.observability import metrics
from nanochat.backend import EngineError, Generation, GenerationBackend, SamplingParams, TokenEvent

logger = logging.getLogger(__name__)
FLUSH_INTERVAL_S = 0.02  # streamed deltas reach the event loop at least this often (see _flush)


class SchedulerError(Exception):
    """A request the scheduler cannot serve (app/errors.py alone decides what HTTP answers each one)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueFull(SchedulerError):
    """The queue is full: come back later (`retry_after`)."""


class NotReady(SchedulerError):
    """Not accepting work: starting, draining or stopped; or stopped before this request finished."""


class DeadlineExceeded(SchedulerError):
    """The request ran past its deadline, queued or running."""


class InvalidRequest(SchedulerError):
    """The request cannot run on this engine (a prompt past the context, n past the batch)."""


class InternalError(SchedulerError):
    """The engine failed on this request."""


@dataclass(frozen=True)
class Delta:
    """New text (and the token behind it) for one choice; `finish_reason` set on its last delta."""

    index: int
    token: int
    text: str
    finish_reason: str | None
    logprob: float | None = None  # with SamplingParams.logprobs (see nanochat.backend.TokenEvent)
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass
class _End:
    error: SchedulerError | None = None


@dataclass(eq=False)
class _Job:
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str
    deadline: float
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    submitted_at: float = field(default_factory=time.monotonic)
    admitted_at: float | None = None
    prefill_done_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    generation: Generation | None = None  # set once the engine has begun it
    completion_tokens: int = 0
    finish_reasons: dict[int, str] = field(default_factory=dict)

    def push(self, item: Delta | _End) -> None:
        """Deliver from another thread (one wake-up of the event loop per item)."""
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def _deliver(items: list[tuple[asyncio.Queue, Delta | _End]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


class GenerationStream:
    """What `Scheduler.submit` returns: an async iterator of `Delta`s, plus the request's figures."""

    def __init__(self, job: _Job, scheduler: Scheduler) -> None:
        self._job = job
        self._scheduler = scheduler
        self.request_id = job.request_id
        self.prompt_tokens = len(job.prompt_ids)
        self.n = job.params.n
        self.params = job.params
        self.submitted_at = job.submitted_at  # time.monotonic(); the figures below count from it
        self._end: _End | None = None

    @property
    def completion_tokens(self) -> int:
        return self._job.completion_tokens

    @property
    def finish_reasons(self) -> dict[int, str]:
        return dict(self._job.finish_reasons)

    @property
    def queue_wait_s(self) -> float | None:
        job = self._job
        return None if job.admitted_at is None else job.admitted_at - job.submitted_at

    @property
    def prefill_done_s(self) -> float | None:
        job = self._job
        return None if job.prefill_done_at is None else job.prefill_done_at - job.submitted_at

    @property
    def ttft_s(self) -> float | None:
        job = self._job
        return None if job.first_token_at is None else job.first_token_at - job.submitted_at

    @property
    def duration_s(self) -> float | None:
        job = self._job
        return None if job.finished_at is None else job.finished_at - job.submitted_at

    @property
    def error(self) -> SchedulerError | None:
        """The error the stream ended with, once its consumer has seen the end."""
        return None if self._end is None else self._end.error

    @property
    def prompt_logprobs(self) -> list[tuple[float, tuple[tuple[int, float], ...]]]:
        """With `params.prompt_logprobs`, once the first delta has arrived: prompt tokens 1...'s logprobs."""
        generation = self._job.generation
        return list(generation.prompt_logprobs) if generation is not None else []

    def token_ids(self) -> tuple[list[int], list[list[int]]]:
        """The prompt's token ids and each choice's generated ones (for logging the content)."""
        generation = self._job.generation
        outputs = [list(c.tokens) for c in generation.continuations] if generation is not None else []
        return list(self._job.prompt_ids), outputs

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> Delta:
        item = self._end if self._end is not None else await self._job.queue.get()
        if isinstance(item, _End):
            self._end = item
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    def take_ready(self) -> list[Delta]:
        """The deltas already delivered, without waiting (to send them in one write)."""
        ready = []
        while self._end is None and not self._job.queue.empty():
            item = self._job.queue.get_nowait()
            if isinstance(item, _End):
                self._end = item  # __anext__ ends the stream (or raises) next
            else:
                ready.append(item)
        return ready

    def cancel(self) -> None:
        """Stop generating (the client went away); the row is freed at the next step."""
        self._scheduler._cancel(self._job)


class Scheduler:
    def __init__(
        self,
        engine: GenerationBackend,
        max_queue: int = 64,
        request_timeout_s: float = 120.0,
        prefill_chunk: int = 256,
        record_metrics: bool = False,
    ) -> None:
        self.engine = engine
        self.record_metrics = record_metrics  # batch sizes, queue depth and active sequences (metrics.py)
        self._load = (-1, -1)  # the queue depth and active sequences last recorded
        self._prefix_cache = engine.prefix_cache_stats()  # the prefix cache's figures last recorded
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self.prefill_chunk = prefill_chunk
        self._cond = threading.Condition()
        self._waiting: deque[_Job] = deque()
        self._active: dict[int, _Job] = {}  # id(job.generation) -> job
        self._prefilling: _Job | None = None
        self._cancelled: list[_Job] = []
        self._free_rows = engine.max_batch  # updated by the loop; read by submit for admission control
        self._outbox: list[tuple[_Job, Delta | _End]] = []  # deliveries not yet sent to the event loop
        self._urgent = False  # the outbox holds a first token or an ending: send it this turn
        self._earliest_deadline = float("inf")  # no request can have expired before this (monotonic) time
        self._last_flush = 0.0
        self._state = "starting"  # starting -> ready -> draining -> stopped
        self._thread: threading.Thread | None = None
        self.started_at = time.time()
        self.totals = {"requests": 0, "completed": 0, "rejected": 0, "cancelled": 0, "timed_out": 0,
                       "prompt_tokens": 0, "completion_tokens": 0}  # fmt: skip

    # ---- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.record_metrics and self._prefix_cache is not None:  # its series from 0
            metrics.record_prefix_cache(self._prefix_cache, self._prefix_cache)
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)
        with self._cond:
            self._state = "ready"
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._state == "ready"

    @property
    def state(self) -> str:
        return self._state

    async def drain(self, grace_s: float) -> int:
        """No new requests (NotReady, 503); the requests already accepted, running or queued, get `grace_s`
        to finish (their clients have their 200 already), then whatever is left is cut. Returns how many
        requests were cut (0: every accepted request finished within the grace)."""
        with self._cond:
            if self._state in ("draining", "stopped"):
                return 0
            self._state = "draining"
        deadline = time.monotonic() + grace_s
        while self._busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        cut = self._busy_requests()
        self.stop()
        return cut

    def stop(self) -> None:
        with self._cond:
            self._state = "stopped"
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _busy(self) -> bool:
        with self._cond:
            return bool(self._active or self._prefilling or self._waiting)

    def _busy_requests(self) -> int:
        """Accepted, unfinished requests: decoding (a job may decode several rows), prefilling, queued."""
        with self._cond:
            jobs = {id(job) for job in self._active.values()}
            return len(jobs) + (1 if self._prefilling else 0) + len(self._waiting)

    # ---- requests -------------------------------------------------------------------------------------
    async def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        timeout_s: float | None = None,
    ) -> GenerationStream:
        """Queue a request; raises NotReady, QueueFull or InvalidRequest at once."""
        if len(prompt_ids) > self.engine.max_seq_len:
            raise InvalidRequest(
                f"the prompt is {len(prompt_ids)} tokens; this model's context is {self.engine.max_seq_len}"
            )
        if params.n > self.engine.max_batch:
            raise InvalidRequest(f"n={params.n} is more than this server's batch of {self.engine.max_batch}")
        job = _Job(
            list(prompt_ids),
            params,
            request_id or uuid.uuid4().hex,
            time.monotonic() + (timeout_s or self.request_timeout_s),
            asyncio.get_running_loop(),
            asyncio.Queue(),
        )
        with self._cond:
            if self._state != "ready":
                raise NotReady(f"the server is {self._state}", retry_after=1)
            if len(self._waiting) >= self.max_queue + max(self._free_rows - params.n + 1, 0):
                self.totals["rejected"] += 1
                raise QueueFull(f"{len(self._waiting)} requests are already queued", retry_after=1)
            self._waiting.append(job)
            self._earliest_deadline = min(self._earliest_deadline, job.deadline)
            self.totals["requests"] += 1
            self._cond.notify()
        return GenerationStream(job, self)

    def _cancel(self, job: _Job) -> None:
        with self._cond:
            if job.finished_at is None:
                self._cancelled.append(job)
                self._cond.notify()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            active = list(self._active.values())
            prefix_cache = self.engine.prefix_cache_stats()
            return {
                "state": self._state,
                "queue_depth": len(self._waiting),
                "active_requests": len(active) + (1 if self._prefilling else 0),
                "active_sequences": self.engine.num_decoding,
                "slots": self.engine.max_batch,
                "free_slots": self._free_rows,
                "uptime_s": round(time.time() - self.started_at, 1),
                "totals": dict(self.totals),
                "prefix_cache": prefix_cache.as_dict() if prefix_cache else None,
            }

    # ---- the loop (scheduler thread) ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while (
                    self._state != "stopped"
                    and not self._waiting
                    and not self._active
                    and not self._prefilling
                    and not self._cancelled
                ):
                    self._flush(force=True)  # nothing pending may wait for a next turn that never comes
                    self._cond.wait()
                if self._state == "stopped":
                    break
                cancelled, self._cancelled = self._cancelled, []
            try:
                for job in cancelled:
                    self._drop(job, None, "cancelled")
                self._expire()
                self._admit()
                if self._prefilling is not None:
                    job = self._prefilling
                    self._dispatch(self.engine.prefill(job.generation, self.prefill_chunk))
                    if not job.generation.prefill_remaining:
                        job.prefill_done_at = time.monotonic()
                        with self._cond:
                            self._prefilling = None
                            if not job.generation.done:
                                self._active[id(job.generation)] = job
                        if job.generation.done:
                            self._finish(job)
                    self._flush()  # a first token goes out now, not after the next decode step
                if self.engine.num_decoding:
                    if self.record_metrics:
                        metrics.observe_decode_step(self.engine.num_decoding)
                    self._dispatch(self.engine.decode_step())
                    for job in [j for j in self._active.values() if j.generation.done]:
                        self._finish(job)
                with self._cond:
                    self._free_rows = self.engine.free_rows()
                    load = (len(self._waiting), self.engine.num_decoding)
                if self.record_metrics and load != self._load:
                    self._load = load
                    metrics.set_load(*load)
                if self.record_metrics and self._prefix_cache is not None:
                    self._record_prefix_cache()
            except Exception:  # a bug must not kill the thread and leave every client waiting forever
                logger.exception("the scheduler turn failed; failing the requests in flight")
                self._fail_all(InternalError("generation failed inside the server; the error is logged"))
            self._flush()
        # stopped: cut whatever is still running
        for job in [
            *self._active.values(),
            *([self._prefilling] if self._prefilling else []),
            *self._waiting,
        ]:
            self._drop(job, NotReady("the server stopped before this request finished"), "cancelled")
        self._flush(force=True)

    def _record_prefix_cache(self) -> None:
        now = self.engine.prefix_cache_stats()
        if now is not None and now != self._prefix_cache:
            metrics.record_prefix_cache(self._prefix_cache, now)
            self._prefix_cache = now

    def _fail_all(self, error: SchedulerError) -> None:
        """End every admitted request with `error` and empty the engine (after an unexpected failure in
        it, its batch is in an unknown state)."""
        with self._cond:
            jobs = [*self._active.values(), *([self._prefilling] if self._prefilling else [])]
        for job in jobs:
            self._drop(job, error, None, cancel_in_engine=False)
        self.engine.reset()

    def _admit(self) -> None:
        while self._prefilling is None and self._waiting:
            with self._cond:
                if not self._waiting or not self.engine.can_begin(self._waiting[0].params.n):
                    return
                job = self._waiting.popleft()
                # reserve its rows now: until the turn ends, `submit` must not count them as free
                self._free_rows -= job.params.n
                # and it is the prefilling job from now, in the same hold of the lock: out of the queue
                # and in no list while `begin` ran, a drain saw nothing busy and stopped, cutting it
                self._prefilling = job
            try:
                job.generation = self.engine.begin(job.prompt_ids, job.params)
            except EngineError as e:
                self._drop(job, InvalidRequest(str(e)), None)
                continue
            job.admitted_at = time.monotonic()

    def _expire(self) -> None:
        now = time.monotonic()
        if now < self._earliest_deadline:
            return
        with self._cond:
            expired = [j for j in (*self._waiting, *self._active.values()) if j.deadline < now]
            if self._prefilling is not None and self._prefilling.deadline < now:
                expired.append(self._prefilling)
        for job in expired:
            message = f"the request did not finish within {self.request_timeout_s:g} s"
            self._drop(job, DeadlineExceeded(message), "timed_out")
        with self._cond:
            jobs = [*self._waiting, *self._active.values(), *([self._prefilling] if self._prefilling else [])]
            self._earliest_deadline = min((j.deadline for j in jobs), default=float("inf"))

    def _dispatch(self, events: list[TokenEvent]) -> None:
        now = time.monotonic()
        for event in events:
            job = self._active.get(id(event.generation))
            if (
                job is None
                and self._prefilling is not None
                and self._prefilling.generation is event.generation
            ):
                job = self._prefilling
            if job is None:
                continue
            if job.first_token_at is None:
                job.first_token_at = now
                self._urgent = True  # time to first token is not worth delaying
            job.completion_tokens += 1
            if event.finish_reason:
                job.finish_reasons[event.index] = event.finish_reason
            scored = (event.logprob, event.top_logprobs)
            delta = Delta(event.index, event.token, event.text, event.finish_reason, *scored)
            self._outbox.append((job, delta))

    def _finish(self, job: _Job) -> None:
        with self._cond:
            self._active.pop(id(job.generation), None)
            job.finished_at = time.monotonic()
            self.totals["completed"] += 1
            self.totals["prompt_tokens"] += len(job.prompt_ids)
            self.totals["completion_tokens"] += job.completion_tokens
        self._outbox.append((job, _End()))
        self._urgent = True

    def _drop(
        self, job: _Job, error: SchedulerError | None, counter: str | None, cancel_in_engine: bool = True
    ) -> None:
        """Remove a job wherever it is, free its rows, and end its stream (with `error`, if any)."""
        with self._cond:
            if job.finished_at is not None:
                return
            job.finished_at = time.monotonic()
            if job in self._waiting:
                self._waiting.remove(job)
            self._active.pop(id(job.generation), None)
            if self._prefilling is job:
                self._prefilling = None
            if counter:
                self.totals[counter] += 1
        if cancel_in_engine and job.generation is not None and not job.generation.done:
            self.engine.cancel(job.generation)
        self._outbox.append((job, _End(error)))
        self._urgent = True

    def _flush(self, force: bool = False) -> None:
        """Send the outbox to the event loop(s) in one wake-up each. Between first tokens and endings,
        deltas are sent at least every FLUSH_INTERVAL_S: each wake-up takes the GIL from the model."""
        now = time.monotonic()
        if not self._outbox or not (force or self._urgent or now - self._last_flush >= FLUSH_INTERVAL_S):
            return
        self._urgent, self._last_flush = False, now
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for job, item in self._outbox:
            by_loop.setdefault(job.loop, []).append((job.queue, item))
        self._outbox = []
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that event loop is closed: nobody is listening
                loop.call_soon_threadsafe(_deliver, items)
