"""bench/chaos.py (`make chaos`): the harness on one fault, fast (a corrupt checkpoint: no model loads), its
report in both forms, a fault that does not hold reported as such, the checkpoint save on a full disk,
and `make chaos`."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import chaos

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not chaos.GUNICORN.exists():
        pytest.skip("gunicorn is not installed in this environment")
    return chaos.run(["corrupt_checkpoint"], seconds=1.0, work=tmp_path_factory.mktemp("chaos"))


def test_a_corrupt_checkpoint_stops_gunicorn_or_leaves_it_unready_never_500(report: dict) -> None:
    (fault,) = report["faults"]
    assert fault["name"] == "corrupt_checkpoint" and fault["held"], fault["problems"]
    assert fault["figures"]["exit_status"] == 3  # gunicorn's "worker failed to boot"
    assert fault["ready_transitions"][-1][1] == "load_failed"
    assert set(fault["requests"]) == {"503"} and fault["requests"]["503"] >= 1
    assert len(fault["checked"]) == 6 and fault["problems"] == []


def test_the_report_is_written_as_json_and_markdown(report: dict, tmp_path: Path) -> None:
    assert chaos.main(["--faults", "nonsense"]) == 2  # an unknown fault: one line, no report
    chaos.write(report, tmp_path)
    assert json.loads((tmp_path / "chaos.json").read_text()) == json.loads(json.dumps(report))
    text = (tmp_path / "chaos.md").read_text()
    assert "| `corrupt_checkpoint` | yes | 503: " in text and "load_failed" in text


def test_a_fault_that_did_not_hold_says_so_with_its_evidence() -> None:
    checks = chaos.Checks()
    checks.expect(True, "gunicorn is still running")
    checks.expect(False, "every request succeeds", {"200": 3, "500": 1})
    outcome = chaos.result("otlp_down", checks, None, None)
    assert not outcome.held
    report = {"seconds": 1, "cpus": 2, "load_average": [0, 0, 0], "held": False, "faults": [vars(outcome)]}
    text = chaos.markdown(report)
    assert "| `otlp_down` | **no** |" in text
    assert "**did not hold**: every request succeeds (saw: {'200': 3, '500': 1})" in text


def test_a_checkpoint_save_on_a_full_disk_fails_and_leaves_no_partial_file(tmp_path: Path) -> None:
    folder = chaos.copy_demo(tmp_path)
    before = sorted(p.name for p in folder.iterdir())
    status, error, new = chaos.save_on_full_disk(folder, limit=1 << 20)
    assert status == 1 and error.startswith("save failed: "), error
    assert new == [] and sorted(p.name for p in folder.iterdir()) == before
    # the same save with room succeeds: the limit, not the script, made it fail
    status, error, new = chaos.save_on_full_disk(folder, limit=resource.RLIM_INFINITY)
    assert status == 0, error
    assert any(name.startswith("model_") for name in new) and not any(".tmp" in name for name in new)


def test_make_chaos_runs_the_harness_with_its_arguments() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS", "CHAOS_"))}
    command = ["make", "-n", "-o", "setup", "chaos", "CHAOS_ARGS=--faults burst_10x"]
    result = subprocess.run(command, cwd=chaos.REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    harness, rebuild = result.stdout.split(";")[0], result.stdout.split(";")[-1]
    assert harness.split() == [".venv/bin/python", "-m", "bench.chaos", "--faults", "burst_10x"]
    assert "-m design.build" in rebuild  # docs/design.md shows the committed run's outcomes


def test_a_fault_whose_service_never_starts_is_reported_not_raised(monkeypatch, tmp_path: Path) -> None:
    if not chaos.GUNICORN.exists():
        pytest.skip("gunicorn is not installed in this environment")

    def broken(work: Path, seconds: float) -> chaos.FaultResult:
        raise chaos.ChaosError("gunicorn exited (3):\nlast\nlines")

    monkeypatch.setitem(chaos.FAULTS, "broken", broken)
    report = chaos.run(["broken"], 0.1, tmp_path)
    assert not report["held"]
    (fault,) = report["faults"]
    assert fault["problems"] == [
        "the harness could set the fault up and start the service (saw: gunicorn exited (3): last lines)"
    ]


@pytest.mark.integration
def test_the_otlp_probe_finds_the_failed_spans_and_misses_nothing(start_server) -> None:
    """otlp_down's extra check on real servers: one exporting to a closed port passes it once a failed export
    is counted; one that exports nothing fails it, with the evidence."""
    import socket
    import time
    from types import SimpleNamespace

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    traced = start_server(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed}", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    )
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    assert httpx.post(f"{traced.url}/v1/chat/completions", json=body, timeout=120).status_code == 200
    deadline = time.monotonic() + 120
    while True:  # the export runs on a background thread
        checks = chaos.Checks()
        chaos.spans_counted_failed(SimpleNamespace(url=traced.url), checks)
        if not checks.problems or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert checks.checked and not checks.problems, checks.problems
    untraced = chaos.Checks()
    chaos.spans_counted_failed(SimpleNamespace(url=start_server({}).url), untraced)
    assert untraced.problems and "the lost spans are counted as failed" in untraced.problems[0]
