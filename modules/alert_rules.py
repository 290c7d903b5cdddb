"""Read Prometheus alerting rule files (`alerts/*.rules.yaml`) as data for Cloud Monitoring and Grafana.

The rule files are the one source of truth for alerts: promtool tests them, a real Prometheus evaluates
them, `modules.monitoring` turns each alerting rule into one PromQL alert policy with the same name,
expression, duration and severity, and `grafana_alerting` below turns them into Grafana-managed alert rules
(file provisioning). Recording rules are not supported: Cloud Monitoring evaluates only the alert
expression, so an alert that reads a recorded series would never fire; that is an error here.

The annotations use Prometheus' templates (`{{ $labels.job }}`, `{{ $value | humanize }}`), which promtool
checks; `cloud_monitoring_text` and `grafana_text` translate them for the other two readers, and fail on a
template they have no translation for rather than showing it raw.

Pure Python (no cdktf), so it is cheap to import and test.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from app.observability.catalog import TRACE_EXPORT

# Prometheus duration syntax (https://prometheus.io/docs/prometheus/latest/configuration/configuration/)
_DURATION = re.compile(r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")
_UNIT_SECONDS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)
_SEVERITIES = {"critical": "CRITICAL", "error": "ERROR", "warning": "WARNING"}
_ALERT_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_TEMPLATE = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.DOTALL)
_LABEL_TEMPLATE = re.compile(r"^\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)$")
_VALUE_TEMPLATE = re.compile(r"^\$value(\s*\|\s*[a-zA-Z]+)?$")
_ABSENT = re.compile(r"(?<![\w:])absent(_over_time)?\s*\(")
# Cloud Monitoring's documentation variables have no "value of the condition"; the incident shows it.
CLOUD_MONITORING_VALUE = "see the incident's chart"


class AlertRuleError(ValueError):
    """A rule file is missing, malformed, or uses something Cloud Monitoring cannot evaluate."""


@dataclass(frozen=True)
class AlertRule:
    name: str
    expr: str
    for_seconds: int
    severity: str  # critical | error | warning (the rule's `severity` label)
    group: str
    group_interval_seconds: int | None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def policy_severity(self) -> str:
        """Cloud Monitoring's name for the severity (CRITICAL, ERROR, WARNING)."""
        return _SEVERITIES[self.severity]

    @property
    def fires_on_absence(self) -> bool:
        """True for `absent(...)` alerts: they fire when no target exists, which is normal for a service
        that scales to zero."""
        return bool(_ABSENT.search(self.expr))

    @property
    def reads_trace_export(self) -> bool:
        """True for alerts on the trace exporter's metric, which exists only where tracing is on."""
        return bool(re.search(rf"\b{TRACE_EXPORT.name}\b", self.expr))


def alerting_rules(rules: list[AlertRule], *, scales_to_zero: bool, traced: bool = False) -> list[AlertRule]:
    """The rules to alert on for a service: without the absence alerts where it scales to zero (there "no
    target" is the idle state, and the uptime check and `NanochatTargetDown` cover a service that fails),
    and without the trace-export alerts where it exports no traces (`traced`: its metric would never be
    written, and Cloud Monitoring refuses a PromQL condition on a metric it has never seen)."""
    return [
        rule
        for rule in rules
        if not (scales_to_zero and rule.fires_on_absence) and (traced or not rule.reads_trace_export)
    ]


def _translate(text: str, label: str, value: str, reader: str) -> str:
    def replace(match: re.Match) -> str:
        inner = match[1]
        if found := _LABEL_TEMPLATE.match(inner):
            return label.format(name=found[1])
        if found := _VALUE_TEMPLATE.match(inner):
            return value.format(pipe=found[1] or "")
        raise AlertRuleError(f"{reader} has no equivalent of the template {match[0]!r} in: {text}")

    return _TEMPLATE.sub(replace, text)


def cloud_monitoring_text(text: str) -> str:
    """`text` with Prometheus templates as Cloud Monitoring documentation variables: `{{ $labels.job }}`
    becomes `${metric.label.job}`; `{{ $value ... }}` (no such variable) a pointer to the incident's chart.
    https://cloud.google.com/monitoring/alerts/doc-variables"""
    return _translate(text, "${{metric.label.{name}}}", CLOUD_MONITORING_VALUE, "Cloud Monitoring")


