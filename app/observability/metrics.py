"""The service's Prometheus metrics, created from the catalog (app/observability/catalog.py), and the hooks
that record them.

Who calls what:
- the request middleware: `observe_request`, `observe_rejection`, `observe_generation` (once per request);
- the generation routes, when the guardrail is on: `observe_guardrail` (once per screened request);
- retrieval (app/rag_service.py): `enable_rag` (once per index), `observe_retrieval` (once per search);
- the trace exporter's thread (app/observability/tracing.py's `CountingExporter`): `observe_trace_export`
  (once per export of a batch of spans), after `enable_trace_export` at start-up when tracing is on;
- the side routes' admission (app/admission.py): `enable_admission` (once per pool), `observe_admission`
  (once per job offered), `observe_admission_done` (once per job admitted, when it ends);
- the scheduler thread: `observe_decode_step` (once per decode step: one histogram observation),
  `set_load` (only when the queue depth or the number of active sequences changed) and
  `record_prefix_cache` (at its start, and when a prefill ends or a generation leaves the batch);
- the app's start-up and shut-down: `describe_service`, `set_capacity`, `set_model_load_seconds`,
  `set_ready`, `start_process_sampler`, `enable_guardrail`;
- `GET /metrics`: `render` (on the app's port), or app/metrics_server.py (on a port of its own).

Under gunicorn `PROMETHEUS_MULTIPROC_DIR` is set (app/gunicorn.conf.py) before this module is imported, and
prometheus-client writes every value to per-process files there; `render` then merges the files of all
workers (gauges by the mode the catalog gives each). Without it, values live in this process's registry.

Process CPU and memory, the cgroup memory limit and GPU figures come from a daemon thread sampling every
few seconds (`ProcessSampler`): cheap, and correct in multiprocess mode, where a scrape reaches one worker.
GPU gauges are set only when NVML initialises and finds a device; otherwise they have no series at all.
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import subprocess
import threading
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

from app.metrics_server import worker_registry
from app.observability import catalog

if TYPE_CHECKING:
    from app.scheduler import GenerationStream
    from nanochat.prefix_cache import PrefixCacheStats

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"  # the route of a request no route matched, the method of one that is not GET or POST
METHODS = frozenset({"GET", "POST"})
SAMPLE_INTERVAL_S = 5.0
PACKAGE = "nanochat-service"
REPO_ROOT = Path(__file__).resolve().parents[2]
UNLIMITED_BYTES = 2**60  # cgroup v1 reports "no limit" as a number near 2**63

disable_created_metrics()  # no `_created` series beside every counter and histogram
REGISTRY = CollectorRegistry(auto_describe=True)


def _expect(metric: catalog.Metric, kind: str) -> None:
    if metric.type != kind:
        raise ValueError(f"{metric.name} is a {metric.type}, not a {kind}")


def counter(metric: catalog.Metric) -> Counter:
    _expect(metric, "counter")
    return Counter(metric.client_name, metric.help, metric.labels, registry=REGISTRY)


def gauge(metric: catalog.Metric) -> Gauge:
    _expect(metric, "gauge")
    labels, mode = metric.labels, metric.mode
    return Gauge(metric.client_name, metric.help, labels, registry=REGISTRY, multiprocess_mode=mode)  # type: ignore[arg-type]


def histogram(metric: catalog.Metric) -> Histogram:
    _expect(metric, "histogram")
    labels, buckets = metric.labels, metric.buckets
    return Histogram(metric.client_name, metric.help, labels, buckets=buckets, registry=REGISTRY)


# ---- the catalog's metrics (app/observability/catalog.py defines them) ---------------------------------
REQUESTS = counter(catalog.REQUESTS)
REQUEST_DURATION = histogram(catalog.REQUEST_DURATION)
TTFT = histogram(catalog.TTFT)
TPOT = histogram(catalog.TPOT)
QUEUE_WAIT = histogram(catalog.QUEUE_WAIT)
PROMPT_TOKENS = counter(catalog.PROMPT_TOKENS)
GENERATION_TOKENS = counter(catalog.GENERATION_TOKENS)
ACTIVE_SEQUENCES = gauge(catalog.ACTIVE_SEQUENCES)
QUEUE_DEPTH = gauge(catalog.QUEUE_DEPTH)
QUEUE_CAPACITY = gauge(catalog.QUEUE_CAPACITY)
BATCH_SLOTS = gauge(catalog.BATCH_SLOTS)
BATCH_SIZE = histogram(catalog.BATCH_SIZE)
REJECTED = counter(catalog.REJECTED)
FINISHED = counter(catalog.FINISHED)
GUARDRAIL_DECISIONS = counter(catalog.GUARDRAIL_DECISIONS)
ADMISSION_REQUESTS = counter(catalog.ADMISSION_REQUESTS)
ADMISSION_IN_FLIGHT = gauge(catalog.ADMISSION_IN_FLIGHT)
TRACE_EXPORT = counter(catalog.TRACE_EXPORT)
MODEL_LOAD = gauge(catalog.MODEL_LOAD)
READY = gauge(catalog.READY)
BUILD_INFO = gauge(catalog.BUILD_INFO)
PROCESS_CPU = counter(catalog.PROCESS_CPU)
PROCESS_MEMORY = gauge(catalog.PROCESS_MEMORY)
MODEL_MEMORY = gauge(catalog.MODEL_MEMORY)
INSTANCE_PRICE = gauge(catalog.INSTANCE_PRICE)
PREFIX_CACHE_HITS = counter(catalog.PREFIX_CACHE_HITS)
PREFIX_CACHE_MISSES = counter(catalog.PREFIX_CACHE_MISSES)
PREFIX_CACHE_REUSED_TOKENS = counter(catalog.PREFIX_CACHE_REUSED_TOKENS)
PREFIX_CACHE_EVICTED = counter(catalog.PREFIX_CACHE_EVICTED)
PREFIX_CACHE_BYTES = gauge(catalog.PREFIX_CACHE_BYTES)
PREFIX_CACHE_LIMIT = gauge(catalog.PREFIX_CACHE_LIMIT)
GPU_UTILIZATION = gauge(catalog.GPU_UTILIZATION)
GPU_MEMORY_USED = gauge(catalog.GPU_MEMORY_USED)
GPU_MEMORY_TOTAL = gauge(catalog.GPU_MEMORY_TOTAL)
RAG_RETRIEVAL = histogram(catalog.RAG_RETRIEVAL)
RAG_RESULTS = counter(catalog.RAG_RESULTS)
RAG_CACHE_HITS = counter(catalog.RAG_CACHE_HITS)
RAG_CACHE_MISSES = counter(catalog.RAG_CACHE_MISSES)
RAG_GUARDRAIL = counter(catalog.RAG_GUARDRAIL)


@functools.cache
def memory_limit_gauge() -> Gauge:
    """Made on first use, when there is a limit: without one there is no series (a 0 would read as "no
    memory at all" in resident / limit)."""
    return gauge(catalog.MEMORY_LIMIT)


# ---- requests (the middleware, once per request) -------------------------------------------------------
def observe_request(route: str, method: str, status: int, duration_s: float) -> None:
    REQUESTS.labels(route, method if method in METHODS else OTHER, f"{status // 100}xx").inc()
    REQUEST_DURATION.labels(route).observe(duration_s)


def rejection_reason(status: int) -> str | None:
    return catalog.REJECTION_REASONS.get(status)


def observe_rejection(reason: str) -> None:
    REJECTED.labels(reason).inc()


def finish_reason(stream: GenerationStream) -> str:
    """How a generation ended: `stop` / `length` / `tool_calls` (`length` if any choice ran out, else
    `tool_calls` if any ended with a tool call), `deadline`, `error`, or `cancelled` (the client went away,
    or the server stopped first)."""
    from app.scheduler import DeadlineExceeded, NotReady  # not at the top: the scheduler imports this module

    error = stream.error
    if error is not None:
        if isinstance(error, DeadlineExceeded):
            return "deadline"
        return "cancelled" if isinstance(error, NotReady) else "error"
    reasons = stream.finish_reasons
    if len(reasons) < stream.n:
        return "cancelled"
    ended = set(reasons.values())
    return "length" if "length" in ended else "tool_calls" if "tool_calls" in ended else "stop"


def observe_generation(stream: GenerationStream, finish: str) -> None:
    """A generation request's figures, once it has ended."""
    FINISHED.labels(finish).inc()
    GENERATION_TOKENS.inc(stream.completion_tokens)
    if stream.queue_wait_s is None:  # never admitted: no prompt work done, no tokens
        return
    QUEUE_WAIT.observe(stream.queue_wait_s)
    PROMPT_TOKENS.inc(stream.prompt_tokens)
    ttft, duration = stream.ttft_s, stream.duration_s
    if ttft is None:
        return
    TTFT.observe(ttft)
    per_sequence = stream.completion_tokens / stream.n
    if finish in ("stop", "length", "tool_calls") and duration is not None and per_sequence > 1:
        TPOT.observe((duration - ttft) / (per_sequence - 1))


def enable_guardrail() -> None:
    """Every action's series from 0, so that rates and shares exist before the first flag or block."""
    for action in catalog.GUARDRAIL_ACTIONS:
        GUARDRAIL_DECISIONS.labels(action)


def observe_guardrail(action: str) -> None:
    GUARDRAIL_DECISIONS.labels(action).inc()


def enable_trace_export() -> None:
    """The trace exporter's series from 0, before its first export."""
    for result in catalog.TRACE_EXPORT_RESULTS:
        TRACE_EXPORT.labels(result)


def observe_trace_export(ok: bool, spans: int) -> None:
    TRACE_EXPORT.labels("ok" if ok else "failed").inc(spans)


def enable_admission(pool: str) -> None:
    """The pool's series from 0, before its first job."""
    for outcome in catalog.ADMISSION_OUTCOMES:
        ADMISSION_REQUESTS.labels(pool, outcome)
    ADMISSION_IN_FLIGHT.labels(pool)


def observe_admission(pool: str, admitted: bool) -> None:
    ADMISSION_REQUESTS.labels(pool, "admitted" if admitted else "rejected").inc()
    if admitted:
        ADMISSION_IN_FLIGHT.labels(pool).inc()


def observe_admission_done(pool: str) -> None:
    ADMISSION_IN_FLIGHT.labels(pool).dec()


def enable_rag(index: str) -> None:
    """An index's series from 0, before its first retrieval."""
    RAG_RETRIEVAL.labels(index)
    RAG_RESULTS.labels(index)
    for cache in catalog.RAG_CACHES:
        RAG_CACHE_HITS.labels(index, cache)
        RAG_CACHE_MISSES.labels(index, cache)
    for action in catalog.RAG_GUARDRAIL_ACTIONS:
        RAG_GUARDRAIL.labels(index, action)


def observe_retrieval(
    index: str, seconds: float, results: int, caches: dict[str, tuple[int, int]], screened: dict[str, int]
) -> None:
    """One retrieval: its time, the chunks it returned, each cache's (hits, misses) during it, and the
    guardrail's actions on its chunks."""
    RAG_RETRIEVAL.labels(index).observe(seconds)
    RAG_RESULTS.labels(index).inc(results)
    for cache, (hits, misses) in caches.items():
        RAG_CACHE_HITS.labels(index, cache).inc(hits)
        RAG_CACHE_MISSES.labels(index, cache).inc(misses)
    for action, count in screened.items():
        RAG_GUARDRAIL.labels(index, action).inc(count)


# ---- the scheduler thread ------------------------------------------------------------------------------
def observe_decode_step(batch_size: int) -> None:
    BATCH_SIZE.observe(batch_size)


def set_load(queue_depth: int, active_sequences: int) -> None:
    QUEUE_DEPTH.set(queue_depth)
    ACTIVE_SEQUENCES.set(active_sequences)


def record_prefix_cache(before: PrefixCacheStats | None, now: PrefixCacheStats) -> None:
    """The prefix cache's counters grown by what it did since `before` (None: since it was made)."""
    PREFIX_CACHE_HITS.inc(now.hits - (before.hits if before else 0))
    PREFIX_CACHE_MISSES.inc(now.misses - (before.misses if before else 0))
    PREFIX_CACHE_REUSED_TOKENS.inc(now.reused_tokens - (before.reused_tokens if before else 0))
    PREFIX_CACHE_EVICTED.inc(now.evicted_blocks - (before.evicted_blocks if before else 0))
    PREFIX_CACHE_BYTES.set(now.bytes)
    PREFIX_CACHE_LIMIT.set(now.max_bytes)


# ---- the service's state -------------------------------------------------------------------------------
def describe_service(model: str, instance_price_per_hour: float) -> None:
    BUILD_INFO.labels(version(), git_sha(), model).set(1)
    INSTANCE_PRICE.set(instance_price_per_hour)


def set_capacity(queue_capacity: int, batch_slots: int) -> None:
    QUEUE_CAPACITY.set(queue_capacity)
    BATCH_SLOTS.set(batch_slots)


def set_model_memory(weights_bytes: int, kv_cache_bytes: int) -> None:
    MODEL_MEMORY.labels("weights").set(weights_bytes)
    MODEL_MEMORY.labels("kv_cache").set(kv_cache_bytes)


def set_model_load_seconds(seconds: float) -> None:
    MODEL_LOAD.set(seconds)


def set_ready(ready: bool) -> None:
    READY.set(1 if ready else 0)


def version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def git_sha(repo: Path = REPO_ROOT) -> str:
    """GIT_SHA from the environment (set by the image build), else the checkout's HEAD, else "unknown"."""
    sha = os.environ.get("GIT_SHA", "").strip()
    if sha:
        return sha
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


# ---- process, memory limit, GPUs ---------------------------------------------------------------------
def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory limit of this process's cgroup (v2, else v1) in bytes; None when there is none."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < UNLIMITED_BYTES:
            return int(text)
        return None  # "max", or v1's "no limit"
    return None


def resident_memory_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # no /proc: the peak is the best there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class Gpus:
    """NVML, when it initialises and finds devices; otherwise `sample` is a no-op (no error, no log)."""

    def __init__(self) -> None:
        self.handles: list = []
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self.nvml = pynvml
        except Exception:  # no library, no driver, no device: no GPU metrics
            self.handles = []

    def sample(self) -> None:
        for index, handle in enumerate(self.handles):
            gpu = str(index)
            try:
                utilization = self.nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception:  # a device that went away; try again next time
                continue
            GPU_UTILIZATION.labels(gpu).set(utilization.gpu / 100)
            GPU_MEMORY_USED.labels(gpu).set(memory.used)
            GPU_MEMORY_TOTAL.labels(gpu).set(memory.total)


class ProcessSampler:
    """A daemon thread: this process's CPU time and resident memory, and the GPUs, every `interval_s`."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._cpu_counted = 0.0
        self._gpus: Gpus | None = None
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)

    def start(self) -> ProcessSampler:
        limit = cgroup_memory_limit()
        if limit is not None:
            memory_limit_gauge().set(limit)
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        cpu = cpu_seconds()
        PROCESS_CPU.inc(max(cpu - self._cpu_counted, 0.0))
        self._cpu_counted = max(cpu, self._cpu_counted)
        PROCESS_MEMORY.set(resident_memory_bytes())
        if self._gpus is None:
            self._gpus = Gpus()
        self._gpus.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # never let a figure end the thread
                logger.debug("sampling process metrics failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()


_sampler: ProcessSampler | None = None
_sampler_lock = threading.Lock()


def start_process_sampler() -> ProcessSampler:
    """The process's one sampler (started on the first call)."""
    global _sampler
    with _sampler_lock:
        if _sampler is None:
            _sampler = ProcessSampler().start()
        return _sampler


# ---- exposition ----------------------------------------------------------------------------------------
def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def exposition_registry() -> CollectorRegistry:
    """What a scrape shows: every worker's values merged in multiprocess mode (read at each scrape, so also
    from gunicorn's master, app/metrics_server.py), else this process's."""
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    return worker_registry(path)


def render(accept: str | None = None) -> tuple[bytes, str]:
    """The exposition for a scrape (format by its Accept header) and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(exposition_registry()), content_type
