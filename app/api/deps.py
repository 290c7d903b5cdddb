"""What every route reads, as FastAPI dependencies: the app's `Runtime` (app/lifecycle.py: settings, state,
engine, scheduler, guardrail, classifier) and the request's id.

Routes get the Runtime as a `RuntimeDep` parameter and ask `runtime.scheduler_or_503()` before any model
work.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.lifecycle import Runtime


# async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a hop per request
async def runtime(request: Request) -> Runtime:
    """FastAPI dependency: the app's Runtime."""
    return request.app.state.runtime


async def request_id(request: Request) -> str:
    """FastAPI dependency: this request's id (the client's X-Request-ID, or a fresh one)."""
    return request.state.request_id


RuntimeDep = Annotated[Runtime, Depends(runtime)]
RequestId = Annotated[str, Depends(request_id)]
