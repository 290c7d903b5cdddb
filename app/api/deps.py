"""What every route reads: the service's `Runtime` (settings, model state, engine, scheduler).

`app/main.py` creates one Runtime per app, loads the model into it and moves its `state` along:

    loading ──> ready ──> draining ──> stopped
        └─────> failed   (on_load_failure=unready keeps serving /health, with /ready 503 and the reason)

Routes get it as a `RuntimeDep` parameter and ask `runtime.scheduler_or_503()` before any model work.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from app.config import Settings
from app.errors import APIError

if TYPE_CHECKING:
    from app.scheduler import Scheduler
    from nanochat.engine import Engine
    from nanochat.tokenizer import Tokenizer

RETRY_AFTER_S = {"loading": 5, "draining": 1, "stopped": 1}


@dataclass
class Runtime:
    settings: Settings
    model_name: str
    state: str = "loading"  # loading | ready | failed | draining | stopped
    reason: str = "the model is loading"  # why the service is not ready (shown by /ready and 503s)
    engine: Engine | None = None
    scheduler: Scheduler | None = None
    started_at: float = field(default_factory=time.time)
    loader: threading.Thread | None = None  # the thread loading the model

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.scheduler is not None and self.scheduler.ready

    @property
    def tokenizer(self) -> Tokenizer:
        assert self.engine is not None
        return self.engine.tokenizer

    @property
    def context(self) -> int:
        """The model's context in tokens (prompt plus generated)."""
        assert self.engine is not None
        return self.engine.max_seq_len

    def not_ready_error(self) -> APIError:
        state = self.state if self.state != "ready" else "draining"
        code = {"failed": "load_failed"}.get(state, state)
        return APIError(503, self.reason, code, retry_after=RETRY_AFTER_S.get(state, 5))

    def scheduler_or_503(self) -> Scheduler:
        """The scheduler, or a 503 that says why there is none to use (loading, failed, draining)."""
        if not self.ready:
            raise self.not_ready_error()
        assert self.scheduler is not None
        return self.scheduler


# async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a hop per request
async def runtime(request: Request) -> Runtime:
    """FastAPI dependency: the app's Runtime."""
    return request.app.state.runtime


async def request_id(request: Request) -> str:
    """FastAPI dependency: this request's id (the client's X-Request-ID, or a fresh one)."""
    return request.state.request_id


RuntimeDep = Annotated[Runtime, Depends(runtime)]
RequestId = Annotated[str, Depends(request_id)]
