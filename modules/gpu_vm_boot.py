"""What a GPU VM does at boot: Managed Prometheus through the Ops Agent, then the app container on the GPU.

The instance template carries this as metadata: a fixed `startup-script`, and the values it reads back from
the metadata server (`nanochat-env`, `nanochat-secret-env`, `ops-agent-config`), so each part stays plain
data that tests can parse. The image is not among them: `nanochat-image` belongs to the releases, which set
it as a digest (`REPO/nanochat-gpu@sha256:...`) in the group's all-instances configuration (its metadata
overrides the template's and lands on every VM). A VM whose `nanochat-image` is missing or not a digest
says so in one line on the serial console (and Cloud Logging) and starts no container.

The image family is a Deep Learning VM on Ubuntu 22.04 with the NVIDIA driver preinstalled (the
`...-nvidia-570` families), so nothing here installs a driver; the script waits for `nvidia-smi` only in
case the driver's services are still starting.

Managed Prometheus for the group: the Ops Agent's `prometheus` receiver scrapes the app's METRICS_PATH with
job METRICS_JOB (the job the alert rules and dashboards select on) and writes the series to Managed
Service for Prometheus, next to the Cloud Run sidecar's. The agent gives a static target the VM's metadata
as `__meta_gce_*` labels; the relabel sets `instance` to the VM's name, so each VM's series stay apart
(they would all be `localhost:PORT` otherwise). It also reports GPU metrics from NVML
(agent.googleapis.com/gpu).

Pure Python (no cdktf).
"""

from __future__ import annotations

from collections.abc import Mapping

import yaml

from app.contract import APP_PORT, METRICS_JOB, METRICS_PATH, METRICS_PORT

__all__ = ["APP_PORT", "IMAGE_KEY", "METRICS_JOB", "STARTUP_SCRIPT", "boot_metadata", "ops_agent_config"]

IMAGE_KEY = "nanochat-image"  # set by releases in the group's all-instances config, never by the template
SCRAPE_INTERVAL = "30s"
# Google's advice for the Ops Agent is to pin the major version (minor releases stay compatible).
OPS_AGENT_VERSION = "2.*.*"

STARTUP_SCRIPT = (
    r"""#!/bin/bash
# nanochat GPU VM boot (Deep Learning VM, Ubuntu 22.04, NVIDIA driver preinstalled). Runs as root on every
# boot; idempotent. Its output reaches the serial console and Cloud Logging (google_metadata_script_runner).
set -euo pipefail
log() { echo "nanochat-boot: $*"; }
attr() { curl -fsS -H 'Metadata-Flavor: Google' \
  "http://metadata.google.internal/computeMetadata/v1/instance/attributes/$1"; }

# 0. The image: releases set it, always as a digest (the group's all-instances config).
image="$(attr __IMAGE_KEY__ 2>/dev/null || true)"
case "$image" in
  *@sha256:*) ;;
  *)
    log "ERROR: metadata __IMAGE_KEY__ is '${image:-empty}', not a digest (REPO/nanochat-gpu@sha256:...);" \
      "a release sets it (scripts/deploy.sh). Not starting the app."
    exit 1 ;;
esac

# 1. Managed Prometheus: the Ops Agent scrapes the app's metrics (config from metadata).
if ! dpkg -s google-cloud-ops-agent >/dev/null 2>&1; then
  curl -fsSL -o /tmp/add-ops-agent-repo.sh https://dl.google.com/cloudagents/add-google-cloud-ops-agent-repo.sh
  bash /tmp/add-ops-agent-repo.sh --also-install --version='__OPS_AGENT_VERSION__'
fi
attr ops-agent-config > /etc/google-cloud-ops-agent/config.yaml
systemctl restart google-cloud-ops-agent

# 2. The NVIDIA driver ships with the image; wait until it answers.
for _ in $(seq 60); do nvidia-smi >/dev/null 2>&1 && break; sleep 10; done
nvidia-smi
command -v docker >/dev/null || { apt-get update -q && apt-get install -y -q docker.io; }
command -v nvidia-ctk >/dev/null || { log "ERROR: no NVIDIA Container Toolkit on this image"; exit 1; }

# 3. The app on the GPU: env from metadata, secrets from Secret Manager, image from Artifact Registry.
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
  -p __APP_PORT__:__APP_PORT__ -p 127.0.0.1:__METRICS_PORT__:__METRICS_PORT__ \
  --env-file /etc/nanochat.env "$image"
log "started $image"
""".replace("__OPS_AGENT_VERSION__", OPS_AGENT_VERSION)
    .replace("__APP_PORT__", str(APP_PORT))
    .replace("__METRICS_PORT__", str(METRICS_PORT))
    .replace("__IMAGE_KEY__", IMAGE_KEY)
)


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
                                "metrics_path": METRICS_PATH,
                                "static_configs": [{"targets": [f"localhost:{METRICS_PORT}"]}],
                                # The agent labels its static targets with the VM's metadata.
                                "relabel_configs": [
                                    {
                                        "source_labels": ["__meta_gce_instance_name"],
                                        "target_label": "instance",
                                    }
                                ],
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
    return {
        "NANOCHAT_DEVICE": "cuda",
        "HOST": "0.0.0.0",
        "PORT": str(APP_PORT),
        "NANOCHAT_METRICS_PORT": str(METRICS_PORT),  # published on the VM's loopback only
        **env,
    }


def boot_metadata(*, env: Mapping[str, str], secret_env: Mapping[str, str]) -> dict[str, str]:
    """Instance template metadata for a GPU VM: the startup script and the data it reads back (no image)."""
    return {
        "startup-script": STARTUP_SCRIPT,
        "block-project-ssh-keys": "true",
        "enable-oslogin": "TRUE",
        "nanochat-env": "".join(f"{k}={v}\n" for k, v in app_env(env).items()),
        "nanochat-secret-env": "".join(f"{k}={v}\n" for k, v in secret_env.items()),
        "ops-agent-config": yaml.safe_dump(ops_agent_config(), sort_keys=False),
    }
