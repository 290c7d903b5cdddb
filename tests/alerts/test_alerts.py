"""The alert rules: generated from the SLOs, valid for promtool, unit-tested, documented by runbooks."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import promql_parser
import pytest
import yaml

from alerts import build
from app.contract import METRICS_JOB
from tests.promql_support import (
    ROOT,
    alert_rules,
    documented_metrics,
    exposed_series_names,
    selectors,
)

RULE_FILES = sorted((ROOT / "alerts").glob("*.rules.yaml"))
UNIT_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.test.yaml"))
RUNBOOKS = ROOT / "docs" / "runbooks"
# Which SLO each threshold alert enforces; stated here independently of alerts/build.py.
SLO_OF_ALERT = {
    "NanochatHighErrorRate": "error_rate_max",
    "NanochatHighRequestLatency": "latency_p95_s",
    "NanochatHighTimeToFirstToken": "ttft_p95_s",
    "NanochatHighTimePerOutputToken": "tpot_p95_s",
    "NanochatQueueSaturated": "queue_saturation_max",
    "NanochatHighRejectionRate": "rejection_rate_max",
    "NanochatHighMemory": "memory_max_ratio",
}
REQUIRED_ALERTS = {
    *SLO_OF_ALERT,
    "NanochatTargetDown",
    "NanochatTargetAbsent",
    "NanochatNotReady",
    "NanochatNoTraffic",
    "NanochatTraceExportFailing",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not found: apt-get install -y prometheus")
    return path


@pytest.fixture(scope="module")
def rules() -> dict[str, dict]:
    return {rule["alert"]: rule for rule in alert_rules()}


def run_promtool(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)


def test_rule_file_is_up_to_date():
    result = subprocess.run(
        [sys.executable, "-m", "alerts.build", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_rule_file(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "nanochat.rules.yaml"
    stale.write_text(build.render(build.load_slos()).replace("> 0.01", "> 0.5"))
    monkeypatch.setattr(build, "OUTPUT", stale)
    assert build.main(["--check"]) == 1
    assert "is stale" in capsys.readouterr().err


ALL_ONES = "".join(f"{key}: 1\n" for key in build.SLO_KEYS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("latency_p95_s: 10\n", "missing ttft_p95_s"),
        ("[1, 2]\n", "expected a mapping"),
        (
            ALL_ONES.replace("latency_p95_s: 1", "latency_p95_s: fast"),
            "latency_p95_s must be a positive number",
        ),
        (
            ALL_ONES.replace("error_rate_max: 1", "error_rate_max: 0"),
            "error_rate_max must be a positive number",
        ),
        ("{unclosed\n", "is not valid YAML (line 2)"),
    ],
)
def test_bad_slo_file_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "slo.yaml"
    path.write_text(text)
    with pytest.raises(build.SloError, match=re.escape(message)):
        build.load_slos(path)


def test_promtool_accepts_the_rule_files(promtool):
    assert RULE_FILES, "no alerts/*.rules.yaml"
    result = run_promtool(promtool, "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool):
    result = run_promtool(promtool, "test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_quiet(rules):
    fires, quiet = set(), set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(rules) == REQUIRED_ALERTS
    assert fires == set(rules), f"no test where these fire: {set(rules) - fires}"
    assert quiet == set(rules), f"no test where these stay quiet: {set(rules) - quiet}"


def _unit_test_failures(promtool: str, tmp_path: Path, slo: dict[str, float]) -> str:
    """promtool's report on alerts/tests/ run against rules generated from `slo` instead of the real SLOs."""
    (tmp_path / "tests").mkdir()
    (tmp_path / "nanochat.rules.yaml").write_text(build.render(slo))
    for path in UNIT_TESTS:
        shutil.copy(path, tmp_path / "tests" / path.name)
    result = run_promtool(promtool, "test", "rules", *sorted(map(str, (tmp_path / "tests").iterdir())))
    assert result.returncode == 1, "the unit tests did not notice the changed thresholds"
    return result.stdout + result.stderr


def _failed_checks(report: str) -> dict[str, list[str]]:
    """alert name -> promtool's failure blocks for it."""
    failures: dict[str, list[str]] = {}
    for block in report.split("alertname: ")[1:]:
        failures.setdefault(block.split(",", 1)[0], []).append(block)
    return failures


@pytest.mark.slow
def test_unit_tests_catch_thresholds_raised(promtool, tmp_path):
    """With every SLO three times looser, each threshold alert's "fires" case must find no alert."""
    loose = {key: value * 3 for key, value in build.load_slos().items()}
    failures = _failed_checks(_unit_test_failures(promtool, tmp_path, loose))
    for alert in SLO_OF_ALERT:
        assert any("got:[]" in block for block in failures.get(alert, [])), alert


@pytest.mark.slow
def test_unit_tests_catch_thresholds_lowered(promtool, tmp_path):
    """With every SLO three times tighter, each threshold alert's "just under" case must see it fire."""
    tight = {key: value / 3 for key, value in build.load_slos().items()}
    failures = _failed_checks(_unit_test_failures(promtool, tmp_path, tight))
    for alert in SLO_OF_ALERT:
        assert any("exp:[]" in block for block in failures.get(alert, [])), alert


def _threshold(expr: str) -> float:
    """The number the expression's outermost comparison `... > N` checks against."""
    node = promql_parser.parse(expr)
    while isinstance(node, promql_parser.ParenExpr):
        node = node.expr
    assert isinstance(node, promql_parser.BinaryExpr) and str(node.op) == ">", expr
    assert isinstance(node.rhs, promql_parser.NumberLiteral), expr
    return node.rhs.val


@pytest.mark.parametrize(("alert", "slo_key"), sorted(SLO_OF_ALERT.items()))
def test_thresholds_are_the_slos(rules, alert, slo_key):
    slo = yaml.safe_load((ROOT / "loadtest" / "slo.yaml").read_text())
    assert _threshold(rules[alert]["expr"]) == slo[slo_key]


def test_every_alert_is_documented_and_labelled(rules):
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip(), name
        assert annotations["runbook_url"] == f"{build.RUNBOOK_BASE_URL}{name}.md"
        assert (RUNBOOKS / f"{name}.md").is_file(), f"docs/runbooks/{name}.md is missing"
    assert build.RUNBOOK_BASE_URL.startswith("https://github.com/")


def test_runbooks_index_lists_every_alert_and_nothing_else(rules):
    pages = {path.stem for path in RUNBOOKS.glob("Nanochat*.md")}  # release.md etc. are not alerts
    assert pages == set(rules), "a runbook without an alert, or an alert without a runbook"
    index = (RUNBOOKS / "README.md").read_text()
    for name, rule in rules.items():
        row = f"| [{name}]({name}.md) | {rule['labels']['severity']} |"
        assert row in index, f"runbooks/README.md: no row starting {row}"
    for path in RUNBOOKS.glob("Nanochat*.md"):
        assert path.read_text().startswith(f"# {path.stem}\n"), path.name


def test_alerts_read_only_documented_metrics_of_the_nanochat_job(rules):
    known = exposed_series_names(documented_metrics()) | {"up"}
    for name, rule in rules.items():
        for metric, matchers in selectors(rule["expr"]):
            assert metric in known, f"{name} reads {metric}, which docs/observability.md does not list"
            assert matchers.get("job") == f'="{METRICS_JOB}"', f"{name}: {metric} without job={METRICS_JOB!r}"
