"""Alerting in Cloud Monitoring: email channels, one PromQL alert policy per alert rule, an uptime check.

Two constructs, for the two bootstrap phases (docs/infra.md):
- `AlertChannels`: the email notification channels, created in every phase (the budget uses them too).
- `Monitoring`: the PromQL policies and the uptime check, created only in phase `monitored`, once the
  service's `nanochat_*` series exist: Cloud Monitoring refuses a PromQL condition whose metrics were never
  written, so a first apply on an empty project would fail.

The policies come from the Prometheus rule files (`modules.alert_rules`): same name (display name and
`alert_rule`), same expression, `for` as the duration, the group as `rule_group`, the rule's labels, its
severity, and its annotations (summary as the subject; summary, description and runbook as the
documentation, their Prometheus templates turned into Cloud Monitoring's `${metric.label.KEY}` variables).
Managed Service for Prometheus stores the app's series under their Prometheus names, so the expressions run
unchanged. Where the service scales to zero, the `absent(...)` alerts are not created (they would fire on
every idle period; `modules.alert_rules.alerting_rules`), nor the trace-export ones where the service
exports no traces (their metric is never written). Critical policies always email the channels (the
paging path); warning ones only with `notify_warnings` (off where Grafana emails them instead).

The uptime check calls the Cloud Run service's `/health` over HTTPS; a private service is called with
an OIDC token of the Monitoring service agent, which is granted the invoker role for that. Its own
alert policy fires when the check fails from more than one checker region.

Inputs: `AlertChannels` takes the emails; `Monitoring` a `MonitoringInput` (the rules, the evaluation and
uptime periods, how the service runs), the channel ids and the service's name, location and URL.
Outputs: `AlertChannels.ids`; `Monitoring.alert_policies`, `Monitoring.uptime_check`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cdktf import Fn
from cdktf_cdktf_provider_google.monitoring_alert_policy import (
    MonitoringAlertPolicy,
    MonitoringAlertPolicyConditions,
    MonitoringAlertPolicyConditionsConditionThresholdAggregations,
)
from cdktf_cdktf_provider_google.monitoring_notification_channel import MonitoringNotificationChannel
from cdktf_cdktf_provider_google.monitoring_uptime_check_config import (
    MonitoringUptimeCheckConfig,
    MonitoringUptimeCheckConfigHttpCheckAcceptedResponseStatusCodes,
)
from constructs import Construct

from app.contract import HEALTH_PATH
from modules.alert_rules import AlertRule, alerting_rules, cloud_monitoring_text
from modules.grants import run_service_role
from modules.inputs import MonitoringInput

GRAFANA_NOTIFIES = {"notified-by": "grafana"}  # a policy whose email Grafana's alert rule sends
AUTO_CLOSE = "1800s"  # an incident with no data for this long closes by itself


def _documentation(rule: AlertRule) -> dict:
    notes = {key: cloud_monitoring_text(text) for key, text in rule.annotations.items()}
    parts = [notes.get("summary", rule.name), notes.get("description", "")]
    if notes.get("runbook_url"):
        parts.append(f"Runbook: {notes['runbook_url']}")
    parts.append(f"Source: `{rule.source}`, group `{rule.group}`.")
    return {
        "content": "\n\n".join(p for p in parts if p),
        "mime_type": "text/markdown",
        "subject": f"[{rule.severity.upper()}] {notes.get('summary', rule.name)}"[:255],
    }


class AlertChannels(Construct):
    """One email notification channel per address of `alert_emails`; `.ids` for policies and budgets."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        *,
        project: str,
        env: str,
        alert_emails: Sequence[str],
        labels: Mapping[str, str],
    ) -> None:
        super().__init__(scope, id_)
        self.channels = [
            MonitoringNotificationChannel(
                self,
                f"email-{i}",
                project=project,
                display_name=f"nanochat {env}: {email}",
                type="email",
                labels={"email_address": email},
                user_labels=dict(labels),
            )
            for i, email in enumerate(alert_emails)
        ]
        self.ids = [channel.id for channel in self.channels]


