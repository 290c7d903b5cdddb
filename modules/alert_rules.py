"""Read Prometheus alerting rule files (`alerts/*.rules.yaml`) as data for Cloud Monitoring alert policies.

The rule files are the one source of truth for alerts: promtool tests them, a real Prometheus evaluates
them, and `modules.monitoring` turns each alerting rule into one PromQL alert policy with the same name,
expression, duration and severity. Recording rules are not supported: Cloud Monitoring evaluates only the
alert expression, so an alert that reads a recorded series would never fire; that is an error here.

Pure Python (no cdktf), so it is cheap to import and test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# Prometheus duration syntax (https://prometheus.io/docs/prometheus/latest/configuration/configuration/)
_DURATION = re.compile(r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")
_UNIT_SECONDS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)
_SEVERITIES = {"critical": "CRITICAL", "error": "ERROR", "warning": "WARNING"}
_ALERT_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


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


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as `5m`, `1h30m` or `30s`."""
    match = _DURATION.match(str(text).strip())
    if not text or not match or not match.group(0):
        raise AlertRuleError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * unit for n, unit in zip(match.groups()[1::2], _UNIT_SECONDS, strict=True) if n)


def _rules_in(path: Path) -> list[AlertRule]:
    try:
        data = yaml.safe_load(path.read_text())
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
