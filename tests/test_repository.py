"""The repository's own promises: CI runs the README's test command, workflows are valid."""

from __future__ import annotations

import json
import os
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


# ---- the skip summary (tests/conftest.py) -----------------------------------------------------------------
SKIPPING_SUITE = """
import pytest

def test_a():
    pytest.skip("promtool not found: apt-get install -y prometheus")

def test_b():
    pytest.skip("promtool not found: apt-get install -y prometheus")

@pytest.mark.skipif(True, reason="needs Chromium (`sudo apt-get install -y chromium chromium-driver`)")
def test_c():
    pass

def test_d():
    pytest.importorskip("no_such_module", reason="needs selenium (pip install selenium; in the dev extra)")

def test_e():
    pytest.skip("this machine has CUDA")

def test_f():
    pass
"""


def run_pytest_with_our_conftest(folder: Path) -> subprocess.CompletedProcess[str]:
    """pytest on `folder` with tests/conftest.py loaded as a plugin (the folder has no conftest)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "-p", "tests.conftest"]
    return subprocess.run([*command, str(folder)], cwd=folder, env=env, capture_output=True, text=True)


def test_a_run_ends_with_one_line_counting_the_skips_and_how_to_install_what_they_need(tmp_path):
    (tmp_path / "test_skips.py").write_text(SKIPPING_SUITE)
    result = run_pytest_with_our_conftest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    *_, stats, summary = result.stdout.strip().splitlines()
    assert stats.startswith("1 passed, 5 skipped")  # pytest's own last line comes before ours
    sudo = "" if os.geteuid() == 0 else "sudo "
    assert summary == (
        "skipped 5: 2 × promtool not found: apt-get install -y prometheus; "
        "1 × needs Chromium (`sudo apt-get install -y chromium chromium-driver`); "
        "1 × needs selenium (pip install selenium; in the dev extra); 1 × this machine has CUDA"
        f" | install: {sudo}apt-get install -y prometheus chromium chromium-driver"
        f" && {sys.executable} -m pip install selenium | 1 without an install command"
    )


def test_a_run_without_skips_says_so_and_a_failing_run_still_ends_with_the_summary(tmp_path):
    (tmp_path / "test_plain.py").write_text("def test_ok():\n    pass\n\ndef test_bad():\n    assert False\n")
    result = run_pytest_with_our_conftest(tmp_path)
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[-1] == "skipped: nothing"


# ---- make test-stress and make soak -----------------------------------------------------------------------
def outside_make() -> dict[str, str]:
    """This environment without what an enclosing make passes down (under `make test`, a nested make would
    print "Entering directory" lines and inherit its flags)."""
    inherited = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEFILES")
    own = ("STRESS_", "SOAK_")  # `make test-stress STRESS_RUNS=1` exports STRESS_RUNS to all it runs
    return {k: v for k, v in os.environ.items() if k not in inherited and not k.startswith(own)}


STRESS_PROBE = """
import os
from pathlib import Path

RUNS = Path(__file__).with_name("runs.txt")

def test_the_hogs_spin_while_the_suite_runs():
    pids = os.environ["NANOCHAT_STRESS_HOGS"].split()
    with open(RUNS, "a") as runs:
        runs.write(" ".join(pids) + "\\n")
    assert len(pids) == 2
    for pid in pids:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state in "RS", state  # alive (running, or waiting for a core)

def test_the_second_run_fails():
    assert len(RUNS.read_text().splitlines()) == 1
"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make (apt-get install -y make)")
def test_make_test_stress_runs_the_suite_twice_beside_cpu_hogs_fails_on_a_failure_and_stops_them(tmp_path):
    """The real `make test-stress` on a tiny suite whose second run fails (-o: the venv is there already)."""
    (tmp_path / "test_probe.py").write_text(STRESS_PROBE)
    pytest_command = f"{sys.executable} -m pytest -q -p no:cacheprovider {tmp_path}"
    command = ["make", "-s", "-o", "setup", "-o", ".venv-infra/bin/checkov", "test-stress"]
    command += ["STRESS_RUNS=2", "STRESS_HOGS=2", f"STRESS_PYTEST={pytest_command}"]  # not the caller's
    result = subprocess.run(command, cwd=ROOT, env=outside_make(), capture_output=True, text=True)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "make test-stress: 1 of 2 runs failed" in result.stdout, result.stdout + result.stderr
    first, second = [line.split() for line in (tmp_path / "runs.txt").read_text().splitlines()]
    assert first == second  # the same hogs through both runs
    assert not any(Path(f"/proc/{pid}").exists() for pid in first), "a CPU hog outlived make test-stress"


