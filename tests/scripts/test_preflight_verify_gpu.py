"""scripts/preflight.sh, scripts/verify.sh and scripts/gpu.sh against the fake cloud: one line per check,
the fix on every failing line, a non-zero exit when any fails; the GPU group started and stopped by hand."""

from __future__ import annotations

import re

from tests.scripts.conftest import ROOT, Cloud


def lines(result) -> dict[str, str]:
    """check line -> ok / skip / FAIL"""
    return {
        line[6:]: line[:5].strip()
        for line in result.stdout.splitlines()
        if re.match(r"(ok|skip|FAIL) ", line)
    }


def failing(result) -> list[str]:
    return [line for line, status in lines(result).items() if status == "FAIL"]


# ---- preflight ----------------------------------------------------------------------------------------
def test_preflight_passes_for_an_owner_with_gpu_quota(cloud: Cloud):
    result = cloud.script("preflight.sh", "--env", "dev")
    assert result.returncode == 0, result.stdout + result.stderr
    assert failing(result) == []
    checks = lines(result)
    assert "GPU quota GPUS_ALL_REGIONS 4 >= 1" in checks
    assert "GPU quota PREEMPTIBLE_NVIDIA_L4_GPUS in us-central1 4 >= 1" in checks  # dev is spot
    assert all(
        f"permissions for phase {p}" in checks
        for p in ("state", "apis", "foundation", "release", "monitored")
    )


def test_preflight_fails_on_no_gpu_quota_with_the_fix(cloud: Cloud):
    cloud.state["project_quotas"][0]["limit"] = 0.0  # a new project's GPUS_ALL_REGIONS
    result = cloud.script("preflight.sh", "--env", "prod")
    assert result.returncode == 1
    [line] = failing(result)
    assert "GPUS_ALL_REGIONS is 0, the group needs 4" in line and "fix: request GPUS_ALL_REGIONS >= 4" in line
    assert "GPU quota NVIDIA_L4_GPUS in us-central1 4 >= 4" in lines(result)  # prod: on-demand, 4 VMs max


def test_preflight_names_missing_permissions_per_phase_and_billing(cloud: Cloud):
    cloud.state["permissions"] = ["storage.buckets.create", "storage.buckets.get", "storage.buckets.update"]
    cloud.state["billing_permissions"] = []
    cloud.state["projects"]["your-nanochat-dev"]["billingEnabled"] = False
    result = cloud.script("preflight.sh", "--env", "dev")
    assert result.returncode == 1
    checks = lines(result)
    assert checks["permissions for phase state"] == "ok"
    apis = next(line for line in failing(result) if line.startswith("permissions for phase apis"))
    assert "serviceusage.services.enable" in apis and "roles/owner" in apis
    assert any(
        "billing is not enabled" in line and "gcloud billing projects link" in line
        for line in failing(result)
    )
    assert any(line.startswith("budget: cannot create budgets") for line in failing(result))


def test_preflight_without_an_account(cloud: Cloud):
    cloud.state["account"] = ""
    result = cloud.script("preflight.sh", "--env", "dev")
    assert result.returncode == 1 and any("gcloud auth login" in line for line in failing(result))


# ---- verify -------------------------------------------------------------------------------------------
def monitored(cloud: Cloud) -> Cloud:
    cloud.state["series"] = {"nanochat_build_info": 1}
    result = cloud.script("bootstrap.sh", "--env", "dev", NANOCHAT_SECRET_GRAFANA_SMTP_PASSWORD="pw")
    assert result.returncode == 0, result.stderr
    return cloud


def test_verify_passes_after_a_bootstrap(cloud: Cloud):
    assert cloud.script("verify.sh", "--env", "dev").returncode == 1  # nothing deployed yet
    monitored(cloud)
    result = cloud.script("verify.sh", "--env", "dev")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = lines(result)
    assert failing(result) == []
    assert checks["grafana: datasource managed-prometheus is healthy"] == "ok"
    assert checks["kill switch: function nanochat-kill-switch-dev is active"] == "ok"
    assert any(line.startswith("chat: ") for line in checks)
    assert cloud.state["chats"][-1]["serverless"] == "Bearer user-identity-token"


def test_verify_names_each_failure_with_its_fix(cloud: Cloud):
    monitored(cloud)
    cloud.state |= {"series": {}, "chat_status": 403, "grafana_status": 502, "functions": {}, "budgets": []}
    cloud.state["channels"][0]["verificationStatus"] = "UNVERIFIED"
    cloud.state["apply_changes_template"] = True
    cloud.apply("dev")  # an infra change that is not live yet
    result = cloud.script("verify.sh", "--env", "dev")
    assert result.returncode == 1
    failures = failing(result)
    expected = {
        "serving:": "--promote-latest",
        "chat:": "run.invoker",
        "metrics:": "send the service a request",
        "grafana:": "logs read grafana",
        "email:": "verify it",
        "budget:": "cdktf deploy dev",
        "kill switch:": "cdktf deploy dev",
    }
    for check, fix in expected.items():
        assert any(line.startswith(check) and fix in line for line in failures), (check, failures)


def test_verify_datasource_uid_is_the_one_grafana_provisions():
    module = (ROOT / "modules/grafana.py").read_text()
    script = (ROOT / "scripts/verify.sh").read_text()
    uid = re.search(r'^DATASOURCE_UID = "([^"]+)"', module, re.M).group(1)
    assert f"GRAFANA_DATASOURCE_UID={uid} " in script


# ---- gpu.sh -------------------------------------------------------------------------------------------
def test_gpu_up_down_status(founded: Cloud):
    refused = founded.script("gpu.sh", "up", "dev")
    assert refused.returncode == 1 and "no GPU image is released yet" in refused.stderr
    founded.state["series"] = {"nanochat_build_info": 1}
    smtp = {"NANOCHAT_SECRET_GRAFANA_SMTP_PASSWORD": "pw"}
    assert founded.script("bootstrap.sh", "--env", "dev", **smtp).returncode == 0
    assert founded.script("gpu.sh", "up", "dev", "--size", "2").returncode == 0
    assert founded.state["migs"]["nanochat-gpu-dev"]["targetSize"] == 2
    status = founded.script("gpu.sh", "status", "dev")
    assert status.returncode == 0 and "target size 2" in status.stdout and "recent errors:" in status.stdout
    assert founded.script("gpu.sh", "down", "dev").returncode == 0
    assert founded.state["migs"]["nanochat-gpu-dev"]["targetSize"] == 0


def test_gpu_down_turns_an_autoscaler_off_first(founded: Cloud):
    founded.state["migs"]["nanochat-gpu-dev"] |= {
        "autoscaler": "projects/p/regions/r/autoscalers/a",
        "targetSize": 1,
    }
    result = founded.script("gpu.sh", "down", "dev", "--dry-run")
    commands = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert [c.split()[4] for c in commands] == ["update-autoscaling", "resize"]
    assert "--mode off" in commands[0]
    assert founded.state["migs"]["nanochat-gpu-dev"]["targetSize"] == 1  # a dry run


def test_gpu_arguments():
    import subprocess

    gpu = str(ROOT / "scripts/gpu.sh")
    assert subprocess.run([gpu, "--help"], capture_output=True, text=True).returncode == 0
    wrong = subprocess.run([gpu, "sideways", "dev"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "up, down or status" in wrong.stderr
