"""Log lines: plain text for a person at a terminal, JSON for Cloud Logging everywhere else; the app, uvicorn
and gunicorn.

Which one is NANOCHAT_LOG_FORMAT's choice: `auto` (the default) writes text when standard output is a
terminal (`make run`, `python -m app` in a shell) and JSON when it is not (a container, CI, a pipe or a
file), so that log collectors always get JSON; `json` or `text` forces either.

A JSON line carries the fields Cloud Logging reads natively (so Cloud Run needs no agent or parser):
`severity`, `message`, `time` (RFC 3339, UTC), `httpRequest` (on access lines), and, while a traced request
is served, `logging.googleapis.com/trace` ("projects/PROJECT/traces/TRACE_ID" when GOOGLE_CLOUD_PROJECT names
the project, else the bare trace id), `logging.googleapis.com/spanId` and `.../trace_sampled`. Besides them:
`logger`, `request_id` on every line logged while a request is served (whichever module logs it), what a
call passes in `extra`, and a traceback in `stack_trace` (where Error Reporting looks for it).

`logging_config(level, log_format)` is the one dictConfig of `python -m app` and gunicorn
(app/gunicorn.conf.py): a stdout handler on the root logger, which uvicorn's and gunicorn's loggers write
through too. Their access logs are off: the request middleware writes one access line per request
(`log_access`) with what they cannot know (route, tokens, finish reason, queue wait, time to first token).
Prompts and completions appear in it only with NANOCHAT_LOG_CONTENT=true. The values of secret-looking
query parameters (`api_key`, `token`, ...) are written as REDACTED, URLs and user agents are cut at
MAX_LOGGED_CHARS, and no request header but the user agent is logged (never Authorization).
"""

from __future__ import annotations

import logging
import logging.config
import os
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from app.observability.context import current_request

ACCESS_LOGGER = "app.access"
TRACE_FIELD = "logging.googleapis.com/trace"
SPAN_FIELD = "logging.googleapis.com/spanId"
SAMPLED_FIELD = "logging.googleapis.com/trace_sampled"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request)s: %(message)s"
# Python's levels by number -> Cloud Logging's severities (uvicorn's TRACE, 5, is DEBUG)
SEVERITIES = ((logging.DEBUG, "DEBUG"), (logging.INFO, "INFO"), (logging.WARNING, "WARNING"),
              (logging.ERROR, "ERROR"))  # fmt: skip
# record attributes that are never fields of their own (uvicorn adds `color_message`, a copy of the message)
SKIPPED_ATTRS = (*RESERVED_ATTRS, "color_message", "request")
# query parameters whose values never reach the log: these names, and any name ending in a suffix below
# (`api_key`, `x-api-key`, `access_token`, `client_secret`, ...); the Authorization header is never logged
SECRET_PARAMS = frozenset({"key", "token", "auth", "authorization", "password", "secret", "signature", "sig",
                           "code", "session"})  # fmt: skip
SECRET_SUFFIXES = ("key", "token", "secret", "password", "signature", "credential", "credentials")
REDACTED = "REDACTED"
MAX_LOGGED_CHARS = 2048  # a URL or user agent is cut here in the access log (a URL may be 64 KiB)
LOG_FORMATS = ("auto", "json", "text")


def severity(levelno: int) -> str:
    for limit, name in SEVERITIES:
        if levelno <= limit:
            return name
    return "CRITICAL"


