"""The repository's own promises: CI runs the README's test command, workflows are valid."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_test_command() -> str:
    quick_start = ROOT.joinpath("README.md").read_text().split("## Quick start", 1)[1]
    commands = re.findall(r"^(make \w+)", quick_start, flags=re.MULTILINE)
    assert commands, "README quick start shows no make command"
    return next(c for c in commands if c.endswith("test"))


def test_ci_runs_exactly_the_readme_test_command():
    script = ROOT.joinpath(".ci/run").read_text()
    run_lines = [
        line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]
    assert readme_test_command() in run_lines
    assert "set -euo pipefail" in run_lines  # any failure fails CI
    assert ROOT.joinpath(".ci/run").stat().st_mode & 0o111, ".ci/run must be executable"


def test_make_test_fails_when_no_tests_are_collected(tmp_path):
    """pytest exits 5 on an empty collection; `make test` must turn that into a failure, not a pass."""
    makefile = ROOT.joinpath("Makefile").read_text()
    recipe = re.split(r"\ntest: setup[^\n]*\n", makefile, maxsplit=1)[1].split("\n\n", 1)[0]
    shell = recipe.replace("\t", "").replace("@", "", 1).replace("$$", "$").replace("\\\n", "\n")
    shell = shell.replace("$(BIN)/python", sys.executable)
    (tmp_path / "test_nothing.py").write_text("x = 1\n")
    result = subprocess.run(["bash", "-c", shell], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "collected no tests" in result.stderr


@pytest.mark.parametrize("workflow", sorted(ROOT.glob(".github/workflows/*.yml")), ids=lambda p: p.name)
def test_workflows_match_the_github_schema(workflow):
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which(
        "check-jsonschema"
    )
    assert tool, "check-jsonschema is a dev dependency"
    result = subprocess.run(
        [tool, "--builtin-schema", "vendor.github-workflows", str(workflow)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_workflow_runs_the_readme_test_command():
    workflow = ROOT.joinpath(".github/workflows/ci.yml").read_text()
    assert f"run: {readme_test_command()}" in workflow
