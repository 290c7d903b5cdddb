"""What one client may cost the server before the app sees its request: the bounds an ASGI middleware
cannot enforce, because they concern bytes and connections uvicorn handles before it calls the app.

`LimitedHttpToolsProtocol` is uvicorn's httptools protocol (what `http="auto"` picks) with:
- a request head (request line and headers) of at most `max_header_bytes`: 431 past it. A head still
  arriving is counted by the bytes received, so a 256 MB header costs at most one read, not 256 MB;
- a head must arrive within `header_timeout_s` of its first byte (or of the connection's opening): 408 and
  the connection closes (a connection that never sent a byte closes silently), so dribblers are cut;
- at most `max_connections` open connections: past it an idle keep-alive connection is closed to make
  room, and when none is idle the request is answered 503 and its connection closed;
- idle keep-alive connections kept `keepalive_s` (longer than the load balancer keeps its own).

The body's bounds (size, read time) are the app's `BodyLimit` (app/api/middleware.py), which can answer in
the JSON error shape. Refusals decided once the head is complete (431, 503) are left in the scope under
`REFUSAL_KEY` and answered by the app's first middleware, so they are logged and counted like any
request; only what comes before a complete head (a head too large or too slow) is answered here.
Every limit hit logs a warning, at most one a minute per limit with the count since the last one.

`apply(config, settings)` puts all this on a uvicorn Config, for `python -m app` and gunicorn's workers.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

logger = logging.getLogger(__name__)

REFUSAL_KEY = "nanochat.refusal"  # scope key: a Refusal the app answers instead of the request
FD_RESERVE = 256  # file descriptors beyond the connections: the model's files, logs, the listening socket
LOG_INTERVAL_S = 60.0


@dataclass(frozen=True)
class Refusal:
    """A request turned away at the edge: the status, the error `code` and a message the client can act
    on; `close`: the connection closes after the answer."""

    status: int
    code: str
    message: str
    close: bool = True


class LimitLog:
    """One warning per limit kind at most every `interval_s` seconds, with how many hits it stands for:
    a flood of slow clients must not flood the logs."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._skipped: Counter[str] = Counter()

    def hit(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._skipped[kind] += 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        if skipped:
            message += f" ({skipped} more since the last such line)"
        logger.warning("limit hit: " + message, *args, extra={"limit": kind, "limit_hits": skipped + 1})


limit_log = LimitLog()


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    header_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings) -> ConnectionLimits:
        return cls(settings.max_header_bytes, settings.header_timeout_s, settings.max_connections)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of the module docstring (`limits`, set by `apply`)."""

    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True  # a new connection owes the head of its first request
        self._head_bytes = 0  # bytes received while reading the head (counts before parsing)
        self._head_size = 0  # the parsed head's size: URL, names and values, ": " and CRLF
        self._head_timer: Any = None

    # -- connections
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._close_an_idle_connection()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _idle(self) -> bool:
        return (
            self.cycle is not None
            and self.cycle.response_complete
            and not self.pipeline
            and not self._reading_head
            and not self.transport.is_closing()
        )

    def _over_capacity(self) -> bool:
        if len(self.connections) <= self.limits.max_connections:
            return False
        # connections closed a moment ago (idle ones, to make room) are in the set until the loop turns
        open_ = sum(1 for protocol in self.connections if not protocol.transport.is_closing())
        return open_ > self.limits.max_connections

    def _close_an_idle_connection(self) -> None:
        for protocol in list(self.connections):
            if protocol is not self and isinstance(protocol, LimitedHttpToolsProtocol) and protocol._idle():
                protocol.transport.close()
                limit_log.hit(
                    "max_connections",
                    "%d connections open (NANOCHAT_MAX_CONNECTIONS=%d): closed an idle one",
                    len(self.connections),
                    self.limits.max_connections,
                )
                return

    # -- the request head
    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._reading_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse_head(
                "max_header_bytes",
                Refusal(431, "header_too_large", self._too_large_message(self._head_bytes, "over")),
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_size = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._head_size += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self._stop_head_timer()
        self._reading_head = False
        size, self._head_bytes = self._head_size, 0
        if size > self.limits.max_header_bytes:
            limit_log.hit("max_header_bytes", "a request head of %d bytes: 431", size)
            self.scope[REFUSAL_KEY] = Refusal(  # type: ignore[literal-required]
                431, "header_too_large", self._too_large_message(size, "")
            )
        elif self._over_capacity():
            limit_log.hit(
                "max_connections",
                "%d connections open (NANOCHAT_MAX_CONNECTIONS=%d), none idle: 503",
                len(self.connections),
                self.limits.max_connections,
            )
            self.scope[REFUSAL_KEY] = Refusal(  # type: ignore[literal-required]
                503, "too_many_connections", "the server has too many open connections; retry shortly"
            )
        super().on_headers_complete()

    def _too_large_message(self, size: int, qualifier: str) -> str:
        return (
            f"the request line and headers are {qualifier + ' ' if qualifier else ''}{size} bytes, over the "
            f"limit of {self.limits.max_header_bytes} bytes"
        )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._reading_head or self.transport.is_closing():
            return
        timeout = self.limits.header_timeout_s
        if self._head_bytes == 0 and self.cycle is None:  # connected, never sent a byte
            limit_log.hit("header_timeout_s", "a connection sent nothing for %g s: closed", timeout)
            self.transport.close()
            return
        message = f"the request line and headers did not arrive within {timeout:g} s"
        self._refuse_head("header_timeout_s", Refusal(408, "request_timeout", message))

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _refuse_head(self, kind: str, refusal: Refusal) -> None:
        """Answer before the head is complete (no request for the app yet), then close."""
        if self.transport.is_closing():
            return
        limit_log.hit(kind, "%s (%d bytes received): %d", refusal.message, self._head_bytes, refusal.status)
        self._stop_head_timer()
        self._reading_head = False
        # here, not at import: gunicorn's master imports this module, and app.errors pulls in the
        # scheduler and its metrics, which must not be created before the metrics folder exists
        from app.errors import error_body

        body = json.dumps(error_body(refusal.status, refusal.message, refusal.code)).encode()
        head = [STATUS_LINE[refusal.status]]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
        head.append(b"connection: close\r\n\r\n")
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def protocol_class(limits: ConnectionLimits) -> type[LimitedHttpToolsProtocol]:
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


def apply(config: uvicorn.Config, settings) -> None:
    """Put the edge limits of Settings on a uvicorn Config (before it is loaded), and make sure the
    process may open enough file descriptors for `max_connections`."""
    config.http = protocol_class(ConnectionLimits.from_settings(settings))
    config.timeout_keep_alive = settings.keepalive_s
    config.h11_max_incomplete_event_size = settings.max_header_bytes  # if h11 is ever chosen instead
    ensure_file_descriptors(settings.max_connections + FD_RESERVE)


def ensure_file_descriptors(needed: int) -> None:
    """Raise the soft limit on open files to `needed` (up to the hard limit); warn when it stays lower:
    past it new connections fail in the kernel's accept, before the server can answer or log them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < needed:
        logger.warning(
            "only %d open files allowed (ulimit -n): lower NANOCHAT_MAX_CONNECTIONS to %d or raise the limit",
            soft,
            max(1, soft - FD_RESERVE),
        )
