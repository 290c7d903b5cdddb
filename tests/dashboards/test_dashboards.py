"""The Grafana dashboard: generated, complete, every query valid PromQL over documented metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from dashboards import build
from tests.promql_support import (
    DASHBOARDS_DIR,
    ROOT,
    dashboard_queries,
    documented_metrics,
    exposed_series_names,
    selectors,
)

DASHBOARD = DASHBOARDS_DIR / "nanochat.json"
# What the dashboard must show -> the panel that shows it.
REQUIRED_PANELS = {
    "request rate": "Request rate by route",
    "error rate": "Error rate (5xx share)",
    "p50/p95/p99 latency": "Request latency",
    "TTFT": "Time to first token",
    "TPOT": "Time per output token",
    "tokens/s": "Tokens per second",
    "queue depth": "Queue depth",
    "active sequences": "Active sequences",
    "batch size": "Batch size",
    "rejections": "Rejections by reason",
    "CPU": "CPU",
    "RAM": "Memory",
    "GPU": "GPU utilization",
    "GPU memory": "GPU memory",
    "cost per million output tokens": "Cost per million output tokens",
    "retrieval latency": "Retrieval latency",
    "retrieval cache hits": "Retrieval cache hit rate",
    "retrieved and dropped chunks": "Retrieved chunks",
}
QUANTILE_PANELS = (
    "Request latency",
    "Time to first token",
    "Time per output token",
    "Queue wait",
    "Retrieval latency",
)


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def panels(dashboard) -> dict[str, dict]:
    return {panel["title"]: panel for panel in dashboard["panels"] if panel["type"] != "row"}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: apt-get install -y prometheus")
    return path


def test_dashboard_is_up_to_date():
    result = subprocess.run(
        [sys.executable, "-m", "dashboards.build", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_dashboard(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "nanochat.json"
    stale.write_text(DASHBOARD.read_text().replace("Queue depth", "Queue length"))
    monkeypatch.setattr(build, "OUTPUT", stale)
    assert build.main(["--check"]) == 1
    assert "is stale" in capsys.readouterr().err


def test_dashboard_is_importable(dashboard):
    assert dashboard["uid"] == build.UID and dashboard["title"]
    assert dashboard["schemaVersion"] >= 39
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == "query"
    assert variables["job"]["datasource"]["uid"] == "${datasource}"
    assert variables["job"]["current"]["value"] == "nanochat"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and 0 not in ids, "panel ids must be unique and set"


def test_panels_do_not_overlap(dashboard):
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_every_panel_has_title_unit_description_and_queries(panels):
    for title, panel in panels.items():
        assert title.strip(), panel
        assert panel.get("description", "").strip(), f"{title}: no description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(refs), f"{title}: refIds {refs}"
        assert all(target["expr"].strip() for target in panel["targets"]), title


@pytest.mark.parametrize(("need", "title"), sorted(REQUIRED_PANELS.items()))
def test_required_panel_is_present(panels, need, title):
    assert title in panels, f"no panel for {need}"


@pytest.mark.parametrize("title", QUANTILE_PANELS)
def test_latency_panels_show_p50_p95_p99(panels, title):
    targets = panels[title]["targets"]
    assert [target["legendFormat"] for target in targets] == ["p50", "p95", "p99"]
    for quantile, target in zip(("0.5", "0.95", "0.99"), targets, strict=True):
        assert target["expr"].startswith(f"histogram_quantile({quantile}, sum by (le) (rate("), target["expr"]


def test_slo_lines_come_from_the_slo_file(panels):
    slo = yaml.safe_load((ROOT / "loadtest" / "slo.yaml").read_text())
    expected = {
        "Request latency": slo["latency_p95_s"],
        "Time to first token": slo["ttft_p95_s"],
        "Time per output token": slo["tpot_p95_s"],
        "Error rate (5xx share)": slo["error_rate_max"],
        "429 share (queue full)": slo["rejection_rate_max"],
    }
    for title, limit in expected.items():
        steps = panels[title]["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [step["value"] for step in steps] == [None, limit], title


def _check_as_recording_rules(promtool: str, tmp_path, queries: list[tuple[str, str]]):
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)]
    path = tmp_path / "queries.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)


def test_every_query_is_valid_promql(promtool, tmp_path):
    queries = dashboard_queries(DASHBOARD)
    result = _check_as_recording_rules(promtool, tmp_path, queries)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_promql_check_catches_a_broken_query(promtool, tmp_path):
    result = _check_as_recording_rules(promtool, tmp_path, [("broken", "sum(rate(x[5m])")])
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


def test_every_query_reads_documented_metrics_of_the_selected_job():
    known = exposed_series_names(documented_metrics()) | {"up"}
    for title, query in dashboard_queries(DASHBOARD, job="the-job"):
        for metric, matchers in selectors(query):
            assert metric in known, f"{title}: {metric} is not in docs/observability.md"
            assert matchers.get("job") == '="the-job"', f"{title}: {metric} ignores the job variable"


def test_cost_panel_computes_dollars_per_million_tokens(promtool, tmp_path):
    """Two instances at $0.18/h each generating 50 tokens/s each: $0.36 per 360,000 tokens = $1 per million.
    With no tokens generated the panel is empty rather than infinite."""
    [(_, cost)] = [
        q for q in dashboard_queries(DASHBOARD, rate_interval="5m") if q[0].startswith("Cost per m")
    ]
    rules = tmp_path / "none.rules.yaml"
    rules.write_text("groups: []\n")
    series = [
        {
            "series": f'nanochat_instance_price_dollars_per_hour{{job="nanochat",instance="{i}"}}',
            "values": "0.18x20",
        }
        for i in ("a", "b")
    ]
    busy = [
        {
            "series": f'nanochat_generation_tokens_total{{job="nanochat",instance="{i}"}}',
            "values": "0+3000x20",
        }
        for i in ("a", "b")
    ]
    idle = [{"series": 'nanochat_generation_tokens_total{job="nanochat",instance="a"}', "values": "500x20"}]
    check = f"round(({cost}) * 1e6) / 1e6"  # exact to a millionth of a dollar
    spec = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series + busy,
                "promql_expr_test": [
                    {"expr": check, "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": 1}]}
                ],
            },
            {
                "interval": "1m",
                "input_series": series + idle,
                "promql_expr_test": [{"expr": check, "eval_time": "10m", "exp_samples": []}],
            },
        ],
    }
    path = tmp_path / "cost.test.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_runbooks_name_existing_panels(panels):
    for path in sorted((ROOT / "docs" / "runbooks").glob("Nanochat*.md")):
        lines = [line for line in path.read_text().splitlines() if line.startswith("**Panels**")]
        assert len(lines) == 1, f"{path.name}: expected one **Panels** line"
        named = re.findall(r'"([^"]+)"', lines[0])
        assert named, path.name
        for title in named:
            assert title in panels, f'{path.name} names a panel "{title}" the dashboard does not have'
