"""gunicorn for production: `gunicorn -c app/gunicorn.conf.py` (several workers, each with its own model).

Every value comes from Settings, so the environment configures gunicorn exactly as it does
`python -m app`: bind from HOST/PORT, workers from NANOCHAT_WORKERS (else WEB_CONCURRENCY), shutdown
grace from NANOCHAT_DRAIN_TIMEOUT_S.

- preload_app is off: each worker loads its own model after the fork (torch state and the scheduler
  thread do not survive a fork; on GPU machines run one worker per GPU).
- The uvicorn worker comes from the `uvicorn-worker` package when it is installed (uvicorn deprecates its
  own `uvicorn.workers`), else from uvicorn.
- On SIGTERM a worker stops accepting, lets open responses finish for up to graceful_timeout, then its
  lifespan drains the scheduler. `python -m app` instead turns /ready to 503 first (see app/__main__.py).
- A worker whose model fails to load with on_load_failure=exit leaves with status 3, which gunicorn reads
  as "failed to boot" and stops altogether, instead of restarting it forever.
"""

import math
from importlib.util import find_spec

from app.config import Settings

_settings = Settings()

wsgi_app = "app.main:create_app()"
bind = [f"{_settings.host}:{_settings.port}"]
workers = _settings.workers
worker_class = (
    "uvicorn_worker.UvicornWorker" if find_spec("uvicorn_worker") else "uvicorn.workers.UvicornWorker"
)
preload_app = False
graceful_timeout = math.ceil(_settings.drain_timeout_s) + 2
# The worker's heartbeat comes from its event loop, which never runs model code, so this bounds a stuck
# loop, not a long generation; it only has to exceed the slowest request.
timeout = int(_settings.request_timeout_s) + 30
keepalive = 5
loglevel = _settings.log_level
accesslog = "-"
errorlog = "-"
# gunicorn's logging, plus a root handler so that the app's own loggers are heard too
logconfig_dict = {
    "root": {"level": loglevel.upper(), "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["error_console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
}
