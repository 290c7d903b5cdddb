"""Probes and figures: `/health` (liveness), `/ready` (readiness), `/stats` (JSON), `/metrics` (Prometheus).

`/health` is 200 whenever the process serves HTTP, loading or not: restarting a process that is loading
its model would only start the load over. `/ready` is 200 only once the model is loaded and warmed, and 503
(the JSON error, its `code` saying `loading`, `load_failed` or `draining`) otherwise.
`/metrics` is a stand-in with a few gauges until the metrics module takes over.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from app.api.deps import RuntimeDep
from app.errors import ErrorResponse
from app.schemas import Health, Ready

router = APIRouter(tags=["probes"])
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
# gauge name -> (help, stats key)
GAUGES = {
    "nanochat_queue_depth": ("requests waiting for a batch slot", "queue_depth"),
    "nanochat_active_requests": ("requests being prefilled or decoded", "active_requests"),
    "nanochat_active_sequences": ("sequences (choices) in the decode batch", "active_sequences"),
    "nanochat_batch_slots": ("sequences the engine can decode together", "slots"),
    "nanochat_free_slots": ("batch slots free now", "free_slots"),
}


@router.get("/health", response_model=Health)
async def health() -> Health:
    return Health()


@router.get(
    "/ready",
    response_model=Ready,
    responses={503: {"model": ErrorResponse, "description": "loading, failed to load, or draining"}},
)
async def ready(rt: RuntimeDep) -> Ready:
    if not rt.ready:
        raise rt.not_ready_error()
    return Ready(model=rt.model_name)


@router.get("/stats")
async def stats(rt: RuntimeDep) -> dict[str, Any]:
    """The model, its state, the scheduler's figures (queue, batch, totals) and responses by status class."""
    return {
        "model": rt.model_name,
        "state": rt.state,
        "reason": None if rt.ready else rt.reason,
        "uptime_s": round(time.time() - rt.started_at, 1),
        "context_tokens": rt.engine.max_seq_len if rt.engine else None,
        "scheduler": rt.scheduler.stats() if rt.scheduler else None,
        "responses": dict(rt.responses),
    }


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(rt: RuntimeDep) -> PlainTextResponse:
    """Prometheus text exposition of a few gauges."""
    figures = rt.scheduler.stats() if rt.scheduler else {}
    lines = [
        "# HELP nanochat_ready 1 when the model is loaded and requests are admitted",
        "# TYPE nanochat_ready gauge",
        f"nanochat_ready {int(rt.ready)}",
        "# HELP nanochat_uptime_seconds seconds since the process started serving",
        "# TYPE nanochat_uptime_seconds gauge",
        f"nanochat_uptime_seconds {time.time() - rt.started_at:.3f}",
    ]
    for name, (help_text, key) in GAUGES.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {figures.get(key, 0)}"]
    return PlainTextResponse("\n".join(lines) + "\n", media_type=PROMETHEUS_TEXT)
