"""modules.grafana: Grafana-managed alert rules and an email contact point, provisioned like the dashboards;
SMTP from Secret Manager on a port Cloud Run may use. One small stack, synthesized once."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml

from infra.config import ROOT
from modules.alert_rules import GRAFANA_CONTACT_POINT, load_alert_rules
from modules.inputs import GrafanaInput, GrafanaSmtp

RULES = load_alert_rules(ROOT / "alerts")
EMAILS = ["oncall@example.com"]
SMTP = GrafanaSmtp(
    host="smtp.example.com:587",
    user="apikey",
    from_address="grafana@example.com",
    password_secret="grafana-smtp-password",
)


@pytest.fixture(scope="module")
def synthesized() -> dict:
    from cdktf import TerraformStack
    from cdktf import Testing as T  # not `Testing`: pytest would try to collect it

    from modules.grafana import Grafana

    result = {}
    for name, smtp in (("mail", SMTP), ("nomail", None)):
        scope = TerraformStack(T.app(), name)
        spec = GrafanaInput(
            smtp=smtp, dashboards={"nanochat.json": "{}"}, rules=tuple(RULES), deletion_protection=False
        )
        grafana = Grafana(
            scope,
            "grafana",
            spec,
            project="p",
            region="europe-west4",
            env="dev",
            name="grafana",
            account_id="nanochat-grafana-dev",
            bucket="p-nanochat-grafana",
            alert_emails=EMAILS,
            labels={},
        )
        warnings = [entry.data for entry in grafana.node.metadata if "warn" in entry.type]
        result[name] = {"data": json.loads(T.synth(scope)), "warnings": warnings}
    return result


def one(data: dict, resource_type: str) -> dict:
    [body] = data["resource"][resource_type].values()
    return body


def grafana_container(data: dict) -> dict:
    service = one(data, "google_cloud_run_v2_service")
    [container] = [c for c in service["template"]["containers"] if c["name"] == "grafana"]
    return container


def test_alerting_provisioning_is_an_object_in_the_bucket(synthesized):
    objects = synthesized["mail"]["data"]["resource"]["google_storage_bucket_object"].values()
    [alerting] = [o for o in objects if o["name"] == "provisioning/alerting/nanochat.yaml"]
    document = yaml.safe_load(alerting["content"])
    titles = {rule["title"] for group in document["groups"] for rule in group["rules"]}
    assert titles == {rule.name for rule in RULES if rule.severity == "warning"}
    [contact_point] = document["contactPoints"]
    assert contact_point["name"] == GRAFANA_CONTACT_POINT
    assert contact_point["receivers"][0]["settings"]["addresses"] == "oncall@example.com"
    assert document["policies"][0]["receiver"] == GRAFANA_CONTACT_POINT


def test_smtp_settings_and_the_password_from_secret_manager(synthesized):
    data = synthesized["mail"]["data"]
    env = {e["name"]: e for e in grafana_container(data)["env"]}
    assert env["GF_SMTP_ENABLED"]["value"] == "true"
    assert env["GF_SMTP_HOST"]["value"] == "smtp.example.com:587"
    assert env["GF_SMTP_USER"]["value"] == "apikey"
    assert env["GF_SMTP_FROM_ADDRESS"]["value"] == "grafana@example.com"
    assert "value" not in env["GF_SMTP_PASSWORD"]
    assert env["GF_SMTP_PASSWORD"]["value_source"]["secret_key_ref"] == {
        "secret": "grafana-smtp-password",
        "version": "latest",
    }
    access = one(data, "google_secret_manager_secret_iam_member")
    assert access["secret_id"] == "grafana-smtp-password"
    assert access["role"] == "roles/secretmanager.secretAccessor"
    assert access["member"].startswith("serviceAccount:${google_service_account.")
    service = one(data, "google_cloud_run_v2_service")
    assert any("google_secret_manager_secret_iam_member" in d for d in service["depends_on"])


def test_a_grafana_that_emails_runs_all_the_time_one_instance(synthesized):
    service = one(synthesized["mail"]["data"], "google_cloud_run_v2_service")
    assert service["template"]["scaling"] == {"min_instance_count": 1, "max_instance_count": 1}
    assert all(c["resources"]["cpu_idle"] is False for c in service["template"]["containers"])


def test_without_smtp_rules_are_provisioned_grafana_scales_to_zero_and_synth_says_why(synthesized):
    data = synthesized["nomail"]["data"]
    env = {e["name"] for e in grafana_container(data)["env"]}
    assert not {name for name in env if name.startswith("GF_SMTP")}
    assert "google_secret_manager_secret_iam_member" not in data["resource"]
    service = one(data, "google_cloud_run_v2_service")
    assert service["template"]["scaling"]["min_instance_count"] == 0
    [warning] = synthesized["nomail"]["warnings"]
    assert "no email" in warning and "grafana.smtp" in warning
    assert synthesized["mail"]["warnings"] == []


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("smtp.example.com:25", "Cloud Run blocks outbound connections to port 25"),
        ("smtp.example.com", "must be host:port"),
    ],
)
def test_smtp_host_must_name_a_port_cloud_run_can_reach(host, message):
    from modules.grafana import smtp_env

    with pytest.raises(ValueError, match=message):
        smtp_env(SimpleNamespace(host=host, user="u", from_address="a@example.com", password_secret="s"))
