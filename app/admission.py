"""Bounded admission for the CPU-heavy side routes: `POST /v1/classify` and the guardrail's screening of
chat prompts, and retrieval and embeddings (the `rag` pool, which app/rag_service.py makes when an index is
configured). Each owns one `Admission`.

An Admission runs its route's work on a pool of its own, `workers` at once, never on the event loop, and
lets at most `queue` more jobs wait for a worker. Past that, `run` raises a 429 `queue_full` with
`Retry-After` at once, before any work: a flood of one route is turned away cheaply instead of queueing
without bound. The waiting happens here (a job is handed to the pool only when a worker is free), so a
waiting job whose caller went away is dropped; one that started runs to its end.

The pool is of threads or of processes (`kind`). scikit-learn's text features are pure Python and hold
the GIL: on a thread they make the event loop (probes, streams) and the scheduler wait up to the 5 ms
switch interval each time they need it (measured under a classify flood: `/health` p99 225 ms, an 8-token
chat 268 ms). So classification runs in processes: `spawn`ed (never forked: the server holds torch and a
scheduler thread), each at a lower CPU priority (`NICE`), loading the classifier once and returning plain
lists (app/pool_worker.py). The guardrail stays on a thread: it screens every chat prompt in about a
millisecond, where a round trip to a process would cost more than it saves.

A process pool is created at its first job, in the process that serves (each gunicorn worker has its own),
and shut down with the app (`shutdown_all`). `warm` starts its workers before any request: the classifier's
is warmed at start-up, as it loads (spawning a worker takes a second on an idle machine, tens of seconds
on a loaded one: no request should wait for it). A worker process that dies (killed, out of memory) breaks a
Python process pool for good: the job it ran gets a 503 `worker_crashed` saying so, and the next job gets
a fresh pool; a pool found broken before a job was handed over is replaced without failing that job.

Counted per pool (`pool` label): jobs admitted and rejected (`nanochat_admission_requests_total`) and jobs
admitted but not yet finished (`nanochat_admission_in_flight`). It does not read or parse bodies, order
callers fairly, or limit the chat route: the scheduler's queue (NANOCHAT_MAX_QUEUE) does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from app import pool_worker
from app.config import model_folder
from app.errors import APIError
from app.observability import metrics

if TYPE_CHECKING:
    from app.config import Settings

logger = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_AFTER_S = 1  # as the scheduler's queue_full: the jobs behind a side route take milliseconds
# How long shutdown waits for a pool's running job and processes to end. It delays nothing: the
# interpreter's exit joins the pool's thread anyway, without a limit. A niced worker on a busy machine can
# take seconds to exit; past this, shutdown says so and lets the exit do the rest of the waiting.
EXIT_WAIT_S = 60.0
NICE = 10  # a process worker's priority below the server's: the loop and the scheduler come first
CLASSIFY = "classify"
GUARDRAIL = "guardrail"
Kind = Literal["thread", "process"]


class Admission:
    """At most `workers` jobs of one route running at once on its own pool, `queue` more waiting."""

    def __init__(
        self,
        name: str,
        workers: int,
        queue: int,
        *,
        kind: Kind = "thread",
        initializer: Callable[..., object] | None = None,
        initargs: tuple = (),
        record_metrics: bool = True,
    ) -> None:
        self.name = name
        self.workers = workers
        self.queue = queue
        self.kind = kind
        self.record_metrics = record_metrics
        self._initializer, self._initargs = initializer, initargs
        self._pool: Executor | None = None
        self._pool_pid = 0  # the process that created `_pool`: a forked child makes its own
        self._closed = False
        self._slots = asyncio.Semaphore(workers)  # jobs handed to the pool: at most one per worker
        self._in_flight = 0  # admitted and not finished: running or waiting
        if record_metrics:
            metrics.enable_admission(name)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on this route's pool; a 429 at once when `workers + queue` jobs are in flight, a 503
        when a worker process died running it. `fn` and `args` cross to a process by pickling: `fn` must
        be a module-level function of a module a worker can import cheaply."""
        if self._closed:
            raise APIError(503, f"the {self.name} pool has shut down", "shutting_down")
        admitted = self._in_flight < self.workers + self.queue
        if self.record_metrics:
            metrics.observe_admission(self.name, admitted)
        if not admitted:
            raise APIError(
                429,
                f"the {self.name} queue is full ({self.workers} running, {self.queue} waiting); "
                f"retry after {RETRY_AFTER_S} s",
                "queue_full",
                retry_after=RETRY_AFTER_S,
            )
        self._in_flight += 1
        try:
            await self._slots.acquire()  # cancelled here (the caller went away): the job never runs
        except BaseException:
            self._release()
            raise
        loop = asyncio.get_running_loop()
        try:
            pool, job = self._submit(fn, args)
        except BaseException:
            self._finish()
            raise

        def finished(_: Future) -> None:  # on the pool's thread: hand back to the loop
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is counting any more
                loop.call_soon_threadsafe(self._finish)

        job.add_done_callback(finished)  # before wrap_future's: the slot is free when the caller resumes
        try:
            return await asyncio.wrap_future(job)
        except BrokenProcessPool as e:
            self._replace(pool)
            raise APIError(
                503,
                f"the {self.name} worker process ended while it ran this request ({e}); a new one is "
                f"starting: retry after {RETRY_AFTER_S} s",
                "worker_crashed",
                retry_after=RETRY_AFTER_S,
            ) from e

    async def warm(self, fn: Callable[..., T], *args: Any) -> T:
        """Start every worker now, each running `fn(*args)` once after its initializer, and return the
        first one's result: outside admission (neither counted nor refused), for start-up."""
        pool = self._executor()
        jobs = [pool.submit(fn, *args) for _ in range(self.workers)]  # a process pool spawns one per job
        try:
            return await asyncio.wrap_future(jobs[0])
        except BrokenProcessPool:
            self._replace(pool)
            raise

    def _submit(self, fn: Callable[..., T], args: tuple) -> tuple[Executor, Future[T]]:
        pool = self._executor()
        try:
            return pool, pool.submit(fn, *args)
        except BrokenProcessPool:  # it broke while idle (a worker was killed): this job has not run
            self._replace(pool)
            pool = self._executor()
            return pool, pool.submit(fn, *args)

    def _executor(self) -> Executor:
        if self._closed:  # shut down while this job waited
            raise APIError(503, f"the {self.name} pool has shut down", "shutting_down")
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool_pid = os.getpid()
            if self.kind == "process":  # spawned, never forked: this process holds torch and threads
                self._pool = ProcessPoolExecutor(
                    self.workers,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=pool_worker.start,
                    initargs=(NICE, self._initializer, *self._initargs),
                )
            else:
                self._pool = ThreadPoolExecutor(
                    self.workers,
                    thread_name_prefix=f"{self.name}-worker",
                    initializer=self._initializer,
                    initargs=self._initargs,
                )
        return self._pool

    def _replace(self, broken: Executor) -> None:
        """Drop a broken pool (its processes are ended already); the next job creates a new one."""
        if self._pool is broken:
            self._pool = None
            logger.warning("a %s worker process died; the next job starts a new pool", self.name)
        broken.shutdown(wait=False, cancel_futures=True)

    def _finish(self) -> None:
        self._slots.release()
        self._release()

    def _release(self) -> None:
        self._in_flight -= 1
        if self.record_metrics:
            metrics.observe_admission_done(self.name)

    def shutdown(self, wait_s: float = EXIT_WAIT_S) -> bool:
        """Refuse new jobs (503) and end the pool: a job running finishes, its worker process then exits.
        Waits up to `wait_s` for that, and says whether the pool ended in time.

        The wait is not politeness: Python 3.11's process pool closes its wake-up pipe on its own thread
        as it ends, and the interpreter's exit hook writes to that pipe unlocked, so a pool still ending
        while the process exits can print `OSError: [Errno 9] Bad file descriptor` (seen after a
        SIGQUIT). A pool that has ended before the exit hook runs cannot race it."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return True
        # shutdown(wait=True) cancels the queued jobs at once, then joins the pool's own thread, which
        # joins its processes (a first shutdown(wait=False) would drop the thread it joins)
        ending = threading.Thread(
            target=pool.shutdown, kwargs={"cancel_futures": True}, name=f"{self.name}-pool-exit", daemon=True
        )
        ending.start()
        ending.join(wait_s)
        if ending.is_alive():
            logger.warning("the %s pool's running job outlived the %.0f s exit wait", self.name, wait_s)
            return False
        return True


def side_routes(settings: Settings) -> dict[str, Admission]:
    """One Admission per CPU-heavy side route, sized by Settings (NANOCHAT_<ROUTE>_WORKERS / _QUEUE):
    classification in processes that load the classifier once, the guardrail on a thread."""
    classifier = str(model_folder(settings.classifier).resolve()) if settings.classifier.strip() else ""
    return {
        CLASSIFY: Admission(
            CLASSIFY,
            settings.classify_workers,
            settings.classify_queue,
            kind="process",
            initializer=pool_worker.preload_classifier,
            initargs=(classifier,),
            record_metrics=settings.metrics,
        ),
        GUARDRAIL: Admission(
            GUARDRAIL, settings.guardrail_workers, settings.guardrail_queue, record_metrics=settings.metrics
        ),
    }


def shutdown_all(pools: dict[str, Admission]) -> None:
    """At the app's end: every side route's pool (their worker processes exit after their current job),
    each given up to EXIT_WAIT_S to end."""
    for pool in pools.values():
        pool.shutdown()
