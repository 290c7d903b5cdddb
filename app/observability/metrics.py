"""Every Prometheus metric of the service, defined once (the catalog: docs/observability.md), and the hooks
that record them.

Who calls what:
- the request middleware: `observe_request`, `observe_rejection`, `observe_generation` (once per request);
- the generation routes, when the guardrail is on: `observe_guardrail` (once per screened request);
- the side routes' admission (app/admission.py): `enable_admission` (once per pool), `observe_admission`
  (once per job offered), `observe_admission_done` (once per job admitted, when it ends);
- the scheduler thread: `observe_decode_step` (once per decode step: one histogram observation) and
  `set_load` (only when the queue depth or the number of active sequences changed);
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
    multiprocess,
)
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from app.scheduler import GenerationStream

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"  # the route of a request no route matched, the method of one that is not GET or POST
METHODS = frozenset({"GET", "POST"})
SAMPLE_INTERVAL_S = 5.0
PACKAGE = "nanochat-service"
REPO_ROOT = Path(__file__).resolve().parents[2]
UNLIMITED_BYTES = 2**60  # cgroup v1 reports "no limit" as a number near 2**63
FINISH_REASONS = ("stop", "length", "cancelled", "deadline", "error")
GUARDRAIL_ACTIONS = ("allow", "flag", "block")
ADMISSION_OUTCOMES = ("admitted", "rejected")
# status of a rejected request -> reason (docs/observability.md)
REJECTION_REASONS = {
    400: "validation",
    401: "unauthorized",
    413: "body_too_large",
    422: "validation",
    429: "queue_full",
    503: "not_ready",
    504: "deadline",
}

# Buckets of the OpenTelemetry GenAI semantic conventions (gen_ai.server.*), in seconds.
REQUEST_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
                   163.84)  # fmt: skip
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
# the conventions' buckets start at 10 ms; a CPU decode step of the demo model takes about 1 ms
TPOT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                1.0, 2.5)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

disable_created_metrics()  # no `_created` series beside every counter and histogram
REGISTRY = CollectorRegistry(auto_describe=True)


def _gauge(name: str, documentation: str, labels: tuple[str, ...] = (), mode: str = "livesum") -> Gauge:
    return Gauge(name, documentation, labels, registry=REGISTRY, multiprocess_mode=mode)  # type: ignore[arg-type]


# ---- the catalog (names, types, labels and gauge modes exactly as docs/observability.md) ------------------
REQUESTS = Counter(
    "nanochat_requests", "HTTP requests answered", ("route", "method", "status_class"), registry=REGISTRY
)
REQUEST_DURATION = Histogram(
    "nanochat_request_duration_seconds",
    "Request received to last byte of the response (a whole stream)",
    ("route",),
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)
TTFT = Histogram(
    "nanochat_time_to_first_token_seconds",
    "Generation request queued to first token generated",
    buckets=TTFT_BUCKETS,
    registry=REGISTRY,
)
TPOT = Histogram(
    "nanochat_time_per_output_token_seconds",
    "Per request: (generation time - TTFT) / (tokens - 1)",
    buckets=TPOT_BUCKETS,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "nanochat_queue_wait_seconds", "Queued to admitted to the batch", buckets=TTFT_BUCKETS, registry=REGISTRY
)
PROMPT_TOKENS = Counter(
    "nanochat_prompt_tokens", "Prompt tokens of finished generation requests", registry=REGISTRY
)
GENERATION_TOKENS = Counter("nanochat_generation_tokens", "Tokens generated", registry=REGISTRY)
ACTIVE_SEQUENCES = _gauge("nanochat_active_sequences", "Sequences in the decode batch")
QUEUE_DEPTH = _gauge("nanochat_queue_depth", "Requests waiting for admission")
QUEUE_CAPACITY = _gauge("nanochat_queue_capacity", "Requests that may wait before 429 (NANOCHAT_MAX_QUEUE)")
BATCH_SLOTS = _gauge("nanochat_batch_slots", "Decode batch size (NANOCHAT_MAX_BATCH)")
BATCH_SIZE = Histogram(
    "nanochat_batch_size", "Sequences in each decode step", buckets=BATCH_BUCKETS, registry=REGISTRY
)
REJECTED = Counter(
    "nanochat_rejected_requests", "Requests turned away, by reason", ("reason",), registry=REGISTRY
)
FINISHED = Counter(
    "nanochat_finished_requests",
    "Generation requests ended, by finish reason",
    ("finish_reason",),
    registry=REGISTRY,
)
GUARDRAIL_DECISIONS = Counter(
    "nanochat_guardrail_decisions",
    "Guardrail decisions on generation requests, by action",
    ("action",),
    registry=REGISTRY,
)
ADMISSION_REQUESTS = Counter(
    "nanochat_admission_requests",
    "Jobs offered to a side route's pool (classify, guardrail), by outcome",
    ("pool", "outcome"),
    registry=REGISTRY,
)
ADMISSION_IN_FLIGHT = _gauge(
    "nanochat_admission_in_flight", "Jobs admitted to a side route's pool and not finished", ("pool",)
)
MODEL_LOAD = _gauge(
    "nanochat_model_load_seconds",
    "Time to load (and warm) the model, with the guardrail and the classifier",
    mode="livemax",
)
READY = _gauge("nanochat_ready", "1 when the worker is ready, 0 while loading or draining", mode="livemin")
BUILD_INFO = _gauge("nanochat_build_info", "Always 1", ("version", "git_sha", "model"), mode="livemax")
PROCESS_CPU = Counter("nanochat_process_cpu_seconds", "CPU time of the worker processes", registry=REGISTRY)
PROCESS_MEMORY = _gauge(
    "nanochat_process_resident_memory_bytes", "Resident memory of the live worker processes"
)
INSTANCE_PRICE = _gauge(
    "nanochat_instance_price_dollars_per_hour", "NANOCHAT_INSTANCE_PRICE_PER_HOUR", mode="livemax"
)
# every worker sees every GPU (NVML ignores CUDA_VISIBLE_DEVICES): the same figure, not a sum
GPU_UTILIZATION = _gauge("nanochat_gpu_utilization_ratio", "GPU utilisation, 0-1", ("gpu",), mode="livemax")
GPU_MEMORY_USED = _gauge("nanochat_gpu_memory_used_bytes", "GPU memory used", ("gpu",), mode="livemax")
GPU_MEMORY_TOTAL = _gauge("nanochat_gpu_memory_total_bytes", "GPU memory in all", ("gpu",), mode="livemax")


@functools.cache
def memory_limit_gauge() -> Gauge:
    """Made on first use, when there is a limit: without one there is no series (a 0 would read as "no
    memory at all" in resident / limit)."""
    return _gauge("nanochat_memory_limit_bytes", "The container's memory limit (cgroup)", mode="livemax")


# ---- requests (the middleware, once per request) -------------------------------------------------------
def observe_request(route: str, method: str, status: int, duration_s: float) -> None:
    REQUESTS.labels(route, method if method in METHODS else OTHER, f"{status // 100}xx").inc()
    REQUEST_DURATION.labels(route).observe(duration_s)


def rejection_reason(status: int) -> str | None:
    return REJECTION_REASONS.get(status)


def observe_rejection(reason: str) -> None:
    REJECTED.labels(reason).inc()


def finish_reason(stream: GenerationStream) -> str:
    """How a generation ended: `stop` / `length` (`length` if any choice ran out), `deadline`, `error`, or
    `cancelled` (the client went away, or the server stopped first)."""
    error = stream.error
    if error is not None:
        return {504: "deadline", 503: "cancelled"}.get(error.status, "error")
    reasons = stream.finish_reasons
    if len(reasons) < stream.n:
        return "cancelled"
    return "length" if "length" in reasons.values() else "stop"


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
    if finish in ("stop", "length") and duration is not None and per_sequence > 1:
        TPOT.observe((duration - ttft) / (per_sequence - 1))


def enable_guardrail() -> None:
    """Every action's series from 0, so that rates and shares exist before the first flag or block."""
    for action in GUARDRAIL_ACTIONS:
        GUARDRAIL_DECISIONS.labels(action)


def observe_guardrail(action: str) -> None:
    GUARDRAIL_DECISIONS.labels(action).inc()


def enable_admission(pool: str) -> None:
    """The pool's series from 0, before its first job."""
    for outcome in ADMISSION_OUTCOMES:
        ADMISSION_REQUESTS.labels(pool, outcome)
    ADMISSION_IN_FLIGHT.labels(pool)


def observe_admission(pool: str, admitted: bool) -> None:
    ADMISSION_REQUESTS.labels(pool, "admitted" if admitted else "rejected").inc()
    if admitted:
        ADMISSION_IN_FLIGHT.labels(pool).inc()


def observe_admission_done(pool: str) -> None:
    ADMISSION_IN_FLIGHT.labels(pool).dec()


# ---- the scheduler thread ------------------------------------------------------------------------------
def observe_decode_step(batch_size: int) -> None:
    BATCH_SIZE.observe(batch_size)


def set_load(queue_depth: int, active_sequences: int) -> None:
    QUEUE_DEPTH.set(queue_depth)
    ACTIVE_SEQUENCES.set(active_sequences)


# ---- the service's state -------------------------------------------------------------------------------
def describe_service(model: str, instance_price_per_hour: float) -> None:
    BUILD_INFO.labels(version(), git_sha(), model).set(1)
    INSTANCE_PRICE.set(instance_price_per_hour)


def set_capacity(queue_capacity: int, batch_slots: int) -> None:
    QUEUE_CAPACITY.set(queue_capacity)
    BATCH_SLOTS.set(batch_slots)


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
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)
    return registry


def render(accept: str | None = None) -> tuple[bytes, str]:
    """The exposition for a scrape (format by its Accept header) and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(exposition_registry()), content_type
