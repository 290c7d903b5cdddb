"""The query helpers (tests/promql_support.py) the alert, dashboard and observe tests and the live-Prometheus
test build on."""

from __future__ import annotations

import json

import pytest

from tests.promql_support import (
    UnknownVariable,
    alert_rules,
    dashboard_queries,
    documented_metrics,
    exposed_series_names,
    grafana_values,
    substitute,
)


def test_every_variable_form_is_substituted():
    query = 'rate(x{job="$job",a="${job}",b="[[job]]",c="${job:raw}"}[$__rate_interval]) * $__range_s'
    assert substitute(query, grafana_values(job="j", rate_interval="2m", range_="1h")) == (
        'rate(x{job="j",a="j",b="j",c="j"}[2m]) * 3600'
    )


def test_unknown_variable_is_a_clear_error():
    with pytest.raises(UnknownVariable, match=r"\$instance"):
        substitute('up{instance="$instance"}', grafana_values())


def test_bad_duration_is_a_clear_error():
    with pytest.raises(ValueError, match="expected a duration"):
        grafana_values(range_="five minutes")


def test_dashboard_queries_include_collapsed_rows(tmp_path):
    dashboard = {
        "panels": [
            {"type": "timeseries", "title": "top", "targets": [{"expr": 'up{job="$job"}'}]},
            {
                "type": "row",
                "title": "folded",
                "collapsed": True,
                "panels": [{"type": "stat", "title": "inner", "targets": [{"expr": "sum(x[$__interval])"}]}],
            },
            {"type": "text", "title": "no queries"},
        ]
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dashboard))
    assert dashboard_queries(path, interval="30s") == [
        ("top", 'up{job="nanochat"}'),
        ("inner", "sum(x[30s])"),
    ]


def test_alert_rules_reads_only_alerting_rules(tmp_path):
    (tmp_path / "a.rules.yaml").write_text(
        "groups:\n- name: g\n  rules:\n  - record: r\n    expr: up\n  - alert: A\n    expr: up == 0\n"
    )
    (tmp_path / "ignored.yaml").write_text("not: rules\n")
    assert alert_rules(tmp_path) == [{"alert": "A", "expr": "up == 0"}]


def test_metric_catalog_is_read_from_the_catalog():
    metrics = documented_metrics()
    assert metrics["nanochat_requests_total"] == "counter"
    assert metrics["nanochat_time_to_first_token_seconds"] == "histogram"
    assert metrics["nanochat_queue_depth"] == "gauge"


def test_exposed_series_names_expand_histograms():
    names = exposed_series_names(documented_metrics())
    assert {"nanochat_requests_total", "nanochat_queue_depth"} <= names
    assert {f"nanochat_batch_size_{part}" for part in ("bucket", "sum", "count")} <= names
    assert "nanochat_batch_size" not in names
