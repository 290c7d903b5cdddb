"""Every error the service answers, in one JSON shape: `{"error": {"message", "type", "param", "code"}}`.

The status rule (tested in tests/app/test_api.py):
- 400 for every problem with what a client sent: malformed JSON or UTF-8, wrong types, missing fields,
  out-of-range values, limits, a prompt longer than the context, unsupported parameters. One status for all
  input errors, as OpenAI does, so the official client raises `BadRequestError` for each; `code` says which
  (`invalid_json`, `invalid_type`, `missing_field`, `invalid_value`, `context_length_exceeded`,
  `unsupported_parameter`, `content_blocked` (the guardrail), ...) and `param` names the field. The service
  never answers 422.
- 401 bad or missing API key, 404 unknown route or model (`model_not_found`, with OpenAI's type
  `invalid_request_error`; or classification turned off), 405 wrong method,
  413 body too large, 429 queue full (with Retry-After), 503 not ready / draining (with Retry-After) or a
  classifier that failed to load, 504 deadline exceeded.
- 500 only for a bug: the client sees `internal_error` and the request id, never a traceback; the log has it.

Routes and app/validation.py raise `APIError`; the scheduler raises its domain errors (`SchedulerError`),
which know nothing of HTTP: `SCHEDULER_STATUS` here alone gives each its status and code. So do `not_ready`
(the service's state) and `classifier_unavailable` (the classifier's). `install_error_handlers` turns all of
them, Starlette's HTTP errors and FastAPI's validation errors into the shape above.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.scheduler import (
    DeadlineExceeded,
    InternalError,
    InvalidRequest,
    NotReady,
    QueueFull,
    SchedulerError,
)

logger = logging.getLogger(__name__)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
# codes whose `type` is not their status's: OpenAI answers an unknown model 404 with invalid_request_error
CODE_TYPES = {"model_not_found": "invalid_request_error"}
# the scheduler's domain errors -> (HTTP status, code); a subclass not named here is a 500
SCHEDULER_STATUS: dict[type[SchedulerError], tuple[int, str]] = {
    InvalidRequest: (400, "invalid_request"),
    QueueFull: (429, "queue_full"),
    InternalError: (500, "internal_error"),
    NotReady: (503, "not_ready"),
    DeadlineExceeded: (504, "deadline_exceeded"),
}
# the service's state when it cannot serve -> Retry-After seconds (a failed load: the default)
RETRY_AFTER_S = {"loading": 5, "draining": 1, "stopped": 1}
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
# pydantic error types -> our `code`
VALIDATION_CODES = {
    "missing": "missing_field",
    "json_invalid": "invalid_json",
    "model_attributes_type": "invalid_type",
    "dict_type": "invalid_type",
    "list_type": "invalid_type",
    "string_type": "invalid_type",
    "int_type": "invalid_type",
    "int_from_float": "invalid_type",
    "int_parsing": "invalid_type",
    "float_type": "invalid_type",
    "float_parsing": "invalid_type",
    "bool_type": "invalid_type",
    "bool_parsing": "invalid_type",
    "model_type": "invalid_type",
    "union_tag_invalid": "invalid_type",
    "extra_forbidden": "unsupported_parameter",  # a field the OpenAI routes do not know (app/schemas.py)
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class APIError(Exception):
    """An error a route answers with: HTTP `status`, a message the client can act on, a machine `code`."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.headers = headers or {}


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    """A 400 for a value the client sent."""
    return APIError(400, message, code, param)


def not_ready(state: str, reason: str) -> APIError:
    """The 503 for a service that cannot serve in `state` (loading, failed, draining, stopped)."""
    state = str(state) if state != "ready" else "draining"  # ready, but its scheduler is not: stopping
    code = {"failed": "load_failed"}.get(state, state)
    return APIError(503, reason, code, retry_after=RETRY_AFTER_S.get(state, 5))


def model_not_found(requested: str, served: list[str]) -> APIError:
    """The 404 for a `model` this server does not serve (OpenAI's code and type)."""
    names = ", ".join(repr(name) for name in served)
    message = (
        f"The model {requested!r} does not exist: this server serves {names} "
        "(or start it with --accept-any-model / NANOCHAT_ACCEPT_ANY_MODEL=true to take any name)"
    )
    return APIError(404, message, "model_not_found", "model")