class Monitoring(Construct):
    """A PromQL policy per rule in `spec.rules` notifying `channel_ids`, and an optional uptime check of the
    Cloud Run service `service_name`."""

    def __init__(
        self,
        scope: Construct,
        id_: str,
        spec: MonitoringInput,
        *,
        project: str,
        project_number: str,
        env: str,
        channel_ids: Sequence[str],
        service_name: str,
        service_location: str,
        service_url: str,
        labels: Mapping[str, str],
    ) -> None:
        super().__init__(scope, id_)
        channel_ids = list(channel_ids)
        service_is_public, uptime_check_period_s = spec.service_is_public, spec.uptime_check_period_s

        self.alert_policies = []
        for rule in alerting_rules(list(spec.rules), scales_to_zero=spec.scales_to_zero, traced=spec.traced):
            emailed = rule.severity == "critical" or spec.notify_warnings
            interval = rule.group_interval_seconds or spec.evaluation_interval_s
            if interval % 30:
                raise ValueError(
                    f"{rule.source}: group {rule.group}: Cloud Monitoring evaluates every multiple of 30 s, "
                    f"not every {interval} s"
                )
            self.alert_policies.append(
                MonitoringAlertPolicy(
                    self,
                    f"alert-{rule.name}",
                    project=project,
                    display_name=rule.name,
                    combiner="OR",
                    severity=rule.policy_severity,
                    notification_channels=channel_ids if emailed else [],
                    # who notifies instead, for readers and for the policy checks (infra/checks.py)
                    user_labels={
                        **labels,
                        "severity": rule.severity,
                        **({} if emailed else GRAFANA_NOTIFIES),
                    },
                    documentation=_documentation(rule),
                    alert_strategy={"auto_close": AUTO_CLOSE},
                    conditions=[
                        MonitoringAlertPolicyConditions(
                            display_name=rule.name,
                            condition_prometheus_query_language={
                                "query": rule.expr,
                                "duration": f"{rule.for_seconds}s",
                                "evaluation_interval": f"{interval}s",
                                "alert_rule": rule.name,
                                "rule_group": rule.group,
                                "labels": dict(rule.labels),
                            },
                        )
                    ],
                )
            )

        self.uptime_check = None
        if uptime_check_period_s:
            if not service_is_public:
                run_service_role(
                    self,
                    "uptime-invoker",
                    project=project,
                    location=service_location,
                    service=service_name,
                    member=f"serviceAccount:service-{project_number}@gcp-sa-monitoring-notification.iam.gserviceaccount.com",
                )
            self.uptime_check = MonitoringUptimeCheckConfig(
                self,
                "uptime",
                project=project,
                display_name=f"nanochat {env} {HEALTH_PATH}",
                period=f"{uptime_check_period_s}s",
                timeout="10s",
                user_labels=dict(labels),
                monitored_resource={
                    "type": "uptime_url",
                    "labels": {"project_id": project, "host": Fn.replace(service_url, "https://", "")},
                },
                http_check={
                    "path": HEALTH_PATH,
                    "port": 443,
                    "use_ssl": True,
                    "validate_ssl": True,
                    "request_method": "GET",
                    "accepted_response_status_codes": [
                        MonitoringUptimeCheckConfigHttpCheckAcceptedResponseStatusCodes(status_value=200)
                    ],
                    **({} if service_is_public else {"service_agent_authentication": {"type": "OIDC_TOKEN"}}),
                },
            )
            check_filter = (
                'metric.type="monitoring.googleapis.com/uptime_check/check_passed" AND '
                f'metric.label.check_id="{self.uptime_check.uptime_check_id}" AND resource.type="uptime_url"'
            )
            MonitoringAlertPolicy(
                self,
                "alert-uptime",
                project=project,
                display_name=f"nanochat {env} {HEALTH_PATH} uptime check failing",
                combiner="OR",
                severity="CRITICAL",
                notification_channels=channel_ids,
                user_labels={**labels, "severity": "critical"},
                documentation={
                    "content": f"The uptime check of {HEALTH_PATH} fails from more than one region.",
                    "mime_type": "text/markdown",
                },
                conditions=[
                    MonitoringAlertPolicyConditions(
                        display_name="uptime check failing",
                        condition_threshold={
                            "filter": check_filter,
                            "comparison": "COMPARISON_GT",
                            "threshold_value": 1,
                            "duration": "300s",
                            "trigger": {"count": 1},
                            "aggregations": [
                                MonitoringAlertPolicyConditionsConditionThresholdAggregations(
                                    alignment_period="1200s",
                                    per_series_aligner="ALIGN_NEXT_OLDER",
                                    cross_series_reducer="REDUCE_COUNT_FALSE",
                                    group_by_fields=["resource.label.*"],
                                )
                            ],
                        },
                    )
                ],
            )
