"""modules.gpu_vm_boot: the GPU VM's startup script and its Ops Agent (Managed Prometheus) config."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from app.contract import METRICS_PATH, METRICS_PORT
from modules.gpu_vm_boot import APP_PORT, METRICS_JOB, STARTUP_SCRIPT, boot_metadata


@pytest.fixture(scope="module")
def metadata() -> dict[str, str]:
    return boot_metadata(
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
    assert scrape["metrics_path"] == METRICS_PATH
    # the metrics port, published on the VM's loopback only: never behind the load balancer
    assert scrape["static_configs"] == [{"targets": [f"localhost:{METRICS_PORT}"]}]
    assert f"-p 127.0.0.1:{METRICS_PORT}:{METRICS_PORT}" in STARTUP_SCRIPT
    assert f"-p {METRICS_PORT}" not in STARTUP_SCRIPT
    # finding 10: each VM's series carry its own `instance` (the agent's __meta_gce_* target labels)
    assert scrape["relabel_configs"] == [
        {"source_labels": ["__meta_gce_instance_name"], "target_label": "instance"}
    ]
    assert config["metrics"]["service"]["pipelines"]["prometheus"]["receivers"] == ["prometheus"]


def test_metadata_carries_the_env_but_no_image_and_no_driver_install(metadata):
    assert "install-nvidia-driver" not in metadata  # the image family ships the driver (finding 7)
    assert metadata["block-project-ssh-keys"] == "true" and metadata["enable-oslogin"] == "TRUE"
    assert "nanochat-image" not in metadata  # releases set it, as a digest (finding 6)
    env = dict(line.split("=", 1) for line in metadata["nanochat-env"].splitlines())
    assert env == {
        "NANOCHAT_DEVICE": "cuda",
        "HOST": "0.0.0.0",
        "PORT": str(APP_PORT),
        "NANOCHAT_METRICS_PORT": str(METRICS_PORT),
        "NANOCHAT_MAX_BATCH": "64",
    }
    assert metadata["nanochat-secret-env"] == "NANOCHAT_API_KEYS=nanochat-api-keys\n"
    assert "sk-" not in "".join(metadata.values())  # secret values never reach metadata


def test_env_file_values_override_the_gpu_defaults():
    metadata = boot_metadata(env={"NANOCHAT_DEVICE": "cuda:1"}, secret_env={})
    assert "NANOCHAT_DEVICE=cuda:1\n" in metadata["nanochat-env"]
    assert "NANOCHAT_DEVICE=cuda\n" not in metadata["nanochat-env"]


def _run_boot(tmp_path, image: str) -> subprocess.CompletedProcess:
    """The startup script with fake `curl` (the metadata server) and fake tools that log their calls."""
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    log = tmp_path / "calls"
    (bin_ / "curl").write_text(
        '#!/bin/bash\ncase "${@: -1}" in *nanochat-image) printf %s "$FAKE_IMAGE";; *) ;; esac\n'
    )
    for tool in ("docker", "gcloud", "systemctl", "dpkg", "nvidia-smi", "nvidia-ctk", "apt-get"):
        (bin_ / tool).write_text(f'#!/bin/bash\necho "{tool} $*" >> "{log}"\n')
    for path in bin_.iterdir():
        path.chmod(0o755)
    script = STARTUP_SCRIPT.replace("/etc/", f"{tmp_path}/etc-")
    (tmp_path / "etc-google-cloud-ops-agent").mkdir(exist_ok=True)
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "FAKE_IMAGE": image}
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    result.calls = log.read_text() if log.exists() else ""
    return result


@pytest.mark.parametrize("image", ["", "r/nanochat-gpu:latest", "r/nanochat-gpu:abc123"])
def test_a_vm_without_a_released_digest_says_so_and_starts_nothing(tmp_path, image):
    result = _run_boot(tmp_path, image)
    assert result.returncode == 1
    assert "nanochat-boot: ERROR: metadata nanochat-image is" in result.stdout
    assert "not a digest" in result.stdout and "docker" not in result.calls


def test_a_vm_with_a_released_digest_runs_it_on_the_gpu(tmp_path):
    image = "us-central1-docker.pkg.dev/p/nanochat/nanochat-gpu@sha256:" + "a" * 64
    result = _run_boot(tmp_path, image)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"docker pull {image}" in result.calls
    assert f"docker run -d --name nanochat --restart=always --gpus all --init -p {APP_PORT}:{APP_PORT}" in (
        result.calls
    )