def trace_fields(project: str | None) -> dict[str, Any]:
    """The Cloud Logging trace fields of the span being served now; none without one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    trace_id = format(context.trace_id, "032x")
    return {
        TRACE_FIELD: f"projects/{project}/traces/{trace_id}" if project else trace_id,
        SPAN_FIELD: format(context.span_id, "016x"),
        SAMPLED_FIELD: context.trace_flags.sampled,
    }


class JsonFormatter(_JsonFormatter):
    """One JSON object per record with Cloud Logging's field names (see the module docstring)."""

    def __init__(self, project: str | None = None) -> None:
        super().__init__(
            ["message", "name"],
            rename_fields={"name": "logger", "exc_info": "stack_trace"},
            reserved_attrs=SKIPPED_ATTRS,
        )
        self.project = project if project is not None else os.environ.get("GOOGLE_CLOUD_PROJECT")

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict) -> None:
        fields: dict[str, Any] = {}
        super().add_fields(fields, record, message_dict)
        log_data["severity"] = severity(record.levelno)
        log_data["message"] = fields.pop("message")
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        log_data["logger"] = fields.pop("logger")
        request = current_request()
        if request is not None:
            log_data["request_id"] = request.request_id
        log_data.update(trace_fields(self.project))
        log_data.update(fields)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [request id]: message`, for a terminal."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        request = current_request()
        record.request = f" [{request.request_id}]" if request is not None else ""
        return super().format(record)


def resolve_format(log_format: str) -> str:
    """`json` or `text`: `auto` is text when standard output (where the lines go) is a terminal, else JSON."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be 'auto', 'json' or 'text', got {log_format!r}")
    if log_format != "auto":
        return log_format
    try:
        return "text" if sys.stdout.isatty() else "json"
    except (AttributeError, ValueError):  # no isatty, or closed: nobody is reading it at a terminal
        return "json"


def logging_config(level: str = "info", log_format: str = "auto") -> dict[str, Any]:
    """The dictConfig for the service's processes (see the module docstring)."""
    log_format = resolve_format(log_format)
    level = level.upper()
    formatter = "JsonFormatter" if log_format == "json" else "TextFormatter"
    quiet = {"level": "WARNING", "handlers": [], "propagate": False}  # access logs replaced by ours
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"service": {"()": f"{__name__}.{formatter}"}},
        "handlers": {
            "stdout": {"class": "logging.StreamHandler", "formatter": "service", "stream": "ext://sys.stdout"}
        },
        "root": {"level": level, "handlers": ["stdout"]},
        "loggers": {
            "uvicorn": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level, "handlers": [], "propagate": True},
            "uvicorn.access": quiet,
            # gunicorn's master logs here; its uvicorn workers point uvicorn's loggers at these handlers
            "gunicorn.error": {"level": level, "handlers": ["stdout"], "propagate": False},
            "gunicorn.access": quiet,
        },
    }


def configure_logging(level: str = "info", log_format: str = "auto") -> None:
    """Apply `logging_config` to this process; Python's warnings become log lines too."""
    logging.config.dictConfig(logging_config(level, log_format))
    logging.captureWarnings(True)


def log_access(
    *,
    method: str,
    url: str,
    route: str,
    status: int,
    latency_s: float,
    response_size: int,
    user_agent: str | None,
    remote_ip: str | None,
    level: int = logging.INFO,
    generation: dict[str, Any] | None = None,
) -> None:
    """The one access line of a request; `generation` adds its figures (tokens, finish reason, times)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not logger.isEnabledFor(level):
        return
    http_request = {
        "requestMethod": method,
        "requestUrl": clip(redact_url(url)),
        "status": status,
        "latency": f"{latency_s:.6f}s",
        "responseSize": str(response_size),
        "userAgent": clip(user_agent),
        "remoteIp": remote_ip,
    }
    extra: dict[str, Any] = {"httpRequest": http_request, "route": route, "latency_s": round(latency_s, 6)}
    message = f"{method} {route} {status} {latency_s:.3f}s"
    if generation:
        extra.update(generation)
        message += (
            f" tokens {generation['prompt_tokens']}+{generation['completion_tokens']}"
            f" finish {generation['finish_reason']}"
        )
        if generation.get("ttft_s") is not None:
            message += f" ttft {generation['ttft_s']:.3f}s"
    logger.log(level, message, extra=extra)


def redact_url(url: str) -> str:
    """`url` with the values of its secret-looking query parameters replaced by REDACTED."""
    base, question, query = url.partition("?")
    if not question:
        return url
    parts = []
    for part in query.split("&"):
        name = part.partition("=")[0]
        if _secret(unquote_plus(name)):
            part = f"{name}={REDACTED}"
        parts.append(part)
    return f"{base}?{'&'.join(parts)}"


def _secret(name: str) -> bool:
    name = name.strip().lower()
    return name in SECRET_PARAMS or name.endswith(SECRET_SUFFIXES)


def clip(text: str | None, limit: int = MAX_LOGGED_CHARS) -> str | None:
    """`text` cut to `limit` characters, saying how many were left out."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more characters]"