def test_make_soak_runs_the_bench_script_for_soak_minutes():
    command = ["make", "-n", "-o", "setup", "soak", "SOAK_MINUTES=2"]
    result = subprocess.run(command, cwd=ROOT, env=outside_make(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [".venv/bin/python", "-m", "bench.soak", "--minutes", "2"]


@pytest.mark.slow
@pytest.mark.integration
def test_the_soak_answers_every_request_once_and_reports_the_workers(tmp_path):
    """A few seconds of the real soak: gunicorn with 2 workers, the report's shape, and gunicorn gone."""
    out = tmp_path / "soak.json"
    command = [sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "0.05", "--out", str(out)]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    requests = report["requests"]
    assert requests["sent"] == requests["answered"] > 0 and requests["each_answered_exactly_once"]
    assert set(requests["access_lines_per_logged_request"]) == {"1"}
    assert set(report["statuses"]["all"]) == {"200"}, report["statuses"]
    for moment in ("start", "middle", "end"):
        workers = report["processes"][moment]["workers"]
        assert len(workers) == 2 and all(w["rss_mb"] > 0 and w["fds"] > 0 for w in workers), moment
    assert report["server"]["exit_status_after_sigterm"] == 0
    pids = [w["pid"] for w in report["processes"]["end"]["workers"]]
    pids.append(report["processes"]["end"]["master"]["pid"])
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids), "gunicorn outlived the soak"


# ---- one home per fact: what cannot import app/contract.py is held to it here ---------------------------
CONTRACT_READERS = ("observe.sh", "container_smoke.sh", "release_lib.sh")  # the scripts that call the service


def contract() -> dict[str, int | str]:
    import app.contract

    return {name: value for name, value in vars(app.contract).items() if name.isupper()}


def test_contract_prints_itself_for_shell_scripts():
    printed = subprocess.run(
        [sys.executable, "app/contract.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    script = printed + "".join(
        f'echo "{name}=${name}"\n' for name in contract() if name != "GENERATION_PATHS"
    )
    evaluated = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    expected = {name: str(value) for name, value in contract().items() if name != "GENERATION_PATHS"}
    assert dict(line.split("=", 1) for line in evaluated.splitlines()) == expected


@pytest.mark.parametrize("name", CONTRACT_READERS)
def test_scripts_read_the_contract_instead_of_restating_it(name):
    text = (ROOT / "scripts" / name).read_text()
    assert re.search(r'^eval "\$\(.*app/contract\.py"?\)"', text, flags=re.MULTILINE), name


def test_no_script_restates_a_port_a_probe_path_or_the_job():
    facts = contract()
    paths = [
        facts[name] for name in ("HEALTH_PATH", "READY_PATH", "METRICS_PATH", *("CHAT_COMPLETIONS_PATH",))
    ]
    for script in sorted((ROOT / "scripts").glob("*.sh")):
        text = script.read_text()
        for port in (facts["APP_PORT"], facts["METRICS_PORT"]):
            assert not re.search(rf"\b{port}\b", text), f"{script.name} restates port {port}"
        for path in paths:  # a URL variable followed by the path, e.g. "$url/ready"
            restated = re.search(rf"\$\{{?\w*(?:url|URL|port)\w*\}}?{re.escape(path)}\b", text)
            assert not restated, f"{script.name} restates {path}: {restated[0]}"
        assert f"job_name: {facts['METRICS_JOB']}" not in text, f"{script.name} restates the job name"


def test_the_restating_check_can_fail(tmp_path, monkeypatch):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "bad.sh").write_text('curl "$APP_URL/health"\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="restates /health"):
        test_no_script_restates_a_port_a_probe_path_or_the_job()


def test_compose_and_its_prometheus_use_the_contract():
    import yaml

    facts = contract()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    app = compose["services"]["app"]
    assert int(app["environment"]["PORT"]) == facts["APP_PORT"]
    assert int(app["environment"]["NANOCHAT_METRICS_PORT"]) == facts["METRICS_PORT"]
    assert [port.rsplit(":", 1)[1] for port in app["ports"]] == [
        str(facts["APP_PORT"])
    ]  # metrics unpublished
    prometheus = yaml.safe_load((ROOT / "observe" / "prometheus.yml").read_text())
    [scrape] = prometheus["scrape_configs"]
    assert scrape["job_name"] == facts["METRICS_JOB"]
    assert scrape.get("metrics_path", "/metrics") == facts["METRICS_PATH"]
    assert [target.rsplit(":", 1)[1] for target in scrape["static_configs"][0]["targets"]] == [
        str(facts["METRICS_PORT"])
    ]


def test_the_app_serves_the_contracts_routes():
    from app.config import Settings
    from app.main import create_app

    facts = contract()
    service = create_app(Settings(_env_file=None, checkpoint=str(ROOT / "models" / "demo")))
    paths = service.openapi()["paths"]  # the app's routes (the model is not loaded: no lifespan here)
    for name in ("HEALTH_PATH", "READY_PATH", "METRICS_PATH"):
        assert "get" in paths.get(facts[name], {}), f"the app has no GET {facts[name]}"
    for path in facts["GENERATION_PATHS"]:
        assert "post" in paths.get(path, {}), f"the app has no POST {path}"
    assert Settings.model_fields["port"].default == facts["APP_PORT"]