def grafana_text(text: str, ref_id: str = "A") -> str:
    """`text` for a Grafana-managed rule: `$labels` as is; `$value` as `$values.<ref_id>.Value`, the value of
    the query (Grafana's own `$value` would be the condition's)."""
    value = "{{{{ $values." + ref_id + ".Value{pipe} }}}}"
    return _translate(text, "{{{{ $labels.{name} }}}}", value, "Grafana")


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as `5m`, `1h30m` or `30s`."""
    match = _DURATION.match(str(text).strip())
    if not text or not match or not match.group(0):
        raise AlertRuleError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * unit for n, unit in zip(match.groups()[1::2], _UNIT_SECONDS, strict=True) if n)


def _rules_in(path: Path, text: str | None = None) -> list[AlertRule]:
    try:
        data = yaml.safe_load(path.read_text() if text is None else text)
    except yaml.YAMLError as exc:
        raise AlertRuleError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
        raise AlertRuleError(f"{path}: expected a Prometheus rule file with a `groups` list")
    recorded = {
        r["record"]
        for g in data["groups"]
        for r in g.get("rules") or []
        if isinstance(r, dict) and "record" in r
    }
    rules = []
    for group in data["groups"]:
        group_name = group.get("name")
        if not group_name:
            raise AlertRuleError(f"{path}: a group has no name")
        interval = int(parse_duration(group["interval"])) if group.get("interval") else None
        for rule in group.get("rules") or []:
            if "record" in rule:
                continue
            where = f"{path}: group {group_name}: alert {rule.get('alert')!r}"
            name, expr = rule.get("alert"), str(rule.get("expr", "")).strip()
            if not name or not _ALERT_NAME.match(name):
                raise AlertRuleError(f"{where}: alert name must match {_ALERT_NAME.pattern}")
            if not expr:
                raise AlertRuleError(f"{where}: empty expr")
            used = sorted(r for r in recorded if re.search(rf"(?<![\w:]){re.escape(r)}(?![\w:])", expr))
            if used:
                raise AlertRuleError(
                    f"{where}: reads recording rule(s) {', '.join(used)}, which Cloud Monitoring does "
                    "not evaluate; inline their expressions"
                )
            labels = {str(k): str(v) for k, v in (rule.get("labels") or {}).items()}
            severity = labels.get("severity")
            if severity not in _SEVERITIES:
                raise AlertRuleError(f"{where}: labels.severity must be one of {sorted(_SEVERITIES)}")
            rules.append(
                AlertRule(
                    name=name,
                    expr=expr,
                    for_seconds=int(parse_duration(rule.get("for", "0s"))),
                    severity=severity,
                    group=group_name,
                    group_interval_seconds=interval,
                    labels=labels,
                    annotations={str(k): str(v) for k, v in (rule.get("annotations") or {}).items()},
                    source=f"{path.parent.name}/{path.name}",
                )
            )
    return rules


def parse_alert_rules(text: str, path: str | Path) -> list[AlertRule]:
    """The alerting rules of a rule file's `text` (`path` names it in errors and in `AlertRule.source`)."""
    return _rules_in(Path(path), text)


def load_alert_rules(rules_dir: str | Path) -> list[AlertRule]:
    """Every alerting rule in `rules_dir/*.rules.yaml`, in file then rule order; names must be unique."""
    files = sorted(Path(rules_dir).glob("*.rules.yaml"))
    if not files:
        raise AlertRuleError(f"{rules_dir}: no Prometheus rule files (*.rules.yaml)")
    rules = [rule for path in files for rule in _rules_in(path)]
    seen: dict[str, str] = {}
    for rule in rules:
        if rule.name in seen:
            raise AlertRuleError(f"alert {rule.name} is defined twice ({seen[rule.name]}, {rule.source})")
        seen[rule.name] = rule.source
    return rules


