"""`GET /metrics` on a port of its own (NANOCHAT_METRICS_PORT), for the scraper beside the app only.

The app's port is public wherever the service runs (Cloud Run's URL, the GPU group's load balancer); the
metrics port is reached only from the machine itself: Cloud Run's Managed Prometheus sidecar and the GPU
VMs' Ops Agent scrape `localhost:METRICS_PORT` (app/contract.py). With the port set, `/metrics` on the
app's port answers 404 (app/main.py); with 0, the local default, it stays there.

Who serves it: under `python -m app` (or plain uvicorn) a daemon thread of the process, with the process's
registry; under gunicorn the master (its `when_ready` hook, app/gunicorn.conf.py), merging every worker's
files at each scrape, so one scrape sees all workers and no worker serves it twice. Only METRICS_PATH is
served (text format, or OpenMetrics when the scraper asks); anything else is a 404. No access log lines.
"""

from __future__ import annotations

import glob
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict

from app.contract import METRICS_PATH

logger = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


# what reading a worker's file raises while the worker is still creating it (empty, or its first entry half
# written): the file is left out of that one scrape
UNREADABLE = (struct.error, RuntimeError, UnicodeDecodeError, ValueError, FileNotFoundError)


class WorkerFilesCollector:
    """prometheus_client's multiprocess merge of every worker's `*.db` file, except that a file a worker is
    creating at that moment is left out of the scrape instead of failing it. (prometheus_client's own
    collector raises on an empty file, so a scrape while a worker starts got a 500.)"""

    def __init__(self, path: str) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        files = glob.glob(os.path.join(self.path, "*.db"))
        try:
            return multiprocess.MultiProcessCollector.merge(files, accumulate=True)
        except UNREADABLE:
            readable = [f for f in files if _readable(f)]
            return multiprocess.MultiProcessCollector.merge(readable, accumulate=True)


def _readable(path: str) -> bool:
    try:
        for _ in MmapedDict.read_all_values_from_file(path):
            pass
    except UNREADABLE as e:
        logger.debug("left out of this scrape (a worker is still writing it): %s: %r", path, e)
        return False
    return True


def worker_registry(path: str) -> CollectorRegistry:
    """A registry of every worker's metrics, read from their files at each collect."""
    registry = CollectorRegistry()
    registry.register(WorkerFilesCollector(path))
    return registry


class _Registry:
    """The exposition registry, looked up at each scrape (gunicorn's workers come and go).

    In multiprocess mode (gunicorn) only the workers' files are read: the master must not import the app's
    metrics module, whose gauges would then exist for the master's pid too (a `nanochat_ready` of 0 that
    never changes would hold the `livemin` of every worker at 0)."""

    def collect(self) -> Iterable:
        path = os.environ.get(MULTIPROC_ENV)
        if not path:
            from app.observability import metrics  # this process's own registry (python -m app)

            return metrics.REGISTRY.collect()
        return worker_registry(path).collect()


def metrics_app() -> Callable:
    """The WSGI app: METRICS_PATH as prometheus_client renders it, 404 elsewhere."""
    exposition = make_wsgi_app(_Registry())  # type: ignore[arg-type]  (any object with collect())

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"only {METRICS_PATH} is served on this port\n".encode()]
        return exposition(environ, start_response)

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # no line per scrape on stderr
        pass


def start(host: str, port: int) -> WSGIServer:
    """Serve /metrics on host:port from a daemon thread (one more thread per scrape); the server, whose
    `server_port` is the port really bound (0 picks a free one)."""
    server = make_server(host, port, metrics_app(), ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
    logger.info("serving %s on %s:%d", METRICS_PATH, host, server.server_port)
    return server
