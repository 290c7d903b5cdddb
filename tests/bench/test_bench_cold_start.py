"""bench/cold_start.py: real servers from launch to /ready, with a checkpoint given relative to where the
benchmark runs (the servers run in a scratch folder), and a server that cannot start reported in one line
with the server's own last log line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 900  # two servers, the classifier's worker included: only bounds a hang


def cold_start(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOCHAT_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "bench.cold_start", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


def test_a_relative_checkpoint_reaches_ready_with_and_without_the_classifier() -> None:
    done = cold_start("--checkpoint", "models/demo", "--repeats", "1", cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["checkpoint"] == str(REPO_ROOT / "models" / "demo")
    on, off = result["classifier_on"], result["classifier_off"]
    assert 0 < on["health_s"] <= on["ready_s"] and 0 < off["health_s"] <= off["ready_s"]
    assert on["classifier_ready_s"] >= on["ready_s"]  # the classifier loads after /ready
    assert isinstance(result["ready_within_goal"], bool) and result["goal_ready_s"] == 2.0


def test_a_server_that_cannot_load_is_one_line_with_its_reason(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(REPO_ROOT / "models" / "demo", broken)
    for weights in broken.glob("model_*.pt"):
        weights.write_bytes(b"not a checkpoint")
    done = cold_start("--checkpoint", "broken", "--repeats", "1", cwd=tmp_path)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("bench_cold_start: the server exited (3): ") and "model" in line, line
    assert "see /tmp" not in line  # no pointer to a log that is deleted with its folder
