"""modules.gpu_vm_boot: the GPU VM's startup script and its Ops Agent (Managed Prometheus) config."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from modules.gpu_vm_boot import APP_PORT, METRICS_JOB, STARTUP_SCRIPT, boot_metadata


@pytest.fixture(scope="module")
def metadata() -> dict[str, str]:
    return boot_metadata(
        image="us-central1-docker.pkg.dev/p/nanochat/nanochat-gpu:abc123",
        env={"NANOCHAT_MAX_BATCH": "64"},
        secret_env={"NANOCHAT_API_KEYS": "nanochat-api-keys"},
    )


def test_the_startup_script_is_valid_bash():
    bash = shutil.which("bash")
    assert bash, "bash is part of every Linux image"
    result = subprocess.run([bash, "-n"], input=STARTUP_SCRIPT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_startup_script_runs_the_app_on_the_gpu_after_the_driver():
    script = STARTUP_SCRIPT
    assert script.startswith("#!/bin/bash\n") and "set -euo pipefail" in script
    assert "nvidia-smi" in script and "--gpus all" in script
    assert f"-p {APP_PORT}:{APP_PORT}" in script and "--restart=always" in script
    assert script.index("nvidia-smi") < script.index("docker run")  # waits for the driver first
    assert "add-ops-agent-repo.sh --also-install --version='2.*.*'" in script  # the major version, quoted


def test_the_ops_agent_scrapes_the_app_as_job_nanochat(metadata):
    config = yaml.safe_load(metadata["ops-agent-config"])
    receiver = config["metrics"]["receivers"]["prometheus"]
    assert receiver["type"] == "prometheus"
    (scrape,) = receiver["config"]["scrape_configs"]
    assert scrape["job_name"] == METRICS_JOB == "nanochat"  # the job alerts/ and dashboards/ select on
    assert scrape["metrics_path"] == "/metrics"
    assert scrape["static_configs"] == [{"targets": [f"localhost:{APP_PORT}"]}]
    assert config["metrics"]["service"]["pipelines"]["prometheus"]["receivers"] == ["prometheus"]


def test_metadata_carries_the_driver_flag_the_image_and_the_env(metadata):
    assert metadata["install-nvidia-driver"] == "True"
    assert metadata["block-project-ssh-keys"] == "true" and metadata["enable-oslogin"] == "TRUE"
    assert metadata["nanochat-image"].endswith("/nanochat-gpu:abc123")
    env = dict(line.split("=", 1) for line in metadata["nanochat-env"].splitlines())
    assert env == {
        "NANOCHAT_DEVICE": "cuda",
        "HOST": "0.0.0.0",
        "PORT": str(APP_PORT),
        "NANOCHAT_MAX_BATCH": "64",
    }
    assert metadata["nanochat-secret-env"] == "NANOCHAT_API_KEYS=nanochat-api-keys\n"
    assert "sk-" not in "".join(metadata.values())  # secret values never reach metadata


def test_env_file_values_override_the_gpu_defaults():
    metadata = boot_metadata(image="i", env={"NANOCHAT_DEVICE": "cuda:1"}, secret_env={})
    assert "NANOCHAT_DEVICE=cuda:1\n" in metadata["nanochat-env"]
    assert "NANOCHAT_DEVICE=cuda\n" not in metadata["nanochat-env"]
