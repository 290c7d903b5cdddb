"""modules.alert_rules: the Prometheus rule files read as data for Cloud Monitoring alert policies."""

from __future__ import annotations

import re
import textwrap

import pytest
import yaml

from infra.config import ROOT
from modules.alert_rules import (
    CLOUD_MONITORING_VALUE,
    AlertRuleError,
    alerting_rules,
    cloud_monitoring_text,
    grafana_text,
    load_alert_rules,
    parse_alert_rules,
    parse_duration,
)

ALERTS_DIR = ROOT / "alerts"


def write_rules(folder, text, name="test.rules.yaml"):
    (folder / name).write_text(textwrap.dedent(text))
    return folder


def test_every_alert_in_the_repository_is_read_with_its_fields():
    raw = [
        (group["name"], rule)
        for path in sorted(ALERTS_DIR.glob("*.rules.yaml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    rules = load_alert_rules(ALERTS_DIR)
    assert len(raw) >= 1 and len(rules) == len(raw)
    for rule, (group, source) in zip(rules, raw, strict=True):
        assert rule.name == source["alert"] and rule.group == group
        assert rule.expr == source["expr"].strip()
        assert rule.for_seconds == parse_duration(source.get("for", "0s"))
        assert rule.severity == source["labels"]["severity"]
        assert rule.annotations["runbook_url"] == source["annotations"]["runbook_url"]
        assert rule.source.startswith("alerts/") and rule.source.endswith(".rules.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("1d", 86400), ("1w", 604800), ("0s", 0), ("1500ms", 1.5)],
)
def test_prometheus_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 m", "m5", "1.5m", "5M"])
def test_bad_durations_are_errors(text):
    with pytest.raises(AlertRuleError, match="not a Prometheus duration"):
        parse_duration(text)


def test_group_interval_and_defaults(tmp_path):
    write_rules(
        tmp_path,
        """\
        groups:
        - name: g
          interval: 1m
          rules:
          - alert: A
            expr: up == 0
            labels: {severity: warning}
        """,
    )
    (rule,) = load_alert_rules(tmp_path)
    assert (rule.group_interval_seconds, rule.for_seconds, rule.policy_severity) == (60, 0, "WARNING")


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            "- record: job:errors:rate5m\n  expr: rate(errors[5m])\n"
            "- alert: A\n  expr: job:errors:rate5m > 1\n  labels: {severity: critical}\n",
            "reads recording rule(s) job:errors:rate5m",
        ),
        ("- alert: A\n  expr: up == 0\n", "labels.severity must be one of"),
        ("- alert: A\n  expr: up == 0\n  labels: {severity: page}\n", "labels.severity must be one of"),
        ("- alert: A\n  expr: ''\n  labels: {severity: critical}\n", "empty expr"),
        ("- alert: 'bad name'\n  expr: up\n  labels: {severity: critical}\n", "alert name must match"),
        (
            "- alert: A\n  expr: up\n  for: soon\n  labels: {severity: critical}\n",
            "not a Prometheus duration",
        ),
    ],
)
def test_rules_cloud_monitoring_cannot_use_are_errors(tmp_path, rules, message):
    body = "groups:\n- name: g\n  rules:\n" + textwrap.indent(rules, "  ")
    (tmp_path / "x.rules.yaml").write_text(body)
    with pytest.raises(AlertRuleError, match=re.escape(message)):
        load_alert_rules(tmp_path)


def test_a_recording_rule_name_inside_another_metric_name_is_not_a_use(tmp_path):
    rules = (
        "- record: errors\n  expr: rate(x[5m])\n"
        "- alert: A\n  expr: http_errors_total > 1\n  labels: {severity: critical}\n"
    )
    (tmp_path / "x.rules.yaml").write_text("groups:\n- name: g\n  rules:\n" + textwrap.indent(rules, "  "))
    assert [r.name for r in load_alert_rules(tmp_path)] == ["A"]


def test_duplicate_alert_names_across_files_are_errors(tmp_path):
    rule = "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n    labels: {severity: warning}\n"
    (tmp_path / "a.rules.yaml").write_text(rule)
    (tmp_path / "b.rules.yaml").write_text(rule)
    with pytest.raises(AlertRuleError, match=r"alert A is defined twice"):
        load_alert_rules(tmp_path)


def test_a_folder_without_rule_files_is_an_error(tmp_path):
    (tmp_path / "rules.yml").write_text("groups: []\n")  # wrong suffix: not a rule file here
    with pytest.raises(AlertRuleError, match=r"no Prometheus rule files"):
        load_alert_rules(tmp_path)


def test_a_file_that_is_not_a_rule_file_is_an_error(tmp_path):
    (tmp_path / "x.rules.yaml").write_text("alerts: []\n")
    with pytest.raises(AlertRuleError, match="expected a Prometheus rule file"):
        load_alert_rules(tmp_path)


def test_prometheus_templates_become_cloud_monitoring_variables():
    text = "{{ $labels.instance }} (job {{$labels.job}}) is slow. Current value: {{ $value | humanize }}."
    assert cloud_monitoring_text(text) == (
        "${metric.label.instance} (job ${metric.label.job}) is slow. Current value: "
        f"{CLOUD_MONITORING_VALUE}."
    )


def test_prometheus_templates_for_grafana_read_the_querys_value():
    text = "{{ $labels.job }}: {{ $value | humanizePercentage }} ({{ $value }})"
    assert grafana_text(text) == (
        "{{ $labels.job }}: {{ $values.A.Value | humanizePercentage }} ({{ $values.A.Value }})"
    )


@pytest.mark.parametrize("translate", [cloud_monitoring_text, grafana_text])
def test_a_template_without_translation_is_an_error_not_raw_text(translate):
    with pytest.raises(AlertRuleError, match=re.escape("{{ $externalURL }}")):
        translate("see {{ $externalURL }}")


def test_no_repository_alert_keeps_a_prometheus_template_for_cloud_monitoring():
    for rule in load_alert_rules(ALERTS_DIR):
        for key, text in rule.annotations.items():
            assert "{{" not in cloud_monitoring_text(text), f"{rule.name}.{key}"


def test_absence_alerts_are_left_out_where_the_service_scales_to_zero():
    rules = load_alert_rules(ALERTS_DIR)
    absent = {rule.name for rule in rules if rule.fires_on_absence}
    assert absent == {"NanochatTargetAbsent"}
    everything = {r.name for r in rules}
    assert {r.name for r in alerting_rules(rules, scales_to_zero=False, traced=True)} == everything
    assert {r.name for r in alerting_rules(rules, scales_to_zero=True, traced=True)} == everything - absent


def test_trace_export_alerts_only_where_the_service_exports_traces():
    """Cloud Monitoring refuses a PromQL condition on a metric never written: without traces, the
    trace exporter's counter never is."""
    rules = load_alert_rules(ALERTS_DIR)
    traces = {rule.name for rule in rules if rule.reads_trace_export}
    assert traces == {"NanochatTraceExportFailing"}
    names = {r.name for r in rules}
    assert {r.name for r in alerting_rules(rules, scales_to_zero=False)} == names - traces
    assert {r.name for r in alerting_rules(rules, scales_to_zero=False, traced=True)} == names


def test_rule_text_parses_like_a_rule_file(tmp_path):
    text = "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n    labels: {severity: warning}\n"
    write_rules(tmp_path, text, "x.rules.yaml")
    assert parse_alert_rules(text, tmp_path / "x.rules.yaml") == load_alert_rules(tmp_path)
