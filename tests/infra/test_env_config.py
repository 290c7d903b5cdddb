"""envs/*.yaml -> EnvConfig: the real files load, bad files fail with messages that name the field."""

from __future__ import annotations

import copy
import re
import subprocess
import sys

import pytest
import yaml

from infra.config import ENVS_DIR, ROOT, ConfigError, load_env, load_envs


@pytest.fixture(scope="module")
def dev_data() -> dict:
    return yaml.safe_load((ENVS_DIR / "dev.yaml").read_text())


def write_env(tmp_path, data, name="dev"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_repository_env_files_load():
    configs = {c.name: c for c in load_envs()}
    assert set(configs) == {"dev", "prod"}
    for cfg in configs.values():
        assert cfg.common_labels["env"] == cfg.name
        assert cfg.common_labels["managed-by"] == "cdktf"


def test_dev_and_prod_differ_where_they_must():
    dev, prod = load_env(ENVS_DIR / "dev.yaml"), load_env(ENVS_DIR / "prod.yaml")
    assert dev.project != prod.project and dev.state.bucket != prod.state.bucket
    assert dev.state.prefix != prod.state.prefix
    # an idle dev costs nothing: Cloud Run scales to zero, no GPU VM, no load balancer, no uptime check
    assert dev.service.min_instances == 0 and prod.service.min_instances >= 1
    assert dev.gpu.target_size == 0 and dev.gpu.autoscaling is None and not dev.gpu.load_balancer
    assert prod.gpu.autoscaling and prod.gpu.autoscaling.min_replicas >= 1 and prod.gpu.load_balancer
    assert dev.monitoring.uptime_check_period_s is None and prod.monitoring.uptime_check_period_s
    assert not dev.service.deletion_protection and prod.service.deletion_protection
    assert len(prod.gpu.zones) > len(dev.gpu.zones)
    assert prod.budget.amount > dev.budget.amount


def _set(data: dict, dotted: str, value) -> dict:
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return data


class _Delete:
    def __repr__(self) -> str:
        return "<deleted>"


_DELETE = _Delete()

BAD = [
    # (field, value, words the message must contain)
    ("project", _DELETE, ["project", "Field required"]),
    ("project", "My_Project", ["project", "pattern"]),
    ("region", "mars", ["region"]),
    ("service.min_instance", 1, ["service.min_instance", "Extra inputs"]),  # a typo
    ("service.min_instances", 5, ["min_instances (5) exceeds max_instances (2)"]),
    ("service.cpu", "3", ["service.cpu"]),
    ("service.memory", "2GB", ["service.memory"]),
    ("service.ingress", "public", ["service.ingress"]),
    ("service.env", {"NANOCHAT_API_KEYS": "sk-123"}, ["NANOCHAT_API_KEYS", "Secret Manager"]),
    ("service.env", {"HF_TOKEN": "hf_x"}, ["HF_TOKEN", "secret"]),
    ("service.env", {"NANOCHAT_MAX_BATCH": "1\n2"}, ["NANOCHAT_MAX_BATCH", "one line"]),
    ("service.env", {"lower": "x"}, ["service.env.lower"]),
    ("service.invokers", ["allUsers"], ["service.invokers.0"]),
    ("gpu.zones", ["us-central1-a", "us-central1-b"], ["max_surge (1)", "number of zones (2)"]),
    ("gpu.zones", ["europe-west4-a"], ["gpu.zones must be in region us-central1"]),
    ("gpu.zones", ["us-central1-a", "europe-west4-a"], ["one region"]),
    ("gpu.machine_type", "n1-standard-8", ["gpu.machine_type"]),
    ("gpu.accelerator_type", "nvidia-tesla-t4", ["gpu.accelerator_type"]),
    ("gpu.image_tag", "latest", ["gpu.image_tag", "Extra inputs"]),  # releases set a digest
    ("phase", "live", ["phase"]),
    ("github.owner_id", _DELETE, ["github.owner_id", "Field required"]),
    ("github.repository_id", "my-repo", ["github.repository_id"]),
    ("service.secret_env", {"NANOCHAT_HF": "undeclared"}, ["not declared", "service.secret_env.NANOCHAT_HF"]),
    ("service.api_keys_secret", "grafana-smtp-password", ["must be the secret mounted as NANOCHAT_API_KEYS"]),
    (
        "grafana.smtp",
        {"host": "smtp.example.com:587", "user": "u", "from_address": "a@b.io", "password_secret": "nope"},
        ["not declared", "grafana.smtp.password_secret: nope"],
    ),
    ("gpu.load_balancer", True, ["set domain", "insecure_http: true"]),  # no plain HTTP by accident
    ("gpu.schedule", {"start": "0 19 * * 1-5", "stop": "0 8 * * 1-5"}, ["must be later"]),
    ("gpu.schedule", {"start": "0 8 * * 1-5", "stop": "0 19 * * *"}, ["same days"]),
    ("gpu.autoscaling", {"min_replicas": 1, "max_replicas": 2}, ["needs load_balancer: true"]),
    ("gpu.target_size", -1, ["gpu.target_size"]),
    ("monitoring.alert_emails", [], ["monitoring.alert_emails"]),
    ("monitoring.alert_emails", ["not-an-email"], ["monitoring.alert_emails.0"]),
    ("monitoring.evaluation_interval_s", 45, ["evaluation_interval_s", "multiple of 30"]),
    ("monitoring.alert_rules_dir", "no-such-dir", ["monitoring.alert_rules_dir: no-such-dir does not exist"]),
    ("grafana.viewers", ["allAuthenticatedUsers"], ["grafana.viewers.0"]),
    ("budget.actual_thresholds", [0.9, 0.5], ["actual_thresholds must be positive, increasing"]),
    ("budget.billing_account", "12345", ["budget.billing_account"]),
    ("budget.amount", 0, ["budget.amount"]),
    ("labels", {"env": "x"}, ["labels may not set env"]),
    ("github.deploy_branch", "main' || true", ["github.deploy_branch"]),  # ends up in a CEL condition
    ("state", _DELETE, ["state", "Field required"]),
]


@pytest.mark.parametrize(("field", "value", "words"), BAD, ids=[f"{b[0]}={b[1]!r}"[:60] for b in BAD])
def test_bad_env_files_fail_with_a_clear_message(tmp_path, dev_data, field, value, words):
    path = write_env(tmp_path, _set(dev_data, field, value))
    with pytest.raises(ConfigError) as caught:
        load_env(path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    for word in words:
        assert word in message, message


def test_uptime_checks_need_public_ingress(tmp_path, dev_data):
    data = _set(_set(dev_data, "monitoring.uptime_check_period_s", 300), "service.ingress", "internal")
    with pytest.raises(ConfigError, match=re.escape("uptime checks need service.ingress: all")):
        load_env(write_env(tmp_path, data))


def test_count_settings_that_only_look_like_secrets_are_allowed(tmp_path, dev_data):
    data = _set(
        dev_data, "service.env", {"NANOCHAT_MAX_TOKENS_LIMIT": "512", "NANOCHAT_DEFAULT_MAX_TOKENS": "64"}
    )
    assert load_env(write_env(tmp_path, data)).service.env["NANOCHAT_MAX_TOKENS_LIMIT"] == "512"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("project: [unclosed", "not valid YAML"),
        ("- a list\n- not a mapping\n", "expected a mapping of settings, got list"),
        ("name: other\n", "name: the env's name is its file name (dev)"),
    ],
)
def test_unreadable_env_files_fail_clearly(tmp_path, text, words):
    path = tmp_path / "dev.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_env(path)


