"""The release gate (`python -m loadtest.gate`) against real servers: it passes against the demo service,
and fails, naming the broken objectives, against the same service with a fault injected
(NANOCHAT_FAULT_ERROR_RATE / NANOCHAT_FAULT_LATENCY_MS). Its reports are written either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO_ROOT = Path(__file__).resolve().parents[2]


def gate(
    url: str, out: Path, run_time: str = "8s", api_key: str | None = None
) -> tuple[subprocess.CompletedProcess, dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADTEST_")}
    if api_key:
        env["LOADTEST_API_KEY"] = api_key
    command = [
        sys.executable, "-m", "loadtest.gate", "--host", url, "--users", "8", "--spawn-rate", "8",
        "--run-time", run_time, "--max-tokens", "64", "--out", str(out),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    return run, summary


def test_gate_passes_against_the_demo_service(base_url: str, tmp_path: Path) -> None:
    run, summary = gate(base_url, tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "PASSED" in run.stdout and summary["passed"] is True
    assert all(check["passed"] for check in summary["checks"])
    assert (tmp_path / "report.html").stat().st_size > 0 and (tmp_path / "loadtest_stats.csv").exists()


def test_gate_fails_against_the_same_service_with_a_fault_injected(start_server, tmp_path: Path) -> None:
    faulty = start_server({"NANOCHAT_FAULT_ERROR_RATE": "0.5", "NANOCHAT_FAULT_LATENCY_MS": "2500"})
    run, summary = gate(faulty.url, tmp_path)
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert "FAILED" in run.stdout
    broken = {check["objective"] for check in summary["checks"] if not check["passed"]}
    assert {"error_rate_max", "ttft_p95_s"} <= broken, summary["checks"]
    error_rate = next(c["figure"] for c in summary["checks"] if c["objective"] == "error_rate_max")
    # about the injected half; a run of 8 s at 2.5 s a request makes few requests, so the bounds are wide
    assert 0.1 <= error_rate <= 0.9


def test_gate_with_a_key_passes_a_server_that_requires_it(start_server, tmp_path: Path) -> None:
    keyed = start_server({"NANOCHAT_API_KEYS": "gate-key,other-key"})
    run, summary = gate(keyed.url, tmp_path, run_time="4s", api_key="gate-key")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert summary["passed"] is True


def test_gate_with_a_key_rejects_a_server_that_serves_without_one(base_url: str, tmp_path: Path) -> None:
    """A candidate whose API-key secret is not mounted answers /v1 to anyone: the gate fails it at once."""
    run, summary = gate(base_url, tmp_path, api_key="gate-key")
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert "does not require its API key" in run.stdout
    assert summary == {"host": base_url, "passed": False, "checks": [], "api_key_required": False}
    assert not (tmp_path / "loadtest_stats.csv").exists()  # no load was sent