def classifier_unavailable(state: str, reason: str) -> APIError | None:
    """Why `/v1/classify` cannot answer in the classifier's `state` (None: it can)."""
    if state == "off":
        return APIError(404, reason, "classifier_disabled")
    if state == "loading":
        return APIError(503, reason, "loading", retry_after=5)
    if state == "failed":
        return APIError(503, reason, "load_failed")
    return None


def scheduler_status(exc: SchedulerError) -> tuple[int, str]:
    """The HTTP status and code of one of the scheduler's errors."""
    for kind in type(exc).__mro__:
        if kind in SCHEDULER_STATUS:
            return SCHEDULER_STATUS[kind]
    return 500, "internal_error"


def error_body(status: int, message: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    error_type = CODE_TYPES.get(code or "") or ERROR_TYPES.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    code: str | None,
    param: str | None = None,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return JSONResponse(error_body(status, message, code, param), status_code=status, headers=headers)


def from_exception(exc: APIError | SchedulerError) -> dict[str, Any]:
    """The error body for an APIError or SchedulerError (also sent as an SSE event mid-stream)."""
    if isinstance(exc, APIError):
        return error_body(exc.status, exc.message, exc.code, exc.param)
    status, code = scheduler_status(exc)
    return error_body(status, str(exc), code)


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", None) or "-"


# ---- handlers ---------------------------------------------------------------------------------------
async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.code, exc.param, exc.retry_after, exc.headers)


async def _scheduler_error(request: Request, exc: SchedulerError) -> JSONResponse:
    status, code = scheduler_status(exc)
    return error_response(status, str(exc), code, retry_after=exc.retry_after)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    if status == 404:
        message = f"no route {request.method} {request.url.path}"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    elif status == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        message = "the request body is not valid UTF-8"
    else:
        message = str(exc.detail)
    code = "invalid_json" if status == 400 else HTTP_CODES.get(status, "http_error")
    return error_response(status, message, code, headers=dict(exc.headers or {}))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 becomes our 400, naming the first offending field."""
    errors = exc.errors()
    first = errors[0] if errors else {"type": "value_error", "loc": (), "msg": "invalid request"}
    kind = first.get("type", "")
    code = VALIDATION_CODES.get(kind, "invalid_value")
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return error_response(400, f"the request body is not valid JSON: {detail}".rstrip(": "), code)
    # keep field names and indexes; drop "body" and pydantic's union-branch labels ("list[TextPart]")
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and re.fullmatch(r"\w+", str(p))]
    param = ".".join(loc) or None
    if param is None and kind == "model_attributes_type":
        content_type = request.headers.get("content-type", "")
        if "json" not in content_type:
            message = f"send the body as JSON with Content-Type: application/json (got {content_type!r})"
            return error_response(400, message, code)
        return error_response(400, "the request body must be a JSON object", code)
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    if kind == "too_short":
        message = f"must hold at least {(first.get('ctx') or {}).get('min_length', 1)} item(s)"
    elif kind == "extra_forbidden":
        message = "unsupported field: this server does not know it (docs/serving.md, Request fields)"
    elif kind == "literal_error":
        message = f"{message} (got {first.get('input')!r})"
    return error_response(400, f"{param}: {message}" if param else message, code, param)


async def _unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    request_id = request_id_of(request)
    logger.exception("unhandled error in %s %s (request id %s)", request.method, request.url.path, request_id)
    message = f"internal error (request id {request_id})"
    return error_response(500, message, "internal_error", headers={"X-Request-ID": request_id})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(SchedulerError, _scheduler_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled_error)


# For route decorators: the error statuses a generation route documents in OpenAPI.
GENERATION_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (
            400,
            "invalid input (JSON, types, values, limits, context length, unsupported parameters), or "
            "content_blocked by the guardrail",
        ),
        (401, "missing or wrong API key (when keys are configured)"),
        (404, "model_not_found: `model` names none of the served names (GET /v1/models lists them)"),
        (413, "request body too large"),
        (429, "queue full; retry after Retry-After seconds"),
        (503, "not ready (loading, failed to load, draining); retry after Retry-After seconds"),
        (504, "the request did not finish within the deadline"),
    ]
}

# For the classify route: its error statuses in OpenAPI.
CLASSIFY_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in [
        (400, "invalid input (JSON, types, an empty text or list, too many texts, a text too long)"),
        (401, "missing or wrong API key (when keys are configured)"),
        (
            404,
            "classification is turned off (NANOCHAT_CLASSIFIER is empty), or `model` is not the one served",
        ),
        (413, "request body too large"),
        (
            503,
            "the classifier is loading or failed to load (the message says why), or the server is draining",
        ),
    ]
}
