"""scripts/dataprep.sh: in dry-run mode, the exact staging, upload and Dataproc Serverless submit commands
for an env with `dataprep.enabled: true`, named from the env file through infra/names.py; its refusal where
the env has no data preparation resources (the committed env files); its help and argument errors. gcloud
is never called: one that fails loudly comes first on PATH."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra import names
from infra.config import load_env
from nanochat.data.spark_prepare import DATAPROC_RUNTIME

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "dataprep.sh"


@pytest.fixture
def environ(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text('#!/bin/sh\necho "gcloud called in a dry run: $*" >&2\nexit 99\n')
    gcloud.chmod(0o755)
    envs = tmp_path / "envs"
    envs.mkdir()
    for env in ("dev", "prod"):
        shutil.copy(ROOT / "envs" / f"{env}.yaml", envs)
    dev = envs / "dev.yaml"
    text = dev.read_text()
    assert text.endswith("dataprep:\n  enabled: false\n"), "envs/dev.yaml changed its dataprep section"
    dev.write_text(text.replace("dataprep:\n  enabled: false\n", "dataprep:\n  enabled: true\n"))
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "ENVS_DIR": str(envs),
    }


def run(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )


def test_dry_run_stages_uploads_and_submits_with_the_envs_names(environ):
    result = run(environ, "--env", "dev", "--dry-run")
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]
    cfg = load_env(Path(environ["ENVS_DIR"]) / "dev.yaml")
    bucket = f"gs://{names.dataprep_bucket(cfg)}"
    stage, package, upload, submit = commands
    assert stage == [
        sys.executable, "-m", "nanochat.data.spark_prepare", "stage",
        "--out", "build/dataprep/dev/raw", "--cache", "build/dataprep/dev/downloads",
    ]  # fmt: skip
    assert package == [sys.executable, "-m", "zipfile", "-c", "build/dataprep/dev/nanochat.zip", "nanochat"]
    assert upload[:4] == ["gcloud", "storage", "rsync", "--recursive"]
    assert upload[-4:] == ["build/dataprep/dev/raw", f"{bucket}/raw", "--project", cfg.project]

    assert submit[:5] == ["gcloud", "dataproc", "batches", "submit", "pyspark"]
    assert submit[5] == "nanochat/data/spark_prepare.py"
    flags, job = submit[6 : submit.index("--")], submit[submit.index("--") + 1 :]
    options = dict(zip(flags[::2], flags[1::2], strict=True))
    assert options == {
        "--project": cfg.project,
        "--region": cfg.region,
        "--batch": options["--batch"],
        "--version": DATAPROC_RUNTIME,
        "--service-account": names.sa_email(cfg, names.dataprep_account_id(cfg)),
        "--subnet": f"projects/{cfg.project}/regions/{cfg.region}/subnetworks/{names.dataprep_network(cfg)}",
        "--deps-bucket": bucket,
        "--staging-bucket": names.dataprep_bucket(cfg),
        "--py-files": "build/dataprep/dev/nanochat.zip",
        "--labels": "env=dev,app=nanochat",
    }
    assert re.fullmatch(r"nanochat-dataprep-[0-9]{8}-[0-9]{6}", options["--batch"])  # 4-63 chars, [a-z0-9-]
    assert job == ["run", "--input", f"{bucket}/raw", "--out", f"{bucket}/shards", "--overwrite"]
    assert "gcloud called" not in result.stderr


def test_an_env_without_dataprep_is_refused(environ):
    result = run(environ, "--env", "prod", "--dry-run")
    assert result.returncode == 1
    assert "prod has no data preparation resources: set dataprep.enabled: true" in result.stderr
    assert not result.stdout


def test_help_and_argument_errors(environ):
    helped = run(environ, "--help")
    assert helped.returncode == 0 and "--dry-run" in helped.stdout and "set -euo" not in helped.stdout
    unknown = run(environ, "--bogus")
    assert (
        unknown.returncode == 2
        and unknown.stderr.strip() == "dataprep.sh: unknown argument --bogus (see --help)"
    )
    missing = run(environ, "--env", "nosuch", "--dry-run")
    assert missing.returncode == 2 and "no environment file" in missing.stderr
