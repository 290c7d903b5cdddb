"""Probes and figures: `/health` (liveness), `/ready` (readiness), `/stats` (JSON), `/metrics` (Prometheus).

`/health` is 200 whenever the process serves HTTP, loading or not: restarting a process that is loading
its model would only start the load over. `/ready` is 200 only once the model is loaded and warmed, and 503
(the JSON error, its `code` saying `loading`, `load_failed` or `draining`) otherwise; it does not wait for
the optional parts (the classifier, the guardrail), whose states `/stats` reports in `parts`.
`/metrics` renders app/observability/metrics.py (text format, or OpenMetrics when the scraper asks).
"""

from __future__ import annotations

import time
from typing import Any

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.api.deps import RuntimeDep
from app.contract import HEALTH_PATH, METRICS_PATH, READY_PATH
from app.errors import ErrorResponse
from app.observability import metrics as observed
from app.schemas import Health, Ready

router = APIRouter(tags=["probes"])


@router.get(HEALTH_PATH, response_model=Health)
async def health() -> Health:
    return Health()


@router.head(HEALTH_PATH, include_in_schema=False)
async def health_head() -> Response:
    """The same probe for checkers that send HEAD (200, no body)."""
    return Response()


@router.get(
    READY_PATH,
    response_model=Ready,
    responses={503: {"model": ErrorResponse, "description": "loading, failed to load, or draining"}},
)
async def ready(rt: RuntimeDep) -> Ready:
    if not rt.ready:
        raise rt.not_ready_error()
    return Ready(model=rt.model_name)


@router.get("/stats")
async def stats(rt: RuntimeDep) -> dict[str, Any]:
    """The model, its state, what its weights and KV cache take, the optional parts' states and the
    scheduler's figures (queue, batch, totals)."""
    return {
        "model": rt.model_name,
        "state": rt.state,
        "reason": None if rt.ready else rt.reason,
        "uptime_s": round(time.time() - rt.started_at, 1),
        "context_tokens": rt.engine.max_seq_len if rt.engine else None,
        "memory": rt.engine.memory.as_dict() if rt.engine else None,  # weights and KV cache bytes
        "scheduler": rt.scheduler.stats() if rt.scheduler else None,
        "parts": rt.parts(),
    }


@router.get(METRICS_PATH, response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus exposition of every metric (docs/observability.md); under gunicorn, of every worker."""
    body, content_type = await to_thread.run_sync(observed.render, request.headers.get("accept"))
    return Response(body, media_type=content_type)
