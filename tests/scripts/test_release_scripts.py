"""scripts/deploy.sh and scripts/rollback.sh in dry-run mode: the exact gcloud and gate commands a release
and a rollback would run, in order, for an env file of envs/; and their argument errors. gcloud is not
called in dry-run mode: a `gcloud` that fails loudly comes first on the tests' PATH. Also: the files the
release runs on (cloudbuild.yaml, .github/workflows/deploy.yml) and shellcheck over every script. The
releases themselves run against a fake cloud in test_deploy.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "scripts" / "deploy.sh"
ROLLBACK = ROOT / "scripts" / "rollback.sh"
DEV = yaml.safe_load((ROOT / "envs" / "dev.yaml").read_text())


@pytest.fixture(scope="module")
def guard_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose `gcloud` fails loudly: first on PATH, so a dry run that calls gcloud fails."""
    folder = tmp_path_factory.mktemp("bin")
    gcloud = folder / "gcloud"
    gcloud.write_text('#!/bin/sh\necho "gcloud called in a dry run: $*" >&2\nexit 99\n')
    gcloud.chmod(0o755)
    return folder


@pytest.fixture(autouse=True)
def _guard(guard_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{guard_bin}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHON", sys.executable)  # the env file is read with the project's Python


def run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def commands(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line[2:] for line in result.stdout.splitlines() if line.startswith("+ ")]


def test_deploy_dry_run_builds_deploys_a_candidate_gates_it_then_promotes() -> None:
    lines = commands(run(DEPLOY, "--env", "dev", "--dry-run", "--tag", "abc1"))
    project, region, service = DEV["project"], DEV["region"], DEV["service"]["name"]
    registry = f"{region}-docker.pkg.dev/{project}/{DEV['registry']['repository']}"
    image, gpu_image = f"{registry}/{service}", f"{registry}/{DEV['gpu']['image_name']}"
    where = f"--project {project} --region {region}"
    digest = "sha256:\\<digest\\>"
    order = [
        f"gcloud builds submit {where} --config cloudbuild.yaml --substitutions _IMAGE={image}\\,"
        f"_GPU_IMAGE={gpu_image}\\,COMMIT_SHA=abc1 "
        f"--gcs-source-staging-dir gs://{project}-nanochat-build/source --service-account "
        f"projects/{project}/serviceAccounts/nanochat-build-dev@{project}.iam.gserviceaccount.com .",
        f"gcloud run deploy {service} {where} --image {image}@{digest} --no-traffic --tag candidate",
        "-m loadtest.gate --host https://candidate---",
        f"gcloud run services update-traffic {service} {where} --to-revisions \\<candidate-revision\\>=100 "
        "--update-tags previous=\\<serving-revision\\> --remove-tags candidate",
        "record build/release.json",
        f"gcloud compute instance-groups managed all-instances-config update nanochat-gpu-dev {where} "
        f"--metadata=nanochat-image={gpu_image}@{digest}",
        f"gcloud compute instance-groups managed wait-until nanochat-gpu-dev --stable --timeout 1800 {where}",
    ]
    positions = []
    for expected in order:
        found = [i for i, line in enumerate(lines) if expected in line]
        assert found, f"{expected!r} not among:\n" + "\n".join(lines)
        positions.append(found[0])
    assert positions == sorted(positions), "the steps ran out of order"
    assert not any(
        "--remove-tags candidate --quiet" in line and "--to-revisions" not in line for line in lines
    )
    assert sum(line.startswith("gcloud builds submit") for line in lines) == 1


def test_deploy_dry_run_with_an_image_skips_the_build() -> None:
    ref = "us-docker.pkg.dev/p/r/nanochat@sha256:" + "a" * 64
    lines = commands(run(DEPLOY, "--dry-run", "--image", ref))
    assert not any(line.startswith("gcloud builds") for line in lines)
    assert any(f"--image {ref} --no-traffic --tag candidate" in line for line in lines)


def test_deploy_dry_run_promote_latest_tags_gates_and_promotes_without_a_build() -> None:
    lines = commands(run(DEPLOY, "--dry-run", "--promote-latest"))
    assert not any(line.startswith(("gcloud builds", "gcloud run deploy")) for line in lines)
    assert any("--update-tags candidate=\\<latest-ready-revision\\>" in line for line in lines), lines
    assert any("--to-revisions \\<latest-ready-revision\\>=100" in line for line in lines), lines


def test_rollback_dry_run_moves_traffic_to_previous_or_the_given_revision() -> None:
    service = DEV["service"]["name"]
    lines = commands(run(ROLLBACK, "--dry-run"))
    assert any(
        line.startswith(f"gcloud run services update-traffic {service}")
        and "--to-revisions \\<previous-revision\\>=100" in line
        and "--update-tags previous=\\<serving-revision\\>" in line
        for line in lines
    ), lines
    lines = commands(run(ROLLBACK, "--dry-run", "--to", "nanochat-00042-abc"))
    assert any("--to-revisions nanochat-00042-abc=100" in line for line in lines), lines
    assert not any(line.startswith(("gcloud run deploy", "gcloud builds")) for line in lines)


@pytest.mark.parametrize("script", [DEPLOY, ROLLBACK, ROOT / "scripts/bootstrap.sh"], ids=lambda p: p.name)
def test_help_and_argument_errors(script: Path) -> None:
    helped = run(script, "--help")
    assert helped.returncode == 0 and "--dry-run" in helped.stdout and "set -euo" not in helped.stdout
    unknown = run(script, "--bogus")
    assert (
        unknown.returncode == 2
        and unknown.stderr.strip() == f"{script.name}: unknown argument --bogus (see --help)"
    )
    missing = run(script, "--env", "nosuch", "--dry-run")
    assert missing.returncode == 2 and "no environment file envs/nosuch.yaml" in missing.stderr


def test_scripts_are_shellcheck_clean() -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("needs shellcheck (apt-get install -y shellcheck)")
    scripts = [str(path) for path in sorted((ROOT / "scripts").glob("*.sh"))]
    result = subprocess.run(["shellcheck", "-x", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_cloudbuild_file_matches_its_schema() -> None:
    tool = shutil.which("check-jsonschema") or str(Path(sys.executable).with_name("check-jsonschema"))
    result = subprocess.run(
        [tool, "--builtin-schema", "vendor.cloudbuild", str(ROOT / "cloudbuild.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cloudbuild_builds_the_gpu_image_beside_the_cpu_one() -> None:
    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    assert set(build["substitutions"]) == {"_IMAGE", "_GPU_IMAGE"}
    steps = {step["id"]: " ".join(step["args"]) for step in build["steps"]}
    assert "--target=cpu" in steps["build-cpu"]
    assert "--target=gpu" in steps["gpu"] and 'docker push --all-tags "${_GPU_IMAGE}"' in steps["gpu"]
    assert build["options"]["logging"] == "CLOUD_LOGGING_ONLY"  # required with a user build account
    # the default pool's default machine: the only one Cloud Build's free minutes cover
    assert "machineType" not in build["options"] and "pool" not in build["options"]


def test_deploy_workflow_mints_the_gate_token_and_is_the_only_build() -> None:
    workflow = yaml.safe_load((ROOT / ".github/workflows/deploy.yml").read_text())
    steps = workflow["jobs"]["release"]["steps"]
    auth = next(step for step in steps if step.get("id") == "auth")
    assert auth["with"]["token_format"] == "id_token"
    assert auth["with"]["id_token_audience"] == "${{ vars.GATE_AUDIENCE }}"
    assert auth["with"]["id_token_include_email"] is True
    release = next(step for step in steps if "scripts/deploy.sh" in step.get("run", ""))
    assert release["env"]["LOADTEST_ID_TOKEN"] == "${{ steps.auth.outputs.id_token }}"
    for path in (ROOT / ".github/workflows").glob("*.yml"):
        text = path.read_text()
        assert "builds submit" not in text and "docker build" not in text and "docker push" not in text, path
