"""What a GPU VM does at boot: Managed Prometheus through the Ops Agent, then the app container on the GPU.

The instance template carries this as metadata: a fixed `startup-script`, and the values it reads back from
the metadata server (`nanochat-image`, `nanochat-env`, `nanochat-secret-env`, `ops-agent-config`), so each
part stays plain data that tests can parse, and changing the image or an env var only edits metadata
(which makes a new template and a rolling replacement).

Managed Prometheus for the group: the Ops Agent's `prometheus` receiver scrapes the app's `/metrics` with
job `nanochat` (the job the alert rules and dashboards select on) and writes the series to Managed Service
for Prometheus, next to the Cloud Run sidecar's. It also reports GPU metrics from NVML
(agent.googleapis.com/gpu).

Pure Python (no cdktf).
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

APP_PORT = 8000  # the app's default port (app/config.py); the health check and load balancer use it
METRICS_JOB = "nanochat"
SCRAPE_INTERVAL = "30s"
# Google's advice for the Ops Agent is to pin the major version (minor releases stay compatible).
OPS_AGENT_VERSION = "2.*.*"

STARTUP_SCRIPT = r"""#!/bin/bash
# nanochat GPU VM boot (Deep Learning VM image). Runs as root on every boot; idempotent.
set -euo pipefail
attr() { curl -fsS -H 'Metadata-Flavor: Google' \
  "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"; }

# 1. Managed Prometheus: the Ops Agent scrapes the app's /metrics (config from metadata).
if ! dpkg -s google-cloud-ops-agent >/dev/null 2>&1; then
  curl -fsSL -o /tmp/add-ops-agent-repo.sh https://dl.google.com/cloudagents/add-google-cloud-ops-agent-repo.sh
  bash /tmp/add-ops-agent-repo.sh --also-install --version='__OPS_AGENT_VERSION__'
fi
attr ops-agent-config > /etc/google-cloud-ops-agent/config.yaml
systemctl restart google-cloud-ops-agent

# 2. The NVIDIA driver: the image installs it on first boot (install-nvidia-driver=True); wait for it.
for _ in $(seq 60); do nvidia-smi >/dev/null 2>&1 && break; sleep 10; done
nvidia-smi

# 3. The app on the GPU: env from metadata, secrets from Secret Manager, image from Artifact Registry.
image="$(attr nanochat-image)"
attr nanochat-env > /etc/nanochat.env
attr nanochat-secret-env | while IFS='=' read -r name secret; do
  [ -n "$name" ] || continue
  printf '%s=%s\n' "$name" "$(gcloud secrets versions access latest --secret="$secret")" >> /etc/nanochat.env
done
chmod 600 /etc/nanochat.env
gcloud auth configure-docker "${image%%/*}" --quiet
docker pull "$image"
docker rm -f nanochat >/dev/null 2>&1 || true
docker run -d --name nanochat --restart=always --gpus all --init \
  -p __APP_PORT__:__APP_PORT__ --env-file /etc/nanochat.env "$image"
""".replace("__OPS_AGENT_VERSION__", OPS_AGENT_VERSION).replace("__APP_PORT__", str(APP_PORT))


def ops_agent_config() -> dict:
    """Ops Agent config: the default host metrics and logs, plus a Prometheus scrape of the app."""
    return {
        "metrics": {
            "receivers": {
                "prometheus": {
                    "type": "prometheus",
                    "config": {
                        "scrape_configs": [
                            {
                                "job_name": METRICS_JOB,
                                "scrape_interval": SCRAPE_INTERVAL,
                                "metrics_path": "/metrics",
                                "static_configs": [{"targets": [f"localhost:{APP_PORT}"]}],
                            }
                        ]
                    },
                }
            },
            "service": {"pipelines": {"prometheus": {"receivers": ["prometheus"]}}},
        }
    }


def app_env(env: Mapping[str, str]) -> dict[str, str]:
    """The container's environment: the env file's values over the GPU defaults."""
    return {"NANOCHAT_DEVICE": "cuda", "HOST": "0.0.0.0", "PORT": str(APP_PORT), **env}


def boot_metadata(*, image: str, env: Mapping[str, str], secret_env: Mapping[str, str]) -> dict[str, str]:
    """Instance metadata for a GPU VM: the startup script and the data it reads back."""
    return {
        "startup-script": STARTUP_SCRIPT,
        "install-nvidia-driver": "True",  # Deep Learning VM images install the NVIDIA driver on first boot
        "block-project-ssh-keys": "true",
        "enable-oslogin": "TRUE",
        "nanochat-image": image,
        "nanochat-env": "".join(f"{k}={v}\n" for k, v in app_env(env).items()),
        "nanochat-secret-env": "".join(f"{k}={v}\n" for k, v in secret_env.items()),
        "ops-agent-config": yaml.safe_dump(ops_agent_config(), sort_keys=False),
    }
