"""Grafana-managed alert rules: generated from alerts/*.rules.yaml, valid for Grafana's file provisioning
(a JSON schema written from Grafana's docs and parser), their queries valid PromQL over the same series."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

from alerts import build
from modules.alert_rules import (
    GRAFANA_CONTACT_POINT,
    GRAFANA_SEVERITIES,
    grafana_alerting,
    load_alert_rules,
    parse_duration,
)
from tests.promql_support import GRAFANA_ALERTING, ROOT, alert_rules, grafana_rule_queries

SCHEMA = json.loads(Path(__file__).with_name("grafana_alerting.schema.json").read_text())
LOCAL_DATASOURCES = ROOT / "observe" / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    Draft202012Validator.check_schema(SCHEMA)
    return Draft202012Validator(SCHEMA)


@pytest.fixture(scope="module")
def cloud_document() -> dict:
    """What modules/grafana.py provisions: the same rules with an email contact point and policy."""
    return grafana_alerting(
        load_alert_rules(ROOT / "alerts"),
        datasource_uid="managed-prometheus",
        emails=["oncall@example.com", "team@example.com"],
        interval_s=60,
    )


def errors(validator: Draft202012Validator, document: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_local_and_cloud_provisioning_files_match_grafanas_schema(validator, cloud_document):
    assert errors(validator, yaml.safe_load(GRAFANA_ALERTING.read_text())) == []
    assert errors(validator, cloud_document) == []


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("groups", 0, "rules", 0, "condition"), None, "'condition' is a required property"),
        (("groups", 0, "rules", 0, "uid"), "a" * 41, "does not match"),
        (("groups", 0, "interval"), "1 minute", "does not match"),
        (("contactPoints", 0, "receivers", 0, "settings", "addresses"), "", "does not match"),
        (("groups", 0, "rules", 0, "noDataState"), "Silent", "is not one of"),
    ],
)
def test_the_schema_rejects_what_grafana_rejects(validator, cloud_document, path, value, message):
    document = copy.deepcopy(cloud_document)
    *parents, last = path
    node = document
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    assert any(message in error for error in errors(validator, document)), errors(validator, document)


def test_grafana_rules_are_the_rule_files_alerts_grafana_emails(cloud_document):
    rules = {rule["alert"]: rule for rule in alert_rules()}
    expected = {name for name, rule in rules.items() if rule["labels"]["severity"] in GRAFANA_SEVERITIES}
    assert expected and "NanochatTargetAbsent" not in expected  # critical ones page via Cloud Monitoring
    provisioned = [rule for group in cloud_document["groups"] for rule in group["rules"]]
    assert {rule["title"] for rule in provisioned} == expected
    for rule in provisioned:
        source = rules[rule["title"]]
        refs = [query["refId"] for query in rule["data"]]
        assert rule["condition"] in refs and len(refs) == len(set(refs)), rule["title"]
        [query] = [q for q in rule["data"] if q["datasourceUid"] != "__expr__"]
        assert query["datasourceUid"] == "managed-prometheus"
        assert query["model"]["expr"] == source["expr"].strip() and query["model"]["instant"] is True
        assert rule["for"] == f"{parse_duration(source['for']):g}s"
        assert rule["labels"] == source["labels"]
        assert rule["noDataState"] == "OK"  # Prometheus semantics: no series, no alert


def test_grafana_annotations_use_the_query_value_not_the_conditions(cloud_document):
    for group in cloud_document["groups"]:
        for rule in group["rules"]:
            for key, text in rule["annotations"].items():
                assert not re.search(r"\{\{\s*\$value\b", text), f"{rule['title']}.{key}: {text}"
    descriptions = [r["annotations"]["description"] for g in cloud_document["groups"] for r in g["rules"]]
    assert any("{{ $values.A.Value | humanizePercentage }}" in text for text in descriptions)


def test_email_contact_point_and_policy_route_every_alert_to_it(cloud_document):
    [contact_point] = cloud_document["contactPoints"]
    [receiver] = contact_point["receivers"]
    assert contact_point["name"] == GRAFANA_CONTACT_POINT and receiver["type"] == "email"
    assert receiver["settings"]["addresses"] == "oncall@example.com;team@example.com"
    [policy] = cloud_document["policies"]
    assert policy["receiver"] == GRAFANA_CONTACT_POINT and "routes" not in policy


def test_local_file_queries_the_local_prometheus_datasource_and_has_no_contact_point():
    document = yaml.safe_load(GRAFANA_ALERTING.read_text())
    [datasource] = yaml.safe_load(LOCAL_DATASOURCES.read_text())["datasources"]
    uids = {q["datasourceUid"] for g in document["groups"] for r in g["rules"] for q in r["data"]}
    assert uids == {datasource["uid"], "__expr__"}
    assert "contactPoints" not in document and "policies" not in document  # no SMTP locally


def test_check_fails_on_a_stale_grafana_file(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "nanochat.yaml"
    stale.write_text(GRAFANA_ALERTING.read_text().replace("noDataState: OK", "noDataState: Alerting"))
    monkeypatch.setattr(build, "GRAFANA_OUTPUT", stale)
    assert build.main(["--check"]) == 1
    assert "is stale" in capsys.readouterr().err


def test_every_grafana_query_is_valid_promql(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: apt-get install -y prometheus")
    queries = grafana_rule_queries()
    assert queries
    rules = [{"record": f"grafana:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
    path = tmp_path / "grafana.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
