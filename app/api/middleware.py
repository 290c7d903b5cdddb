"""The service's ASGI middleware, outermost first: request context, (CORS), API keys, body size, (faults).

The request context also answers what the server's protocol turned away (app/http_limits.py: a head too
large, too many connections) and requests with two Authorization headers, and counts a request whose
client left before any answer as 499. CORS also allows the openai JS SDK's `X-Stainless-*` headers.

Plain ASGI classes rather than `BaseHTTPMiddleware`, so streamed responses pass through untouched and a
client disconnect still reaches the route. Each rejects with the service's JSON error shape.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import re
import time
import uuid
from typing import TYPE_CHECKING

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.contract import DETOKENIZE_PATH, HEALTH_PATH, METRICS_PATH, READY_PATH, TOKENIZE_PATH, WEB_CHAT_PATH
from app.errors import error_response, scheduler_status
from app.http_limits import REFUSAL_KEY, Refusal, limit_log
from app.observability import context, metrics, tracing
from app.observability.logging import log_access

try:  # FastAPI >= 0.137.2: the routes of included routers, flattened
    from fastapi.routing import iter_route_contexts
except ImportError:  # older: app.routes holds them all
    iter_route_contexts = None

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from app.lifecycle import Runtime
    from app.scheduler import GenerationStream

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
PROTECTED_PREFIXES = ("/v1/", WEB_CHAT_PATH)  # the model routes; probes, metrics and the page are open
KEYED_PREFIXES = (*PROTECTED_PREFIXES, "/stats")  # and the operator's view of model, state and load
KEYED_PREFIXES += (TOKENIZE_PATH, DETOKENIZE_PATH)  # and the tokenizer routes
# logged at debug level, never counted as rejections
PROBES = frozenset({HEALTH_PATH, READY_PATH, METRICS_PATH})
CLIENT_CLOSED = 499  # nginx's status for a request whose client went away before its answer began
# what browsers may send cross-origin: ours, and those of the openai SDKs (the JS one sends X-Stainless-*,
# a set that changes between versions: the prefix is allowed)
CORS_ALLOW_HEADERS = ("Authorization", "Content-Type", REQUEST_ID_HEADER, "OpenAI-Organization",
                      "OpenAI-Project", "OpenAI-Beta", "Idempotency-Key")  # fmt: skip
CORS_ALLOW_HEADER_PREFIXES = ("x-stainless-",)


class RequestContext:
    """Every request gets an id (the client's `X-Request-ID` when it is sane, else a fresh one), returned in
    the `X-Request-ID` response header and set as the context (app/observability/context.py) that every log
    line of the request carries. When the response has ended: the request's metrics, its generation's
    metrics and spans, and one access log line."""

    def __init__(self, app: ASGIApp, runtime: Runtime, tracer: Tracer | None = None) -> None:
        self.app = app
        self.runtime = runtime
        self.tracer = tracer
        self.metrics = runtime.settings.metrics
        self.access_log = runtime.settings.access_log
        self.log_content = runtime.settings.log_content
        self.discard_bytes = runtime.settings.discard_body_bytes
        self.body_timeout_s = runtime.settings.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = given if VALID_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        info = context.RequestInfo(request_id)
        token = context.CURRENT.set(info)
        status = 500  # if the app raises before answering, the outer error middleware answers 500
        sent = 0
        started_answer = client_gone = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, sent, started_answer
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
                status = message["status"]
                started_answer = True
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        async def receive_watching() -> Message:
            nonlocal client_gone
            message = await receive()
            if message["type"] == "http.disconnect" and not started_answer:
                client_gone = True  # before any answer: whatever the app sends now is lost
            return message

        refusal = scope.get(REFUSAL_KEY) or malformed(scope)
        app = self.app if refusal is None else self._refuse(refusal)
        try:
            await app(scope, receive_watching, send_with_id)
        finally:
            try:
                if client_gone:
                    status = CLIENT_CLOSED
                self._record(scope, info, status, time.perf_counter() - started, sent)
            except Exception:  # observability must never fail a request
                logger.exception("recording the request failed")
            finally:
                context.CURRENT.reset(token)

    def _refuse(self, refusal: Refusal) -> ASGIApp:
        """The answer to a request turned away at the edge (app/http_limits.py): its body is read and
        dropped first (up to a cap), so that the client hears the answer."""

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            deadline = asyncio.get_running_loop().time() + self.body_timeout_s
            drained = await discard_body(receive, deadline, 0, self.discard_bytes)
            headers = {"Retry-After": "1"} if refusal.status == 503 else {}
            if refusal.close or not drained:
                headers["Connection"] = "close"
            response = error_response(refusal.status, refusal.message, refusal.code, headers=headers)
            await response(scope, receive, send)

        return answer

    def _record(
        self, scope: Scope, info: context.RequestInfo, status: int, latency_s: float, sent: int
    ) -> None:
        route = route_template(scope)
        stream = info.stream
        finish = metrics.finish_reason(stream) if stream is not None else None
        if self.metrics:
            metrics.observe_request(route, scope["method"], status, latency_s)
            refusal = scope.get(REFUSAL_KEY)
            reason = refusal.code if refusal is not None else metrics.rejection_reason(status)
            if status < 400 and stream is not None and stream.error is not None:  # an error mid-stream
                reason = metrics.rejection_reason(scheduler_status(stream.error)[0])
            if reason is not None and route not in PROBES:
                metrics.observe_rejection(reason)
            if stream is not None and finish is not None:
                metrics.observe_generation(stream, finish)
        if self.tracer is not None and stream is not None and finish is not None:
            tracing.record_generation(
                self.tracer,
                stream,
                operation=tracing.operation_name(route),
                model=info.model or self.runtime.model_name,
                response_id=info.response_id or info.request_id,
                finish=finish,
            )
        if self.access_log:
            generation = None
            if stream is not None:
                generation = {
                    "prompt_tokens": stream.prompt_tokens,
                    "completion_tokens": stream.completion_tokens,
                    "finish_reason": finish,
                    "queue_wait_s": _rounded(stream.queue_wait_s),
                    "ttft_s": _rounded(stream.ttft_s),
                }
                if self.log_content:
                    generation.update(self._content(stream))
            headers = Headers(scope=scope)
            client = scope.get("client")
            log_access(
                method=scope["method"],
                url=_url(scope, headers),
                route=route,
                status=status,
                latency_s=latency_s,
                response_size=sent,
                user_agent=headers.get("user-agent"),
                remote_ip=client[0] if client else None,
                level=logging.DEBUG if route in PROBES else logging.INFO,
                generation=generation,
            )

    def _content(self, stream: GenerationStream) -> dict[str, object]:
        """The prompt and completions as text (only with NANOCHAT_LOG_CONTENT=true)."""
        engine = self.runtime.engine
        if engine is None:
            return {}
        prompt_ids, outputs = stream.token_ids()
        decode = engine.tokenizer.decode
        return {"prompt": decode(prompt_ids), "completions": [decode(ids) for ids in outputs]}


def route_template(scope: Scope) -> str:
    """The path template of the route that served the request (`/v1/models/{model_id:path}`), `other` when
    none matches. Requests turned away before routing (401, 413) are matched here."""
    route = scope.get("route")
    if route is None and "app" in scope:
        routes = getattr(scope["app"], "routes", [])
        for candidate in iter_route_contexts(routes) if iter_route_contexts else routes:
            if candidate.matches(scope)[0] is not Match.NONE:
                route = candidate
                break
    return getattr(route, "path", None) or metrics.OTHER


def _url(scope: Scope, headers: Headers) -> str:
    host = headers.get("host") or (
        f"{scope['server'][0]}:{scope['server'][1]}" if scope.get("server") else ""
    )
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{host}{scope.get('root_path', '')}{scope['path']}" + (
        f"?{query}" if query else ""
    )


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


def malformed(scope: Scope) -> Refusal | None:
    """A 400 for a request whose headers contradict themselves: two Authorization headers (which key?)."""
    count = sum(1 for name, _ in scope.get("headers", ()) if name.lower() == b"authorization")
    if count > 1:
        message = f"the request has {count} Authorization headers; send one"
        return Refusal(400, "duplicate_header", message, close=False)
    return None


async def discard_body(receive: Receive, deadline: float, received: int, limit: int) -> bool:
    """Read and drop the rest of a request body until it ends, `limit` bytes have come in all (counting
    the `received` ones), the loop's clock passes `deadline`, or the client leaves; whether it ended.

    A server that answers and closes with body bytes still unread makes the kernel reset the connection,
    and clients that send the whole body before reading (urllib, the openai SDKs through httpx) then see
    a connection error instead of the answer, and the SDKs upload the body again."""
    while received <= limit:
        message = await receive_before(receive, deadline)
        if message is None or message["type"] == "http.disconnect":
            return False
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False


async def receive_before(receive: Receive, deadline: float) -> Message | None:
    """The next ASGI message, or None if it has not come by `deadline` (the loop's clock)."""
    try:
        async with asyncio.timeout_at(deadline):
            return await receive()
    except TimeoutError:
        return None


class CORS(CORSMiddleware):
    """Starlette's CORS middleware that also allows the request headers named by a prefix in
    `allow_header_prefixes` (the openai JS SDK's `X-Stainless-*`), mirroring them in the preflight."""

    def __init__(self, app: ASGIApp, allow_header_prefixes: tuple[str, ...] = (), **options) -> None:
        super().__init__(app, **options)
        self.allow_header_prefixes = tuple(prefix.lower() for prefix in allow_header_prefixes)

    def preflight_response(self, request_headers: Headers) -> Response:
        asked = request_headers.get("access-control-request-headers", "")
        requested = [h.strip().lower() for h in asked.split(",")]
        by_prefix = [h for h in requested if h and h.startswith(self.allow_header_prefixes)]
        if not by_prefix:
            return super().preflight_response(request_headers)
        rest = ", ".join(h for h in requested if h and h not in by_prefix)
        raw = [(k, v) for k, v in request_headers.raw if k != b"access-control-request-headers"]
        if rest:
            raw.append((b"access-control-request-headers", rest.encode("latin-1")))
        response = super().preflight_response(Headers(raw=raw))
        if response.status_code == 200:
            allowed = response.headers.get("access-control-allow-headers")
            response.headers["Access-Control-Allow-Headers"] = ", ".join(filter(None, [allowed, *by_prefix]))
        return response


class ApiKeyAuth:
    """`Authorization: Bearer <key>` on the model routes, compared in constant time with every key."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]

    def _valid(self, token: str) -> bool:
        given = token.encode()
        valid = False
        for key in self.keys:  # no early exit: the time does not tell which key matched
            valid |= hmac.compare_digest(given, key)
        return valid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] != "OPTIONS"
            and scope["path"].startswith(KEYED_PREFIXES)
        ):
            scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not self._valid(token.strip()):
                message = "missing API key" if not token else "invalid API key"
                response = error_response(
                    401,
                    f"{message}: send the header 'Authorization: Bearer <key>'",
                    "invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class FaultInjection:
    """Deliberate faults on the model routes, for proving that the release gate and the alerts catch them
    (NANOCHAT_FAULT_LATENCY_MS, NANOCHAT_FAULT_ERROR_RATE; both off by default): each request waits the
    extra latency, then a share of them is answered 500 `injected_fault` without reaching the model."""

    def __init__(self, app: ASGIApp, latency_ms: float, error_rate: float) -> None:
        self.app = app
        self.latency_s = latency_ms / 1000
        self.error_rate = error_rate
        logger.warning("fault injection is on: +%g ms per model request, %g%% answered 500",
                       latency_ms, 100 * error_rate)  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith(PROTECTED_PREFIXES)
            and scope["path"] != "/v1/models"
        ):
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if random.random() < self.error_rate:
                response = error_response(500, "injected fault (NANOCHAT_FAULT_ERROR_RATE)", "injected_fault")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """413 for a body over `max_bytes`, by its Content-Length and by the bytes really received, before
    anything parses it; 408 for a body that has not all come within `timeout_s`. The body is read here and
    replayed to the app; later `receive` calls go to the server (so the route still hears about a
    disconnect).

    Before a 413 the rest of the body is read and dropped (up to `discard_bytes`, within `timeout_s`), so
    every client hears it (see `discard_body`); the connection then stays open. A client that waits for
    `100 Continue` is answered at once, and so is a larger body, on a connection that then closes."""

    def __init__(self, app: ASGIApp, max_bytes: int, discard_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.discard_bytes = discard_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            size = int(declared)
            waiting = "100-continue" in headers.get("expect", "").lower()  # sends the body only if told to
            drained = (
                not waiting
                and size <= self.discard_bytes
                and await discard_body(receive, deadline, 0, self.discard_bytes)
            )
            await self._too_large(size, drained, scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive_before(receive, deadline)
            if message is None:
                await self._timed_out(size, scope, receive, send)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                drained = not more or await discard_body(receive, deadline, size, self.discard_bytes)
                await self._too_large(None, drained, scope, receive, send)
                return
            chunks.append(chunk)
            if not more:
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(
        self, declared: int | None, drained: bool, scope: Scope, receive: Receive, send: Send
    ) -> None:
        size = f"{declared} bytes, over" if declared is not None else "over"
        response = error_response(
            413, f"the request body is {size} the limit of {self.max_bytes} bytes", "body_too_large"
        )
        if not drained:
            response.headers["Connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)

    async def _timed_out(self, received: int, scope: Scope, receive: Receive, send: Send) -> None:
        limit_log.hit("body_timeout_s", "a request body still incomplete after %g s (%d bytes): 408",
                      self.timeout_s, received)  # fmt: skip
        message = f"the request body did not arrive within {self.timeout_s:g} s"
        response = error_response(408, message, "request_timeout", headers={"Connection": "close"})
        await response(scope, receive, send)
