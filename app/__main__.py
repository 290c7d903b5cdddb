"""`python -m app [--host H] [--port P]`: serve the app with uvicorn, one process, draining on SIGTERM.

Host and port default to Settings (`HOST` / `PORT`, which Cloud Run sets, or `NANOCHAT_HOST` / `_PORT`).

Plain uvicorn closes its listening socket the moment SIGTERM arrives and re-raises the signal at the end
(exit status 143). This runner installs its own SIGTERM/SIGINT handler instead: `/ready` turns 503 and new
requests get 503 at once, requests in flight get `NANOCHAT_DRAIN_TIMEOUT_S` to finish, and only then does
the server close and the process exit 0. SIGTERM again is ignored (a process group gets it twice); SIGINT
during a drain (a second Ctrl-C) or SIGQUIT stops at once. A model that fails to load
with `on_load_failure=exit` ends it with status 3.

Logs are JSON lines (or text, NANOCHAT_LOG_FORMAT=text) from the app and uvicorn alike; uvicorn's own access
log is off, the app writes one access line per request (app/observability/logging.py).

The HTTP edge's limits (request head size and time, open connections, keep-alive) are put on uvicorn's
config by app/http_limits.py, as in gunicorn's workers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn
from pydantic import ValidationError

from app import http_limits
from app.config import Settings
from app.main import create_app
from app.observability.logging import configure_logging
from app.observability.tracing import TracingConfigError
from app.server import CLOSE_CONNECTIONS_S, DrainingServer

logger = logging.getLogger("app")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 1..65535, got {port}")
    return port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="Serve the nanochat inference service (one process; drains on SIGTERM). Every other "
        "setting comes from NANOCHAT_* environment variables or .env (see .env.example).",
    )
    parser.add_argument("--host", help="address to listen on (default: HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=_port, help="port to listen on (default: PORT, else 8000)")
    args = parser.parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        parser.error(f"invalid settings: {problems}")
    overrides = {name: value for name in ("host", "port") if (value := getattr(args, name)) is not None}
    settings = settings.model_copy(update=overrides)
    configure_logging(settings.log_level, settings.log_format)

    try:
        app = create_app(settings)
    except TracingConfigError as e:
        parser.error(str(e))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # configured above, as the app's
        access_log=False,  # the app's request middleware writes the access lines
        timeout_graceful_shutdown=CLOSE_CONNECTIONS_S,
    )
    http_limits.apply(config, settings)  # header size and time, connections, keep-alive
    server = DrainingServer(config, app.state.runtime)
    app.state.exit = server.stop
    server.run()
    loader = app.state.runtime.loader
    if loader is not None and loader.is_alive():
        # A load cannot be interrupted, and finalizing the interpreter under torch code still running on
        # that thread aborts the process: leave without finalizing.
        logger.info("exiting while the model is still loading")
        logging.shutdown()
        os._exit(server.exit_code)
    return server.exit_code


if __name__ == "__main__":
    sys.exit(main())
