"""Every knob of the service, as one pydantic-settings class read from the environment (and `.env`).

Variables are prefixed `NANOCHAT_` (e.g. `NANOCHAT_MODEL`, `NANOCHAT_MAX_NUM_SEQS`), except `HOST` and
`PORT`, which keep the names Cloud Run and most platforms set (and `MODEL_BACKEND`, an alias of
`NANOCHAT_BACKEND`). `.env.example` lists them all. The settings a server is usually started with are also
command-line flags named as vLLM names them (`SERVE_FLAGS`: `--model`, `--max-num-seqs`, ...; `python -m
app --help`); a flag sets the same field as its variable and wins over it. Their variables follow the flags'
names; the older names (`NANOCHAT_CHECKPOINT`, `NANOCHAT_MODEL_NAME`, `NANOCHAT_MAX_BATCH`,
`NANOCHAT_API_KEYS`) still work, the new one winning where both are set.

Tracing is configured by the standard `OTEL_*` variables instead (see app/observability/tracing.py), and
gunicorn's metrics directory by `PROMETHEUS_MULTIPROC_DIR` (see app/gunicorn.conf.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.contract import APP_PORT
from nanochat.memory import PREFIX_CACHE_SIZE, PREFIX_CACHING_DEFAULT, parse_bytes

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
SERVICE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding app/ (/srv in the image)


def _split(value):
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    # populate_by_name: Settings(checkpoint=...) sets a field whose variables have other names (the flags do)
    model_config = SettingsConfigDict(
        env_prefix="NANOCHAT_", env_file=".env", extra="ignore", populate_by_name=True
    )

    # the model
    backend: Literal["nanochat", "hf"] = Field(  # hf: --model is a transformers causal LM folder
        "nanochat", validation_alias=AliasChoices("NANOCHAT_BACKEND", "MODEL_BACKEND")
    )
    checkpoint: str = Field(
        "models/demo",
        validation_alias=AliasChoices("NANOCHAT_MODEL", "NANOCHAT_CHECKPOINT"),
        description="the model: a checkpoint folder or a Hugging Face repo id",
    )
    step: int | None = None
    device: str = Field("cpu", description="torch device: cpu | cuda | cuda:N")
    dtype: Literal["float32", "bfloat16", "auto"] | None = Field(
        None,
        description="weights dtype: float32 | bfloat16 | auto (bfloat16 on CUDA and on CPUs with AMX or "
        "AVX512-BF16, else float32) (unset: float32 on CPU, bfloat16 on CUDA)",
    )
    compile: bool = Field(
        False,
        description="torch.compile the decode step at start-up, one graph per batch-size bucket (the "
        "nanochat backend; minutes of start-up on a small CPU; eager if compilation fails)",
    )
    quantization: Literal["none", "int8"] = Field(
        "none",
        description="int8: the linear layers' weights in int8, a quarter of float32's bytes (nanochat "
        "backend, CPU, float32; docs/quantization.md)",
    )
    served_model_name: Annotated[list[str], NoDecode] = Field(
        [],
        validation_alias=AliasChoices("NANOCHAT_SERVED_MODEL_NAME", "NANOCHAT_MODEL_NAME"),
        description="the names requests may give as `model` (comma-separated in the variable); the first is "
        "the one responses carry (unset: the model folder's name)",
    )
    accept_any_model: bool = Field(
        False, description="answer a request whatever `model` it names (for clients that send a fixed one)"
    )
    max_model_len: int | None = Field(
        None, ge=1, description="context in tokens, prompt and reply (unset: the model's); sizes the KV cache"
    )
    memory_limit: int | None = Field(
        None,
        description="memory the weights and the KV cache may take, in bytes or with a unit (512MB, 2GiB); "
        "a model that needs more fails at start-up (on CUDA the device's free memory bounds it too)",
    )
    enable_prefix_caching: bool = Field(  # on by default: a miss costs nothing measurable (docs/serving.md)
        PREFIX_CACHING_DEFAULT,
        description="keep the keys and values of prompts and finished sequences and reuse them for later "
        "prompts that start with the same tokens (the nanochat backend)",
    )
    prefix_cache_bytes: int | float = Field(
        PREFIX_CACHE_SIZE,
        description="memory the prefix cache may take: a fraction of the KV cache's (0.5) or a size (256MB, "
        "1GiB, bytes); within --memory-limit when one is set",
    )
    threads: int | None = None  # torch CPU threads (default: CPU cores minus one, left to the event loop)

    # the scheduler
    max_batch: int = Field(  # each choice of n counts
        16,
        ge=1,
        le=1024,
        validation_alias=AliasChoices("NANOCHAT_MAX_NUM_SEQS", "NANOCHAT_MAX_BATCH"),
        description="sequences decoded together (the KV cache holds this many)",
    )
    max_queue: int = Field(64, ge=0)  # requests waiting beyond the batch; more -> 429
    prefill_chunk: int = Field(256, ge=1)  # prompt tokens per prefill step (long prompts don't stall decode)
    request_timeout_s: float = Field(120.0, gt=0)  # per-request deadline -> 504
    drain_timeout_s: float = Field(
        8.0, ge=0
    )  # after SIGTERM, in-flight requests get this long (Cloud Run: 10 s)
    checkpoint_wait_s: float = Field(
        0.0,
        ge=0,
        description="wait up to this long for a checkpoint folder that does not exist yet (weights copied "
        "in by an init step or a sidecar; /ready says loading meanwhile); 0: fail at once",
    )
    warmup: bool = True  # run one tiny generation before /ready says yes
    on_load_failure: Literal["exit", "unready"] = "exit"  # exit non-zero, or stay up with /ready 503 + reason

    # limits, enforced before any model work
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_messages: int = Field(64, ge=1)
    max_message_chars: int = Field(32_000, ge=1)
    max_total_chars: int = Field(100_000, ge=1)
    max_tokens_limit: int = Field(1024, ge=1)  # largest max_tokens a request may ask for
    default_max_tokens: int = Field(256, ge=1)
    max_n: int = Field(4, ge=1)
    context_overflow: Literal["reject", "truncate"] = "reject"  # prompt too long: 400, or drop oldest turns

    # text classification (POST /v1/classify) and the guardrail on chat requests (docs/classify.md)
    classifier: str = "models/fortunes"  # a registry folder (model or model/version); empty: the route is off
    classify_max_inputs: int = Field(64, ge=1)  # texts in one classify request
    classify_max_chars: int = Field(10_000, ge=1)  # characters in one text
    guardrail: Literal["off", "flag", "block"] = "off"  # screen the user's messages before any model work
    guardrail_model: str = "models/guardrail"
    guardrail_threshold: float = Field(0.6, gt=0, lt=1)  # injection probability from which a text is caught

    # retrieval (docs/rag.md): POST /v1/retrieve, POST /v1/embeddings and chat's `retrieval` field
    rag_indexes: Annotated[list[str], NoDecode] = Field(
        [],
        description="NAME=FOLDER pairs (comma-separated in the variable) of indexes built by `nanochat rag "
        "index`; the first is the default; empty: retrieval is off",
    )
    rag_store: Literal["local", "chroma"] = "local"  # FAISS files in the index folder, or a Chroma server
    rag_chroma_url: str = ""  # with rag_store=chroma: the server, e.g. http://127.0.0.1:8010
    rag_guardrail: Literal["off", "flag", "drop"] = "drop"  # retrieved chunks that look like instructions
    rag_mode: Literal["hybrid", "bm25", "dense", "rerank"] = "hybrid"  # a request's default
    rag_reranker: str = ""  # a CrossEncoder id or folder: enables mode "rerank" (empty: none)
    rag_model: str = ""  # a model name whose chats get retrieval (e.g. nanochat-rag); in /v1/models
    rag_k: int = Field(4, ge=1)  # chunks a request gets by default
    rag_max_k: int = Field(20, ge=1)  # the most a request may ask for
    rag_max_query_chars: int = Field(2000, ge=1)
    rag_embed_max_inputs: int = Field(64, ge=1)  # texts in one POST /v1/embeddings
    rag_embed_max_chars: int = Field(10_000, ge=1)  # characters in one of them
    rag_workers: int = Field(1, ge=1)  # threads searching and embedding at once
    rag_queue: int = Field(32, ge=0)  # searches waiting for a thread; past it, 429

    # access
    api_keys: Annotated[list[str], NoDecode] = Field(
        [],
        validation_alias=AliasChoices("NANOCHAT_API_KEY", "NANOCHAT_API_KEYS"),
        description="bearer keys for /v1/* and /chat/completions (comma-separated in the variable; unset: "
        "no authentication)",
    )
    cors_origins: Annotated[list[str], NoDecode] = []  # allowed browser origins; empty = no CORS

    # the server
    host: str = Field(
        "127.0.0.1",
        validation_alias=AliasChoices("HOST", "NANOCHAT_HOST"),
        description="address to listen on (0.0.0.0: every interface)",
    )
    port: int = Field(
        APP_PORT,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("PORT", "NANOCHAT_PORT"),
        description="port to listen on",
    )
    workers: int = Field(  # gunicorn workers (one per GPU on GPU machines)
        1, ge=1, validation_alias=AliasChoices("NANOCHAT_WORKERS", "WEB_CONCURRENCY")
    )
    log_level: str = "info"  # debug | info | warning | error | critical

    # observability (docs/observability.md); traces: the standard OTEL_* variables
    log_format: Literal["auto", "json", "text"] = "auto"  # text on a terminal, else JSON (Cloud Logging)
    log_content: bool = False  # put prompts and completions in the access log lines (personal data!)
    access_log: bool = True  # one log line per request
    metrics: bool = True  # record the Prometheus metrics (/metrics answers either way)
    # what one instance costs, for the cost panel: 2 vCPU + 4 GiB on Cloud Run, instance-based billing
    instance_price_per_hour: float = Field(0.16, ge=0)

    # deliberate faults on the model routes, to prove the release gate and the alerts catch them; keep off
    fault_latency_ms: float = Field(0.0, ge=0, le=60_000)  # added to every model request
    fault_error_rate: float = Field(0.0, ge=0, le=1)  # share of model requests answered 500 injected_fault

    # admission of the CPU-heavy side routes (app/admission.py): each runs on threads of its own, with at
    # most `_queue` more requests waiting; past that, 429 with Retry-After (chat and the probes keep going)
    classify_workers: int = Field(1, ge=1)  # threads classifying at once (scikit-learn holds the GIL)
    classify_queue: int = Field(8, ge=0)  # classify requests waiting for a thread
    guardrail_workers: int = Field(1, ge=1)  # threads screening chat prompts at once
    guardrail_queue: int = Field(64, ge=0)  # screenings waiting (as many as NANOCHAT_MAX_QUEUE by default)
    # exposure (docs/serving.md): /metrics on a port of its own, for the scraper only (0: on the app's port,
    # for local use; the image sets app.contract.METRICS_PORT), and the API documentation pages (/docs,
    # /redoc, /openapi.json; turn them off in production)
    metrics_port: int = Field(0, ge=0, le=65535)
    docs: bool = True

    # the HTTP edge (app/http_limits.py, BodyLimit in app/api/middleware.py): what one client may cost.
    # Fit for Cloud Run (requests of at most 32 MiB, at most 1000 at once per instance) and the GPU group's
    # load balancer (it keeps idle connections to a backend for 600 s: ours must stay open longer)
    max_header_bytes: int = Field(65_536, ge=1024)  # request line + headers -> 431 past it
    header_timeout_s: float = Field(10.0, gt=0)  # for a request's head, from its first byte -> 408, closed
    body_timeout_s: float = Field(30.0, gt=0)  # for a request's whole body -> 408, closed
    max_connections: int = Field(1000, ge=1)  # per process; past it an idle one is closed, else 503
    keepalive_s: int = Field(620, ge=1)  # an idle connection stays open this long (the LB's 600 s + margin)
    # a body over max_body_bytes is read and dropped up to this size before the 413, so that every client
    # hears the 413 (closing with unread bytes resets the connection); larger ones are cut at once
    discard_body_bytes: int = Field(33_554_432, ge=0)

    _split_lists = field_validator(
        "api_keys", "cors_origins", "served_model_name", "rag_indexes", mode="before"
    )(_split)

    @property
    def served_names(self) -> list[str]:
        """The names a request's `model` may give: NANOCHAT_SERVED_MODEL_NAME, else the model folder's name
        (`models/demo` and the repo id `karpathy/nanochat-d32` serve `demo` and `nanochat-d32`)."""
        return self.served_model_name or [Path(self.checkpoint.rstrip("/")).name or self.checkpoint]

    @property
    def model_name(self) -> str:
        """The name responses carry and /v1/models lists first."""
        return self.served_names[0]

    @model_validator(mode="after")
    def _step_is_for_nanochat(self) -> Settings:
        if self.backend == "hf" and self.step is not None:
            raise ValueError("NANOCHAT_STEP picks a nanochat checkpoint; leave it unset with the hf backend")
        return self

    @field_validator("rag_indexes")
    @classmethod
    def _named_folders(cls, value: list[str]) -> list[str]:
        names = [item.partition("=")[0].strip() for item in value]
        for item, name in zip(value, names, strict=True):
            folder = item.partition("=")[2].strip()
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or not folder:
                raise ValueError(f"expected NAME=FOLDER (a name of letters, digits, . _ -), got {item!r}")
        if len(set(names)) < len(names):
            raise ValueError(f"an index name is given twice: {', '.join(names)}")
        return [f"{name}={item.partition('=')[2].strip()}" for item, name in zip(value, names, strict=True)]

    @model_validator(mode="after")
    def _rag_k_within_max(self) -> Settings:
        if self.rag_k > self.rag_max_k:
            raise ValueError(f"NANOCHAT_RAG_K ({self.rag_k}) is above NANOCHAT_RAG_MAX_K ({self.rag_max_k})")
        if self.rag_model and (not self.rag_indexes or self.rag_model in self.served_names):
            raise ValueError(
                "NANOCHAT_RAG_MODEL needs NANOCHAT_RAG_INDEXES and a name the model is not served as"
            )
        if self.rag_store == "chroma" and self.rag_indexes and not self.rag_chroma_url:
            raise ValueError("NANOCHAT_RAG_STORE=chroma needs NANOCHAT_RAG_CHROMA_URL")
        return self

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _size(cls, value):
        return None if value in (None, "") else parse_bytes(value)

    @field_validator("prefix_cache_bytes", mode="before")
    @classmethod
    def _size_or_fraction(cls, value):
        return parse_size_or_fraction(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _known_level(cls, value):
        if isinstance(value, str) and value.strip().lower() in LOG_LEVELS:
            return value.strip().lower()
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")


# vLLM's `serve` flags -> the Settings field each sets (app/__main__.py builds the parser from this table and
# the fields' descriptions and defaults). A flag given wins over the field's variables.
SERVE_FLAGS = {
    "--model": "checkpoint",
    "--served-model-name": "served_model_name",
    "--host": "host",
    "--port": "port",
    "--device": "device",
    "--dtype": "dtype",
    "--quantization": "quantization",
    "--compile": "compile",
    "--max-num-seqs": "max_batch",
    "--max-model-len": "max_model_len",
    "--memory-limit": "memory_limit",
    "--enable-prefix-caching": "enable_prefix_caching",
    "--prefix-cache-bytes": "prefix_cache_bytes",
    "--api-key": "api_keys",
    "--accept-any-model": "accept_any_model",
}


def parse_size_or_fraction(value: str | int | float) -> int | float:
    """A fraction in (0, 1] written with a decimal point (`0.5`, `1.0`) stays a float; anything else is a
    size (`parse_bytes`: `256MB`, `1GiB`, `1000000`)."""
    if isinstance(value, float) or (isinstance(value, str) and "." in value and value.strip()[-1:].isdigit()):
        fraction = float(value)
        if 0 < fraction <= 1:
            return fraction
        if fraction <= 0:
            raise ValueError(f"expected a fraction in (0, 1] or a size, got {value!r}")
    return parse_bytes(value if not isinstance(value, float) else int(value))


def env_names(name: str) -> list[str]:
    """The environment variables that set the field `name`, the one that wins first."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"{Settings.model_config['env_prefix']}{name.upper()}"]


def model_folder(path: str) -> Path:
    """A model folder setting as a path: a relative one is looked up in the working directory, then under
    the service's folder (where the image and the repository keep `models/`)."""
    folder = Path(path)
    if folder.is_absolute() or folder.exists():
        return folder
    bundled = SERVICE_ROOT / folder
    return bundled if bundled.exists() else folder
