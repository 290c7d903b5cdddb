"""docs/design.md stays true: its tables are what design/build.py makes of the sources, its diagram is drawn
from the current design/architecture.yaml, every alert it names exists, every test it cites exists, and every
fault of `make chaos` belongs to a failure mode."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import yaml

from bench.chaos import FAULTS
from design import build

ROOT = Path(__file__).resolve().parents[2]
ISSUE_MODES = {
    "model load failure",
    "OOM",
    "overload",
    "slow client",
    "dependency down",
    "bad release",
    "zone or region outage",
    "budget exhausted",
}


@pytest.fixture(scope="module")
def modes() -> list[dict]:
    return build.failure_modes()


def alert_names() -> set[str]:
    names = set()
    for path in (ROOT / "alerts").glob("*.rules.yaml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(rule["alert"] for rule in group["rules"] if "alert" in rule)
    return names


def test_the_doc_and_the_diagram_are_current(capsys) -> None:
    assert build.main(["--check"]) == 0, capsys.readouterr().err


def test_an_edited_table_or_an_edited_architecture_is_stale(tmp_path, monkeypatch, capsys) -> None:
    doc = tmp_path / "design.md"
    doc.write_text(build.DOC.read_text().replace("| `ttft_p95_s` | 2 |", "| `ttft_p95_s` | 3 |"))
    monkeypatch.setattr(build, "DOC", doc)
    assert build.main(["--check"]) == 1 and "design.md" in capsys.readouterr().err
    doc.write_text(build.render(doc.read_text(), build.blocks()))
    assert build.main(["--check"]) == 0
    source = tmp_path / "architecture.yaml"
    source.write_text(build.ARCHITECTURE.read_text().replace("gunicorn master", "gunicorn arbiter"))
    monkeypatch.setattr(build, "ARCHITECTURE", source)
    assert build.main(["--check"]) == 1 and "architecture.png" in capsys.readouterr().err


def test_the_diagram_regenerates_with_its_sources_hash(tmp_path) -> None:
    out = build.draw(tmp_path / "architecture.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert build.png_hash(out) == build.source_hash() == build.png_hash(build.PNG)


def test_an_edge_to_no_box_is_a_clear_error(tmp_path) -> None:
    source = tmp_path / "architecture.yaml"
    spec = yaml.safe_load(build.ARCHITECTURE.read_text())
    spec["edges"].append(["clients", "nowhere"])
    source.write_text(yaml.safe_dump(spec))
    with pytest.raises(build.DesignError, match="nowhere"):
        build.draw(tmp_path / "out.png", source)


def test_a_missing_generated_block_is_a_clear_error(tmp_path, monkeypatch, capsys) -> None:
    doc = tmp_path / "design.md"
    doc.write_text("# no blocks\n")
    monkeypatch.setattr(build, "DOC", doc)
    assert build.main(["--check"]) == 2
    assert "generated:slo" in capsys.readouterr().err


def test_every_slo_has_a_row_with_the_alert_built_from_it() -> None:
    table = build.slo_table({"error_rate_max": 0.01, **build.load_slos()})
    assert "| `error_rate_max` | 0.01 |" in table and "`NanochatHighErrorRate`" in table
    assert "| `min_output_tokens_per_s` | 50 |" in table and "release gate only" in table


def test_the_failure_modes_the_issue_asks_for_are_all_there(modes) -> None:
    assert {m["name"] for m in modes} >= ISSUE_MODES


def test_every_detection_alert_exists(modes) -> None:
    known = alert_names()
    assert known, "no alert rules found"
    unknown = {(m["name"], a) for m in modes for a in m["alerts"] if a not in known}
    assert not unknown


def test_every_detection_policy_is_declared_with_its_runbook(modes, tmp_path) -> None:
    """The Cloud Monitoring policies the table names (ENV standing for the env) are in the synthesized dev
    stack, and their runbooks exist."""
    from infra.config import load_envs
    from infra.main import build_app

    named = [p for m in modes for p in m.get("policies", [])]
    assert named, "no failure mode names a Cloud Monitoring policy"
    (dev,) = [cfg for cfg in load_envs() if cfg.name == "dev"]
    build_app([dev], outdir=str(tmp_path)).synth()
    stack = yaml.safe_load((tmp_path / "stacks" / "dev" / "cdk.tf.json").read_text())
    declared = {p["display_name"] for p in stack["resource"]["google_monitoring_alert_policy"].values()}
    for policy in named:
        assert policy["name"].replace("ENV", "dev") in declared, (policy, sorted(declared))
        runbook = ROOT / "docs" / "runbooks" / policy["runbook"]
        assert runbook.is_file() and runbook.read_text().startswith("# "), runbook


def test_every_proof_test_exists(modes) -> None:
    missing = []
    for mode in modes:
        assert mode["proof"], f"{mode['name']} has no proof"
        for node_id in mode["proof"]:
            path, _, name = node_id.partition("::")
            file = ROOT / path
            defined = file.is_file() and any(
                isinstance(node, ast.FunctionDef) and node.name == name
                for node in ast.walk(ast.parse(file.read_text()))
            )
            if not defined:
                missing.append(node_id)
    assert not missing


def test_every_chaos_fault_belongs_to_a_failure_mode_and_back(modes) -> None:
    named = [c for m in modes for c in m["chaos"]]
    assert set(named) <= set(FAULTS)
    assert set(FAULTS) <= set(named)


def test_a_failure_mode_without_its_fields_is_refused(tmp_path) -> None:
    path = tmp_path / "modes.yaml"
    path.write_text("- name: x\n  what: y\n")
    with pytest.raises(build.DesignError, match="lacks alerts"):
        build.failure_modes(path)
    shutil.copy(build.FAILURE_MODES, path)
    assert build.failure_modes(path) == build.failure_modes()


def test_the_committed_chaos_report_ran_every_fault_and_the_doc_shows_its_outcomes() -> None:
    outcomes = build.chaos_outcomes()
    assert set(outcomes) == set(FAULTS)
    doc = build.DOC.read_text()
    for fault, outcome in outcomes.items():
        assert f"`{fault}` ({outcome})" in doc
