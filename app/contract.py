"""The service's contract with everything that runs it: one port, the probe paths, the metrics job, the
generation routes.

The app, Cloud Run, the GPU VMs, their health checks and load balancer, the Prometheus scrape configs, the
alert rules, the dashboards, the load test and the scripts all read these values from here; none restates
them. What cannot import Python (the Dockerfile, docker-compose.yml, observe/prometheus.yml) is held to them
by tests/test_repository.py. Plain constants, no imports: `modules/` and `scripts/` use this file without the
app (`python3 app/contract.py` prints them as shell assignments).
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

# The generation routes (OpenAI chat and completions, and the nanochat web chat's): the SLOs, the alert rules
# and the dashboard's latency and error panels judge these alone, not probes or /metrics.
CHAT_COMPLETIONS_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
WEB_CHAT_PATH = "/chat/completions"
GENERATION_PATHS = (CHAT_COMPLETIONS_PATH, COMPLETIONS_PATH, WEB_CHAT_PATH)
# vLLM's tokenizer routes (no model work, so not generation routes); behind the API key like the above
TOKENIZE_PATH = "/tokenize"
DETOKENIZE_PATH = "/detokenize"

# Where the alerts' and the alert policies' runbook links point: docs/runbooks/ of the repository on GitHub
# (OWNER/REPO; alerts/build.py for the Prometheus rules, modules/ for Cloud Monitoring's own policies).
REPOSITORY = "your-org/nanochat-service"
RUNBOOK_BASE_URL = f"https://github.com/{REPOSITORY}/blob/main/docs/runbooks/"


if __name__ == "__main__":  # for shell scripts: eval "$(python3 app/contract.py)"
    import shlex

    for _name, _value in list(globals().items()):
        if _name.isupper() and isinstance(_value, (int, str)):
            print(f"{_name}={shlex.quote(str(_value))}")
