"""Draining for both ways of running the service: SIGTERM turns `/ready` to 503 and turns new requests
away with 503 while the requests in flight get `NANOCHAT_DRAIN_TIMEOUT_S` to finish, and only then does the
listening socket close. Load balancers that poll `/ready` (the GPU group's) see the instance leave before
its connections are refused.

- `DrainingServer`: uvicorn's server with that SIGTERM/SIGINT handling and an exit code (`python -m app`).
  Plain uvicorn closes its socket the moment the signal arrives.
- `DrainingWorker`: gunicorn's uvicorn worker running a `DrainingServer` (app/gunicorn.conf.py). gunicorn's
  master closes only its own copy of the socket on SIGTERM, so the workers keep accepting while they drain.

A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator

import uvicorn
from gunicorn.arbiter import Arbiter

try:
    from uvicorn_worker import UvicornWorker
except ImportError:  # older installs: uvicorn's own (deprecated) worker
    from uvicorn.workers import UvicornWorker

logger = logging.getLogger("app")
SIGNALS = (signal.SIGTERM, signal.SIGINT)
CLOSE_CONNECTIONS_S = 3.0  # after the drain: time for the last bytes of finished responses to go out


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain before the socket closes, and an exit code."""

    def __init__(self, config: uvicorn.Config, runtime) -> None:
        super().__init__(config)
        self.runtime = runtime
        self.exit_code = 0
        self._draining: asyncio.Task | None = None

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
        if self._draining is None:
            logger.info("%s: draining, then exiting", name)
            self._draining = asyncio.ensure_future(self._drain_then_stop())
        else:
            logger.warning("%s again: stopping now", name)
            self.should_exit = self.force_exit = True

    async def _drain_then_stop(self) -> None:
        from app.main import drain  # here: gunicorn's master imports this module and needs no torch

        await drain(self.runtime)
        self.should_exit = True


class DrainingWorker(UvicornWorker):
    """gunicorn worker: like uvicorn's, but SIGTERM drains first (see the module docstring)."""

    async def _serve(self) -> None:
        self.config.app = self.wsgi
        self.config.timeout_graceful_shutdown = CLOSE_CONNECTIONS_S
        server = DrainingServer(self.config, self.wsgi.state.runtime)
        self.wsgi.state.exit = server.stop
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)
        if server.exit_code:
            sys.exit(server.exit_code)
