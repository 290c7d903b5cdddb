# syntax=docker/dockerfile:1
# The nanochat service image, two targets:
#   cpu  (default, Cloud Run): slim Debian + CPU-only torch, the shipped models baked in, gunicorn on $PORT
#   gpu  (the GPU instance group): a CUDA runtime base + CUDA torch, one worker per GPU
#
#   docker build -t nanochat:cpu .
#   docker build --target gpu -t nanochat:gpu .
#   podman build --build-arg BASE_IMAGE=localhost/python-base -t nanochat:cpu .   # offline, see docs/delivery.md
#
# Any Debian-like base with python3 (>= 3.11), venv and pip works as BASE_IMAGE, which is how the image is
# built where Docker Hub cannot be reached. The model comes from NANOCHAT_CHECKPOINT: the baked-in demo
# model by default, or a mounted folder / Hugging Face repo id at run time.

ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG GPU_BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG TORCH_VERSION=2.13.0

# ---- build the virtual environment (CPU) ------------------------------------------------------------------
FROM ${BASE_IMAGE} AS cpu-build
ARG TORCH_VERSION
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# offline builds: a local wheel folder and the host's CA bundle (scripts/container_smoke.sh passes them)
ARG PIP_FIND_LINKS
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# torch first, from the CPU index (or a local wheel folder given as PIP_FIND_LINKS): never the CUDA build
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY nanochat ./nanochat
COPY app ./app
# the base (what the service serves) + the guardrail extra (scikit-learn, skops) + the rag extra (bm25s,
# faiss-cpu); tracks/ is not copied
RUN /opt/venv/bin/pip install ".[guardrail,rag]" \
    && find /opt/venv -depth -name __pycache__ -type d -exec rm -rf {} +
# the bundled knowledge base: README.md and docs/ indexed with the committed offline embedder (docs/rag.md);
# the service answers from it with citations (NANOCHAT_RAG_INDEXES below)
COPY docs ./docs
COPY models/rag/embedder ./models/rag/embedder
RUN /opt/venv/bin/python -m nanochat rag index README.md docs --out /src/rag/docs --embedder models/rag/embedder

# ---- the CPU image ------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS cpu
LABEL org.opencontainers.image.title="nanochat-service" \
      org.opencontainers.image.description="nanochat served with an OpenAI-compatible API (CPU)"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    NANOCHAT_METRICS_PORT=9464 \
    NANOCHAT_CHECKPOINT=/srv/models/demo \
    NANOCHAT_RAG_INDEXES=docs=/srv/models/rag/docs \
    PROMETHEUS_MULTIPROC_DIR=/tmp/nanochat-metrics \
    HF_HOME=/tmp/huggingface
RUN groupadd --system --gid 10001 nanochat \
    && useradd --system --uid 10001 --gid nanochat --home-dir /srv --shell /usr/sbin/nologin nanochat
COPY --from=cpu-build /opt/venv /opt/venv
WORKDIR /srv
COPY --chown=root:root app ./app
COPY --chown=root:root models/demo ./models/demo
COPY --chown=root:root models/guardrail ./models/guardrail
COPY --chown=root:root models/fortunes ./models/fortunes
COPY --from=cpu-build --chown=root:root /src/rag/docs ./models/rag/docs
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health\", timeout=2)"]
# exec form: gunicorn is PID 1's only child (run with --init) or PID 1 itself, and receives SIGTERM
CMD ["gunicorn", "-c", "app/gunicorn.conf.py"]

# ---- the GPU image ------------------------------------------------------------------------------------------
FROM ${GPU_BASE_IMAGE} AS gpu
ARG TORCH_VERSION
ARG TORCH_CUDA_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --extra-index-url "${TORCH_CUDA_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY nanochat ./nanochat
COPY app ./app
RUN /opt/venv/bin/pip install ".[guardrail,rag]"
# the same bundled knowledge base as the CPU image's (README.md and docs/ with the committed offline embedder)
COPY docs ./docs
COPY models/rag/embedder ./models/rag/embedder
RUN /opt/venv/bin/python -m nanochat rag index README.md docs --out models/rag/docs --embedder models/rag/embedder \
    && rm -rf pyproject.toml README.md nanochat docs models/rag/embedder
COPY models/demo ./models/demo
COPY models/guardrail ./models/guardrail
COPY models/fortunes ./models/fortunes
RUN groupadd --system --gid 10001 nanochat \
    && useradd --system --uid 10001 --gid nanochat --home-dir /srv --shell /usr/sbin/nologin nanochat
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    NANOCHAT_METRICS_PORT=9464 \
    NANOCHAT_CHECKPOINT=/srv/models/demo \
    NANOCHAT_DEVICE=cuda \
    NANOCHAT_RAG_INDEXES=docs=/srv/models/rag/docs \
    NANOCHAT_WORKERS=1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/nanochat-metrics \
    HF_HOME=/tmp/huggingface
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health\", timeout=2)"]
CMD ["gunicorn", "-c", "app/gunicorn.conf.py"]

# the default target
FROM cpu
