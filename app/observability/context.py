"""The request being served, as a context variable.

The request middleware (app/api/middleware.py) sets a `RequestInfo` for each HTTP request; the routes add the
generation they started (`note_generation`); at the end of the request the middleware hands it to the access
log, the metrics and the spans. The log formatter reads the request id from here, so every line logged while
serving a request carries it, whichever module logged it. Outside a request (the scheduler thread, start-up)
there is none.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.scheduler import GenerationStream


@dataclass(eq=False)
class RequestInfo:
    request_id: str
    stream: GenerationStream | None = None  # the generation this request started, if any
    model: str | None = None  # the model it asked (the one this server serves)
    response_id: str | None = None  # the id the client sees (`chatcmpl-...`), when it differs


CURRENT: ContextVar[RequestInfo | None] = ContextVar("nanochat_request", default=None)


def current_request() -> RequestInfo | None:
    return CURRENT.get()


def note_generation(stream: GenerationStream, model: str) -> None:
    """Called by the routes when a request's generation is queued."""
    info = CURRENT.get()
    if info is not None:
        info.stream, info.model = stream, model


def note_response_id(response_id: str) -> None:
    info = CURRENT.get()
    if info is not None:
        info.response_id = response_id
