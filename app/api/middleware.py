"""The service's ASGI middleware, outermost first: request ids, (CORS), API keys, body size.

Plain ASGI classes rather than `BaseHTTPMiddleware`, so streamed responses pass through untouched and a
client disconnect still reaches the route. Each rejects with the service's JSON error shape.
"""

from __future__ import annotations

import hmac
import re
import uuid
from collections import Counter

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response

REQUEST_ID_HEADER = "X-Request-ID"
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
PROTECTED_PREFIXES = ("/v1/", "/chat/completions")  # the model routes; probes, metrics and the page are open


class RequestContext:
    """Give every request an id (the client's `X-Request-ID` when it is sane, else a fresh one), return it
    in the `X-Request-ID` response header, and count responses by status class."""

    def __init__(self, app: ASGIApp, responses: Counter[str]) -> None:
        self.app = app
        self.responses = responses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = given if VALID_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
                self.responses[f"{message['status'] // 100}xx"] += 1
            await send(message)

        await self.app(scope, receive, send_with_id)


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
            and scope["path"].startswith(PROTECTED_PREFIXES)
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


class BodyLimit:
    """413 for a body over `max_bytes`, by its Content-Length and by the bytes really received, before
    anything parses it. The body is read here and replayed to the app; later `receive` calls go to the
    server (so the route still hears about a disconnect)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(int(declared), scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(None, scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
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

    async def _too_large(self, declared: int | None, scope: Scope, receive: Receive, send: Send) -> None:
        size = f"{declared} bytes, over" if declared is not None else "over"
        response = error_response(
            413, f"the request body is {size} the limit of {self.max_bytes} bytes", "body_too_large"
        )
        response.headers["Connection"] = "close"  # the rest of the body is not read
        await response(scope, receive, send)
