"""Draining for both ways of running the service: SIGTERM turns `/ready` to 503 and turns new requests
away with 503 while the requests in flight get `NANOCHAT_DRAIN_TIMEOUT_S` to finish, and only then does the
listening socket close. Load balancers that poll `/ready` (the GPU group's) see the instance leave before
its connections are refused.

- `DrainingServer`: uvicorn's server with that SIGTERM/SIGINT handling and an exit code (`python -m app`).
  Plain uvicorn closes its socket the moment the signal arrives.
- `DrainingWorker`: gunicorn's uvicorn worker running a `DrainingServer` (app/gunicorn.conf.py). gunicorn's
  master closes only its own copy of the socket on SIGTERM, so the workers keep accepting while they drain.
  With several workers, a worker starts accepting on the shared socket only once its model has loaded
  (`ListenWhenLoaded`): a respawned worker never answers 503 "loading" while its siblings could serve, so
  the service's `/ready` stays 200 as long as one worker serves. A lone worker (or `python -m app`) listens
  at once instead, answering `/health` and a 503 `/ready` while it loads: someone must answer the probes.

Signals during a drain: SIGTERM again is ignored (logged once). It arrives twice in every worker when the
whole process group gets it (systemd's default KillMode, `kill -- -PGID`): directly and from the master.
SIGQUIT (gunicorn's quick shutdown, also what its master sends on Ctrl-C) and a SIGINT during a drain (a
second Ctrl-C) stop at once; so do gunicorn's SIGKILL after its graceful_timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import uvicorn
from gunicorn.arbiter import Arbiter

from app import http_limits

try:
    from uvicorn_worker import UvicornWorker
except ImportError:  # older installs: uvicorn's own (deprecated) worker
    from uvicorn.workers import UvicornWorker

logger = logging.getLogger("app")
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
CLOSE_CONNECTIONS_S = 3.0  # after the drain: time for the last bytes of finished responses to go out
HEARTBEAT_S = 1.0  # while a worker waits for its model: how often it tells gunicorn's master it is alive


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before the socket closes, and an exit code."""

    def __init__(self, config: uvicorn.Config, runtime) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.exit_code = 0
        self._draining: asyncio.Task | None = None
        self._repeat_logged = False

    def stop(self, exit_code: int) -> None:
        self.exit_code = exit_code
        self.should_exit = True

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if sig == signal.SIGQUIT or (sig == signal.SIGINT and self._draining is not None):
            logger.warning("%s: stopping now, cutting the requests in flight", name)
            self._stop_now()
        elif self._draining is None:
            logger.info("%s: draining, then exiting", name)
            self._draining = asyncio.ensure_future(self._drain_then_stop())
        elif not self._repeat_logged:  # SIGTERM again: see the module docstring
            self._repeat_logged = True
            logger.info("%s again: already draining (SIGQUIT or SIGINT stops at once)", name)

    def _stop_now(self) -> None:
        """Cut every request (each gets its error: an SSE error event, or a 503) and close. The responses
        end at once, so uvicorn's shutdown is quick (and bounded by CLOSE_CONNECTIONS_S) and still runs
        the app's lifespan end; stopping the scheduler's thread also keeps torch from running while the
        interpreter finalizes (that aborts the process)."""
        if self.runtime.scheduler is not None:
            self.runtime.scheduler.stop()
        if self._draining is None:  # marks the runtime stopped (which also ends a wait for the model)
            self._draining = asyncio.ensure_future(self._drain_then_stop())
        self.should_exit = True

    async def _drain_then_stop(self) -> None:
        await self.runtime.drain()
        self.should_exit = True


class ListenWhenLoaded:
    """ASGI wrapper: the app's lifespan startup completes, and so uvicorn starts accepting connections, only
    once the model is no longer loading (ready, failed to load, or the server is stopping). Meanwhile
    `heartbeat()` runs every HEARTBEAT_S: a load may outlast gunicorn's worker timeout."""

    def __init__(self, app, runtime, heartbeat: Callable[[], None]) -> None:
        self.app = app
        self.runtime = runtime
        self.heartbeat = heartbeat

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)

        async def send_when_loaded(message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self._loaded()
            await send(message)

        return await self.app(scope, receive, send_when_loaded)

    async def _loaded(self) -> None:
        beat = 0.0
        while self.runtime.state == "loading":
            if time.monotonic() >= beat:
                self.heartbeat()
                beat = time.monotonic() + HEARTBEAT_S
            await asyncio.sleep(0.05)


class DrainingWorker(UvicornWorker):
    """gunicorn worker: like uvicorn's, but SIGTERM drains first, and with several workers it listens only
    once its model is loaded (see the module docstring)."""

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        if self.cfg.workers > 1:
            self.config.app = ListenWhenLoaded(self.wsgi, self.wsgi.state.runtime, self.notify)
        self.config.timeout_graceful_shutdown = CLOSE_CONNECTIONS_S
        http_limits.apply(self.config, self.wsgi.state.runtime.settings)  # as `python -m app` does
        server = DrainingServer(self.config, self.wsgi.state.runtime)
        self.wsgi.state.exit = server.stop
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        if server.exit_code:
            sys.exit(server.exit_code)
