"""scripts/bootstrap.sh against the fake cloud: from an empty project to `phase: monitored`, each phase
checking before it creates (a second run changes nothing), secret values never shown, and the env file
edited on its `phase:` line only."""

from __future__ import annotations

import difflib

from tests.scripts.conftest import Cloud

MUTATING = ("create", "enable", "add", "update", "update-traffic", "deploy", "submit", "resize")
SMTP = {"NANOCHAT_SECRET_GRAFANA_SMTP_PASSWORD": "smtp-secret-81f3"}


def bootstrap(cloud: Cloud, *args: str, **env: str):
    return cloud.script("bootstrap.sh", "--env", "dev", *args, **{**SMTP, **env})


def test_bootstrap_takes_an_empty_project_through_every_phase(cloud: Cloud):
    cloud.state["series"] = {"nanochat_build_info": 1}
    result = bootstrap(cloud)
    assert result.returncode == 0, result.stderr
    state = cloud.state
    assert state["buckets"]["your-nanochat-dev-tfstate"] == {
        "versioning_enabled": True,
        "uniform_bucket_level_access": True,
    }
    assert {"serviceusage.googleapis.com", "cloudresourcemanager.googleapis.com"} <= set(
        state["enabled_services"]
    )
    assert state["applies"] == ["foundation", "released", "monitored"]
    assert state["secrets"]["grafana-smtp-password"] == ["smtp-secret-81f3"]
    assert len(state["builds"]) == 1 and len(state["gates"]) == 1  # the first release
    assert cloud.env_config("dev")["phase"] == "monitored"
    assert "smtp-secret" not in result.stdout + result.stderr


def test_a_second_bootstrap_changes_nothing(cloud: Cloud):
    cloud.state["series"] = {"nanochat_build_info": 1}
    assert bootstrap(cloud).returncode == 0
    cloud.clear_calls()
    applies = len(cloud.state["applies"])
    result = bootstrap(cloud)
    assert result.returncode == 0, result.stderr
    changes = [c for c in cloud.calls() if any(word in c for word in MUTATING)]
    assert changes == []
    assert len(cloud.state["applies"]) == applies + 1  # terraform: no changes
    assert len(cloud.state["builds"]) == 1


def test_bootstrap_waits_for_metrics_before_the_monitoring_phase_and_resumes_there(cloud: Cloud):
    result = bootstrap(cloud)
    assert result.returncode == 1 and "no nanochat_build_info series" in result.stderr
    assert cloud.env_config("dev")["phase"] == "released"
    assert "monitored" not in cloud.state["applies"]
    cloud.state["series"] = {"nanochat_build_info": 2}
    result = bootstrap(cloud)
    assert result.returncode == 0, result.stderr
    assert cloud.env_config("dev")["phase"] == "monitored" and len(cloud.state["builds"]) == 1


def test_the_env_file_changes_on_its_phase_line_only(cloud: Cloud):
    before = (cloud.envs / "dev.yaml").read_text()
    cloud.state["series"] = {"nanochat_build_info": 1}
    assert bootstrap(cloud).returncode == 0
    after = (cloud.envs / "dev.yaml").read_text()
    changed = [
        line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:2] in ("- ", "+ ")
    ]
    assert changed == ["- phase: foundation", "+ phase: monitored"]


def test_the_api_keys_secret_is_generated_and_not_shown(cloud: Cloud):
    cloud.state["series"] = {"nanochat_build_info": 1}
    result = cloud.script("bootstrap.sh", "--env", "prod", NANOCHAT_SECRET_GRAFANA_SMTP_PASSWORD="pw-5e6f")
    assert result.returncode == 0, result.stderr
    [key] = cloud.state["secrets"]["nanochat-api-keys"]
    assert len(key) >= 40 and key not in result.stdout + result.stderr
    assert cloud.state["gates"][0]["api_key"] == key  # the first release's gate used it


def test_a_secret_without_a_value_stops_a_non_interactive_bootstrap_with_the_variable_to_set(cloud: Cloud):
    result = cloud.script("bootstrap.sh", "--env", "dev")
    assert result.returncode == 1 and "NANOCHAT_SECRET_GRAFANA_SMTP_PASSWORD" in result.stderr
    assert cloud.state["builds"] == []


def test_dry_run_prints_every_phase_and_touches_nothing(cloud: Cloud):
    before = (cloud.envs / "dev.yaml").read_text()
    result = bootstrap(cloud, "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]
    order = [
        "gcloud storage buckets create gs://your-nanochat-dev-tfstate",
        "gcloud services enable serviceusage.googleapis.com",
        "cdktf deploy dev --auto-approve",
        "gcloud secrets versions add grafana-smtp-password",
        "scripts/deploy.sh --env dev",
        "set phase: released",
        "scripts/deploy.sh --env dev --promote-latest",
        "prometheus/api/v1/query",
        "set phase: monitored",
    ]
    positions = []
    for expected in order:
        found = [i for i, line in enumerate(lines) if expected in line]
        assert found, f"{expected!r} not among:\n" + "\n".join(lines)
        positions.append(found[0])
    assert positions == sorted(positions)
    assert cloud.calls() == [] and cloud.calls("cdktf") == []
    assert (cloud.envs / "dev.yaml").read_text() == before


def test_help():
    import subprocess

    from tests.scripts.conftest import ROOT

    result = subprocess.run([str(ROOT / "scripts/bootstrap.sh"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--dry-run" in result.stdout and "set -euo" not in result.stdout