def test_a_missing_env_file_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_env(tmp_path / "nope.yaml")


def test_envs_must_not_share_a_project(tmp_path, dev_data):
    write_env(tmp_path, dev_data, "dev")
    write_env(tmp_path, dev_data, "staging")
    with pytest.raises(ConfigError, match="each env needs its own project; shared: your-nanochat-dev"):
        load_envs(tmp_path)


def test_an_empty_envs_folder_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"no env files"):
        load_envs(tmp_path)


def test_the_app_exits_2_with_one_line_on_a_bad_env_file(tmp_path, dev_data):
    """`python -m infra.main` validates before importing cdktf: fast, one line, exit 2."""
    write_env(tmp_path, _set(dev_data, "service.max_instances", 0))
    result = subprocess.run(
        [sys.executable, "-m", "infra.main", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("infra: ") and "service.max_instances" in lines[0], lines


def test_phases_are_supersets(tmp_path, dev_data):
    assert load_env(write_env(tmp_path, dev_data)).phase == "foundation"  # what the repository ships
    seen = {}
    for phase in ("foundation", "released", "monitored"):
        cfg = load_env(write_env(tmp_path, _set(dev_data, "phase", phase)))
        seen[phase] = (cfg.released, cfg.monitored)
    assert seen == {"foundation": (False, False), "released": (True, False), "monitored": (True, True)}


def test_a_schedule_is_working_hours(tmp_path, dev_data):
    data = _set(dev_data, "gpu.schedule", {"start": "30 7 * * 1-5", "stop": "0 19 * * 1-5", "size": 2})
    schedule = load_env(write_env(tmp_path, data)).gpu.schedule
    assert schedule.duration_s == (11 * 60 + 30) * 60 and schedule.size == 2


def test_api_keys_must_be_mounted_where_the_gate_reads_them(tmp_path, dev_data):
    data = _set(dev_data, "secrets", {**dev_data["secrets"], "keys": "bearer keys"})
    data = _set(data, "service.secret_env", {"NANOCHAT_API_KEYS": "keys"})
    with pytest.raises(ConfigError, match="name the same secret as api_keys_secret"):
        load_env(write_env(tmp_path, data))
    cfg = load_env(write_env(tmp_path, _set(data, "service.api_keys_secret", "keys")))
    assert cfg.service.api_keys_secret == "keys"
