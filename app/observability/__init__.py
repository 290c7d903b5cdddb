"""The service's logs, metrics and traces (docs/observability.md).

- `context`: the request being served (request id, its generation), a context variable the others read.
- `logging`: JSON lines with Cloud Logging's field names (or plain text), for the app, uvicorn and gunicorn.
- `metrics`: every Prometheus metric, defined once, and the hooks the middleware and the scheduler call.
- `tracing`: OpenTelemetry over OTLP when the `OTEL_*` variables ask for it, with GenAI span attributes.

This package imports nothing heavy on its own: gunicorn's master imports `logging` only, and must not create
metric files before the workers fork.
"""