# --- Grafana-managed alert rules (Grafana's file provisioning, apiVersion 1) ---
# https://grafana.com/docs/grafana/latest/alerting/set-up/provision-alerting-resources/file-provisioning/
GRAFANA_FOLDER = "nanochat"
GRAFANA_CONTACT_POINT = "nanochat-email"
# Grafana-managed rules email the alerts that Cloud Monitoring does not page (docs/observability.md): the
# critical ones page through Cloud Monitoring alone, so no alert reaches the same inbox twice.
GRAFANA_SEVERITIES = ("warning",)
# Prometheus semantics: a rule fires for every series its expression returns. Grafana's condition is a
# math expression that is true for any value the query returns (including 0, NaN and infinities).
_ANY_SAMPLE = "is_number($A) || is_nan($A) || is_inf($A)"
_RULE_UID = re.compile(r"^[a-zA-Z0-9_-]{1,40}$")


def _grafana_rule(rule: AlertRule, datasource_uid: str) -> dict:
    from grafana_foundation_sdk.builders import alerting, expr, prometheus
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.alerting import RelativeTimeRange

    uid = rule.name.lower()
    if not _RULE_UID.match(uid):
        raise AlertRuleError(f"{rule.source}: alert {rule.name}: a Grafana rule uid is 1-40 of [a-zA-Z0-9_-]")
    built = (
        alerting.Rule(rule.name)
        .uid(uid)
        .condition("B")
        .queries(
            [
                alerting.Query("A")
                .datasource_uid(datasource_uid)
                .relative_time_range(RelativeTimeRange(from_val=600, to=0))
                .model(prometheus.Dataquery().ref_id("A").expr(rule.expr).instant()),
                alerting.Query("B")
                .datasource_uid("__expr__")
                .model(expr.TypeMath().ref_id("B").expression(_ANY_SAMPLE)),
            ]
        )
        .for_val(f"{rule.for_seconds}s")
        .no_data_state("OK")  # no series: nothing is wrong (as in Prometheus)
        .exec_err_state("Error")  # a failing query is an alert of its own (DatasourceError)
        .labels(dict(rule.labels))
        .annotations({key: grafana_text(text) for key, text in rule.annotations.items()})
        .is_paused(False)
        .build()
    )
    data = json.loads(json.dumps(built, cls=JSONEncoder))
    # The SDK models the HTTP API's rule; file provisioning takes the folder and group from the group.
    for api_only in ("folderUID", "orgID", "ruleGroup"):
        data.pop(api_only, None)
    return data


def grafana_alerting(
    rules: list[AlertRule], *, datasource_uid: str, emails: list[str], interval_s: int
) -> dict:
    """Grafana's alerting provisioning file: a rule group per rule group of `rules` (those of
    GRAFANA_SEVERITIES), and, when there are `emails`, an email contact point and the notification policy
    that routes every alert to it. The rules query the Prometheus datasource `datasource_uid`."""
    from grafana_foundation_sdk.builders import alerting
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    groups: dict[str, list[AlertRule]] = {}
    for rule in rules:
        if rule.severity in GRAFANA_SEVERITIES:
            groups.setdefault(rule.group, []).append(rule)
    document: dict = {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": 1,
                "name": name,
                "folder": GRAFANA_FOLDER,
                "interval": f"{members[0].group_interval_seconds or interval_s}s",
                "rules": [_grafana_rule(rule, datasource_uid) for rule in members],
            }
            for name, members in groups.items()
        ],
    }
    if emails:
        contact_point = (
            alerting.ContactPoint()
            .uid(GRAFANA_CONTACT_POINT)
            .name(GRAFANA_CONTACT_POINT)
            .type("email")
            .settings({"addresses": ";".join(emails), "singleEmail": False})
            .disable_resolve_message(False)
            .build()
        )
        receiver = json.loads(json.dumps(contact_point, cls=JSONEncoder))
        policy = (
            alerting.NotificationPolicy()
            .receiver(GRAFANA_CONTACT_POINT)
            .group_by(["grafana_folder", "alertname"])
            .repeat_interval("4h")
            .build()
        )
        document["contactPoints"] = [
            {"orgId": 1, "name": receiver.pop("name"), "receivers": [receiver]},
        ]
        document["policies"] = [{"orgId": 1, **json.loads(json.dumps(policy, cls=JSONEncoder))}]
    return document
