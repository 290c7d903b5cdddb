"""gunicorn for production: `gunicorn -c app/gunicorn.conf.py` (several workers, each with its own model).

Every value comes from Settings, so the environment configures gunicorn exactly as it does
`python -m app`: bind from HOST/PORT, workers from NANOCHAT_WORKERS (else WEB_CONCURRENCY), shutdown
grace from NANOCHAT_DRAIN_TIMEOUT_S.

- preload_app is off: each worker loads its own model after the fork (torch state and the scheduler
  thread do not survive a fork; on GPU machines run one worker per GPU).
- The worker is app.server.DrainingWorker: uvicorn's worker (from the `uvicorn-worker` package) whose
  SIGTERM turns /ready to 503 and drains requests in flight before its socket closes, as `python -m app`
  does; graceful_timeout covers the drain and the closing of connections. SIGTERM to the whole process
  group (each worker gets it twice) drains all the same; SIGQUIT (gunicorn's quick shutdown) cuts.
- With several workers, a (re)started worker accepts connections only once its model is loaded, beating
  gunicorn's heartbeat meanwhile: a worker killed and respawned never answers 503 "loading" (app/server.py).
- A worker whose model fails to load with on_load_failure=exit leaves with status 3, which gunicorn reads
  as "failed to boot" and stops altogether, instead of restarting it forever.
- Metrics: every worker writes its values to PROMETHEUS_MULTIPROC_DIR (a fresh temporary folder unless set),
  which is emptied when gunicorn starts; a worker that exits is marked dead (its live gauges leave the sums),
  and `/metrics` on any worker merges them all. The master itself records no metrics.
- Logs: the app's JSON (or text) lines for the master and the workers alike; gunicorn's access log is off,
  the app writes one access line per request.
- The HTTP edge (app/http_limits.py): each worker applies the same limits as `python -m app` (request head
  size and time, open connections); keepalive outlasts the load balancer's 600 s (NANOCHAT_KEEPALIVE_S).
"""

import math
import os
import shutil
import tempfile
from pathlib import Path

# before anything imports prometheus_client, which reads it once, in the workers too (they fork from here)
_created_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _created_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="nanochat-metrics-")
_metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])

from prometheus_client import multiprocess  # noqa: E402

from app.config import Settings  # noqa: E402
from app.observability.logging import logging_config  # noqa: E402
from app.server import CLOSE_CONNECTIONS_S  # noqa: E402

_settings = Settings()

wsgi_app = "app.main:create_app()"
bind = [f"{_settings.host}:{_settings.port}"]
workers = _settings.workers
worker_class = "app.server.DrainingWorker"  # uvicorn's worker, draining before its socket closes
preload_app = False
# the drain, then the last bytes of finished responses, then a margin before gunicorn kills the worker
graceful_timeout = math.ceil(_settings.drain_timeout_s + CLOSE_CONNECTIONS_S) + 2
# The worker's heartbeat comes from its event loop, which never runs model code, so this bounds a stuck
# loop, not a long generation; it only has to exceed the slowest request.
timeout = int(_settings.request_timeout_s) + 30
keepalive = _settings.keepalive_s  # longer than the load balancer keeps idle connections (app/http_limits.py)
loglevel = _settings.log_level
accesslog = None
errorlog = "-"
logconfig_dict = logging_config(_settings.log_level, _settings.log_format)


def on_starting(server) -> None:
    """Start from an empty metrics folder: files of an earlier run would be counted again."""
    _metrics_dir.mkdir(parents=True, exist_ok=True)
    for path in _metrics_dir.glob("*.db"):
        path.unlink()


def child_exit(server, worker) -> None:
    multiprocess.mark_process_dead(worker.pid, str(_metrics_dir))


def on_exit(server) -> None:
    if _created_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def when_ready(server) -> None:
    """With NANOCHAT_METRICS_PORT, the master serves /metrics there: every worker's files merged at each
    scrape (app/metrics_server.py), and the workers' /metrics on the app's port answers 404."""
    if _settings.metrics_port:
        from app.metrics_server import start

        start(_settings.host, _settings.metrics_port)
