"""modules.monitoring: email channels in every phase; PromQL policies readable in Cloud Monitoring.

One small stack, synthesized once: channels alone (phase foundation), and Monitoring for a service that
scales to zero and for one that does not, the second with warnings left to Grafana's email."""

from __future__ import annotations

import json

import pytest

from infra.config import ROOT
from modules.alert_rules import load_alert_rules

RULES = load_alert_rules(ROOT / "alerts")
EMAILS = ["oncall@example.com", "team@example.com"]


@pytest.fixture(scope="module")
def synthesized() -> dict:
    from cdktf import TerraformStack
    from cdktf import Testing as T  # not `Testing`: pytest would try to collect it

    from modules.cloud_run_service import CloudRunService
    from modules.inputs import CloudRunServiceInput, MonitoringInput
    from modules.monitoring import AlertChannels, Monitoring

    def stack(name: str, with_monitoring: bool) -> dict:
        scope = TerraformStack(T.app(), name)
        channels = AlertChannels(scope, "channels", project="p", env="dev", alert_emails=EMAILS, labels={})
        if with_monitoring:
            service_spec = CloudRunServiceInput(
                initial_image="us-docker.pkg.dev/cloudrun/container/hello",
                cpu="1",
                memory="2Gi",
                min_instances=0,
                max_instances=2,
                concurrency=8,
                request_timeout_s=300,
                ingress="all",
                public=False,
                invokers=[],
                deletion_protection=False,
            )
            service = CloudRunService(
                scope,
                "service",
                service_spec,
                project="p",
                region="europe-west4",
                name="nanochat",
                account_id="nanochat-run-dev",
                collector_secret_id="collector",
                gate_audience="nanochat-dev-release-gate",
                secret_refs={},
                mount_secret_env=False,
                labels={},
            )
            common = dict(
                project="p",
                project_number="123",
                env="dev",
                channel_ids=channels.ids,
                service_name=service.name,
                service_location=service.location,
                service_url=service.url,
                labels={},
            )
            rules = dict(rules=tuple(RULES), evaluation_interval_s=60, service_is_public=False)
            idle = MonitoringInput(scales_to_zero=True, uptime_check_period_s=300, **rules)
            Monitoring(scope, "idle", idle, **common)
            busy = MonitoringInput(
                scales_to_zero=False, uptime_check_period_s=None, notify_warnings=False, **rules
            )
            Monitoring(scope, "busy", busy, **common)
        return json.loads(T.synth(scope))

    return {"foundation": stack("foundation", False), "monitored": stack("monitored", True)}


def policies(data: dict, monitoring: str) -> dict[str, dict]:
    found = data["resource"].get("google_monitoring_alert_policy", {})
    return {
        body["display_name"]: body
        for key, body in found.items()
        if key.startswith(f"{monitoring}_")  # logical ids start with the construct path
    }


def test_channels_alone_make_no_policy_and_no_uptime_check(synthesized):
    resources = synthesized["foundation"]["resource"]
    channels = resources["google_monitoring_notification_channel"].values()
    assert sorted(c["labels"]["email_address"] for c in channels) == EMAILS
    assert "google_monitoring_alert_policy" not in resources
    assert "google_monitoring_uptime_check_config" not in resources


def test_policy_documentation_has_cloud_monitoring_variables_not_prometheus_templates(synthesized):
    found = policies(synthesized["monitored"], "idle") | policies(synthesized["monitored"], "busy")
    assert found
    for name, policy in found.items():
        documentation = policy["documentation"]
        for field in ("content", "subject"):
            assert "{{" not in documentation.get(field, ""), f"{name}.{field}: {documentation.get(field)}"
    memory = policies(synthesized["monitored"], "busy")["NanochatHighMemory"]["documentation"]
    assert "${metric.label.instance}" in memory["content"] and "${metric.label.instance}" in memory["subject"]


def test_absence_alert_is_not_created_for_a_service_that_scales_to_zero(synthesized):
    idle, busy = policies(synthesized["monitored"], "idle"), policies(synthesized["monitored"], "busy")
    assert "NanochatTargetAbsent" not in idle
    assert busy["NanochatTargetAbsent"]["severity"] == "CRITICAL"
    assert set(busy) - set(idle) == {"NanochatTargetAbsent"}


def test_warnings_left_to_grafana_are_not_emailed_criticals_always_are(synthesized):
    idle, busy = policies(synthesized["monitored"], "idle"), policies(synthesized["monitored"], "busy")
    for name, policy in busy.items():
        emailed = bool(policy.get("notification_channels"))
        assert emailed == (policy["severity"] == "CRITICAL"), name
    assert all(len(policy["notification_channels"]) == len(EMAILS) for policy in idle.values())
