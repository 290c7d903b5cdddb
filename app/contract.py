"""The service's contract with everything that runs it: one port, the probe paths, the metrics job.

The app, the Dockerfile (checked by a test), Cloud Run, the GPU VMs, their health checks and load balancer,
the Prometheus scrape configs, the alert rules and the dashboards all read these values from here; none
restates them. Plain constants, no imports: `modules/` and `scripts/` import this file without the app.
"""

APP_PORT = 8000  # the app's default PORT; the image's, Cloud Run's container port, the GPU VMs'
HEALTH_PATH = "/health"  # liveness: the process answers (autohealing, liveness probes, HEALTHCHECK)
READY_PATH = "/ready"  # readiness: the model is loaded and the server takes requests (traffic, startup)
METRICS_PATH = "/metrics"  # Prometheus exposition
METRICS_JOB = "nanochat"  # the scrape job name every scrape config uses and every alert selects on
# /metrics on a port of its own, for the scraper beside the app (Cloud Run's sidecar, the GPU VMs' Ops Agent)
# and never behind the public load balancer: the image sets NANOCHAT_METRICS_PORT to it (0, the local
# default, keeps /metrics on APP_PORT). 9464 is the port OpenTelemetry's Prometheus exporters use.
METRICS_PORT = 9464
